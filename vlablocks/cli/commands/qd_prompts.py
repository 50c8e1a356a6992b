"""`vlablocks qd-prompts --ckpt DIR --env toy --out prompts.yaml`: MAP-Elites search for the phrasings that break a
policy (vlablocks/methods/language/qd_search.py). Writes, next to --out: the archive in the prompt-augmentation YAML
format (--out), its heat map (.png), the resumable search state (.state.json) and a summary (.summary.json)."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from vlablocks.cli.arguments import count

NAME = "qd-prompts"
HELP = "quality-diversity (MAP-Elites) search for meaning-preserving phrasings that make a policy fail"
PARAPHRASERS = {"toy": "vlablocks.tools.toy.toy_paraphrase"}  # env -> module with the phrase genome and mutations


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="policy checkpoint directory, rolled out in-process")
    parser.add_argument("--env", required=True, help=f"env with a paraphrase vocabulary: {', '.join(PARAPHRASERS)}")
    parser.add_argument("--out", required=True, help="prompts YAML to write (e.g. runs/qd/prompts.yaml)")
    parser.add_argument("--search", default="map-elites", choices=["map-elites", "random"], help="random: baseline")
    parser.add_argument("--iterations", type=count(1), default=40, help="a larger value continues a finished search")
    parser.add_argument("--batch", type=count(1), default=16, help="candidates per iteration")
    parser.add_argument("--episodes", type=count(1), default=16, help="closed-loop episodes per candidate")
    parser.add_argument("--seed", type=count(0), default=0, help="the search's random draws")
    parser.add_argument("--episode-seed", type=count(0), default=300_000, help="first env seed of the search's scenes")
    parser.add_argument("--validation-seed", type=count(0), default=400_000, help="first env seed of the fresh scenes")
    parser.add_argument("--validation-episodes", type=count(0), default=32, help="fresh episodes per prompt (0: skip)")
    parser.add_argument(
        "--rescore",
        metavar="PROMPTS_YAML",
        help="no search: the failure rate of every phrasing in this prompt file (an archive, the held-out set) on "
        "the fresh scenes, written to <out>.summary.json",
    )


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.env not in PARAPHRASERS:
        raise ValueError(
            f"env {args.env!r} has no paraphrase vocabulary; qd-prompts supports {sorted(PARAPHRASERS)} "
            "(add a module like vlablocks/tools/toy/toy_paraphrase.py and list it in PARAPHRASERS)"
        )
    out = Path(args.out)
    if out.suffix not in (".yaml", ".yml"):
        raise ValueError(f"--out must name a .yaml file (the prompts), got {args.out!r}")
    from vlablocks.core.capabilities import ValuePredictor
    from vlablocks.core.config import merge_overrides
    from vlablocks.core.evaluation.actors import GreedyActor
    from vlablocks.core.policy.policy import Policy
    from vlablocks.methods.language.qd_search import (
        ClosedLoopFailure,
        QDConfig,
        rescore,
        run_search,
        scenes_by_colour,
        validate,
        write_prompts,
    )

    cfg = QDConfig(
        search=args.search,
        iterations=args.iterations,
        batch=args.batch,
        episodes=args.episodes,
        seed=args.seed,
        episode_seed=args.episode_seed,
        validation_seed=args.validation_seed,
        validation_episodes=max(args.validation_episodes, 1),
    )
    paraphraser = importlib.import_module(PARAPHRASERS[args.env])
    env_config = merge_overrides({"name": args.env}, overrides)
    policy = Policy.from_pretrained(args.ckpt).eval()
    if isinstance(policy.model, ValuePredictor):
        raise ValueError(f"{args.ckpt} is a value model; qd-prompts needs a policy checkpoint")
    actor = GreedyActor(policy)
    colours = sorted({phrase.colour for phrase in paraphraser.originals()})

    def failure_on(first_seed: int, episodes: int) -> ClosedLoopFailure:
        scenes = scenes_by_colour(env_config, first_seed, episodes, colours, paraphraser.target_colour)
        return ClosedLoopFailure(actor, env_config, scenes)

    def fitness_on(first_seed: int, episodes: int):
        failure = failure_on(first_seed, episodes)
        return lambda phrases: failure([(paraphraser.render(p), p.colour) for p in phrases])

    out.parent.mkdir(parents=True, exist_ok=True)
    if args.rescore:
        from vlablocks.core.dataloader.prompt_augmentation import load_alternatives

        failure = failure_on(cfg.validation_seed, cfg.validation_episodes)
        summary = rescore(load_alternatives(args.rescore), failure, paraphraser.target_colour)
        path = out.with_name(out.stem + ".summary.json")
        path.write_text(json.dumps({"rescored": args.rescore, "ckpt": args.ckpt, **summary}, indent=1))
        print(
            f"{summary['prompts']} phrasings, mean failure {summary['fresh_failure_rate']:.1%} on fresh scenes: {path}"
        )
        return 0
    state_path = out.with_name(out.stem + ".state.json")
    archive, state = run_search(paraphraser, fitness_on(cfg.episode_seed, cfg.episodes), cfg, state_path)
    summary = {"config": state["config"], "evaluations": state["evaluations"], **archive.stats()}
    if args.validation_episodes > 0:
        fresh = fitness_on(cfg.validation_seed, cfg.validation_episodes)
        summary["validation"] = validate(paraphraser, archive, fresh, cfg)
    summary["history"] = state["history"]
    rows, columns = paraphraser.cell_labels()
    title = f"{cfg.search}: {state['evaluations']} prompts x {cfg.episodes} episodes, {Path(args.ckpt).name}"
    archive.plot(out.with_suffix(".png"), rows, columns, title)
    header = (
        f"# Prompt archive of `vlablocks qd-prompts --search {cfg.search} --seed {cfg.seed}` on {args.ckpt}:\n"
        "# original instruction -> paraphrases of its colour (fitness = failure rate; dataset.prompt_augmentation).\n"
    )
    write_prompts(out, paraphraser, archive, header)
    out.with_name(out.stem + ".summary.json").write_text(json.dumps(summary, indent=1))
    line = f"{summary['filled']} cells filled, mean elite failure {summary['mean_fitness']:.1%}"
    if "validation" in summary:
        v = summary["validation"]
        line += (
            f"; fresh scenes: archive {v['archive']['fresh_failure_rate']:.1%}, "
            f"random paraphrases {v['random_paraphrases']['fresh_failure_rate']:.1%}, "
            f"originals {v['originals']['fresh_failure_rate']:.1%}"
        )
    print(f"{line}; prompts: {out}")
    return 0
