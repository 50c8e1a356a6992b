"""What does a toy checkpoint's VLM know about the scene? Linear probes on fresh toy scenes.

    python -m vlablocks.tools.probes.scene_decoding --ckpt runs/x/checkpoints/step_2400 --scenes 400 --seed 30000

For `--scenes` fresh toy scenes (env seeds `--seed`, `--seed` + 1, ...: keep them apart from any evaluation range),
the policy acts once on the first frame. A forward hook on the VLM keeps the last layer's states of that call, and
their mean over the readout tokens (QwenOFT: the action queries) is the scene's feature vector h [H]. Ridge
regressions from h, fitted on the first 75% of the scenes and scored on the rest:

    W = argmin ||[h, 1] W - y||^2 + lam ||W||^2,    R^2 = 1 - sum (y_hat - y)^2 / sum (y - mean y)^2   (held out)

for y = the puck's position [2] (`r2_puck`, what the state says), the named block's position [2] (`r2_target`, what
grounding the instruction in the image gives) and their difference (`r2_offset`, what the expert's action is made
of). R^2 near 1: the states carry it linearly; near 0 or below: they do not. Beside them, per named colour, the
mean cosine between the policy's first action and the expert's (`action_cosine_by_colour`).

A run whose VLM reads the puck but not the target has not grounded its instruction (docs/results/toy_results.md,
QwenPI05 at 5 seeds).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import numpy as np
import torch

from vlablocks.core.flags import FlagParser
from vlablocks.core.policy.policy import Policy
from vlablocks.tools.probes.grounding_probe import token_groups
from vlablocks.tools.toy.toy import ToyTabletopEnv


def ridge_r2(features: np.ndarray, targets: np.ndarray, train_share: float = 0.75, lam: float = 1e-2) -> float:
    """features: [N, F], targets: [N, K] -> the held-out R^2 (pooled over the K outputs) of a ridge regression with
    a bias, fitted on the first `train_share` of the rows (module docstring)."""
    features, targets = np.asarray(features, np.float64), np.asarray(targets, np.float64).reshape(len(features), -1)
    split = int(len(features) * train_share)
    if split < 2 or len(features) - split < 2:
        raise ValueError(f"ridge_r2 needs rows on both sides of the split: {len(features)} rows at {train_share}")
    design = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    fit, held = design[:split], design[split:]
    weights = np.linalg.solve(fit.T @ fit + lam * np.eye(design.shape[1]), fit.T @ targets[:split])
    residual = ((held @ weights - targets[split:]) ** 2).sum()
    spread = ((targets[split:] - targets[split:].mean(0)) ** 2).sum()
    return float(1.0 - residual / spread)


@dataclass(frozen=True)
class Scenes:
    """observations: N toy observations; puck, target, expert: [N, 2]; colour: the named block's colour per scene."""

    observations: list[dict]
    puck: np.ndarray
    target: np.ndarray
    expert: np.ndarray
    colour: list[str]


def toy_scenes(count: int, seed: int) -> Scenes:
    """The first frame of `count` toy episodes, env seeds seed .. seed + count - 1."""
    env = ToyTabletopEnv()
    observations, puck, target, expert, colour = [], [], [], [], []
    for episode_seed in range(seed, seed + count):
        observations.append(env.reset(seed=episode_seed))
        named = env.current_target()
        puck.append(env.agent.copy())
        target.append(env.layout.positions[named].copy())
        expert.append(env.expert_action())
        colour.append(env.layout.block_names[named])
    return Scenes(observations, np.array(puck), np.array(target), np.array(expert), colour)


@torch.no_grad()
def readout_features(policy: Policy, observations: list[dict], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """-> (h: [N, H] the mean last-layer state over the readout tokens of the policy's own VLM call, actions: [N, D]
    the first normalized action of each chunk)."""
    captured: list = []

    def keep(module, args, output) -> None:
        if not captured:  # the first VLM call of a predict (a DDIM llm_input head calls it once per step)
            captured.append((args[0].input_ids, output.last_hidden_state))

    features, actions = [], []
    handle = policy.model.vlm.register_forward_hook(keep)
    try:
        for start in range(0, len(observations), batch_size):
            captured.clear()
            actions.append(policy.predict(observations[start : start + batch_size])["normalized_actions"][:, 0])
            input_ids, hidden = captured[0]
            readout = token_groups(policy, input_ids.cpu())["readout"].to(hidden.device)
            if not readout.any(dim=1).all():
                raise ValueError("the policy's prompt has no readout tokens or action queries to probe")
            mask = readout.unsqueeze(-1).to(hidden.dtype)
            features.append(((hidden * mask).sum(1) / mask.sum(1)).float().cpu().numpy())
    finally:
        handle.remove()
    return np.concatenate(features), np.concatenate(actions)


def cosine_by_colour(actions: np.ndarray, expert: np.ndarray, colour: list[str]) -> dict[str, float]:
    """Per named colour, the mean cosine between the policy's and the expert's action directions."""
    cosine = (actions * expert).sum(1) / (np.linalg.norm(actions, axis=1) * np.linalg.norm(expert, axis=1) + 1e-9)
    names = np.array(colour)
    return {name: round(float(cosine[names == name].mean()), 3) for name in sorted(set(colour))}


def probe(policy: Policy, scenes: Scenes) -> dict:
    policy.model.eval()
    features, actions = readout_features(policy, scenes.observations)
    return {
        "r2_puck": round(ridge_r2(features, scenes.puck), 3),
        "r2_target": round(ridge_r2(features, scenes.target), 3),
        "r2_offset": round(ridge_r2(features, scenes.target - scenes.puck), 3),
        "action_cosine_by_colour": cosine_by_colour(actions, scenes.expert, scenes.colour),
    }


def main(argv: list[str] | None = None) -> int:
    parser = FlagParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, nargs="+", help="checkpoint directories, run_dir/checkpoints/step_N")
    parser.add_argument("--scenes", type=int, default=400, help="fresh toy scenes (75%% fit, 25%% scored)")
    parser.add_argument("--seed", type=int, default=30_000, help="the first env seed (not an evaluation range)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    scenes = toy_scenes(args.scenes, args.seed)
    for ckpt in args.ckpt:
        print(json.dumps({"ckpt": ckpt, **probe(Policy.from_pretrained(ckpt), scenes)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
