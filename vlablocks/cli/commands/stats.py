"""`vlablocks stats --config-yaml F [--out PATH]`: per-dataset normalization stats -> norm_stats.json.

For a mixture it prints each dataset's embodiment, sizes and per-dimension q01..q99 range, and, when robots of
different sizes mix (cross-embodiment), which are padded to the platform's D and S."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlablocks.cli.arguments import count
from vlablocks.core.build import build

NAME = "stats"
HELP = "compute per-dataset action/state stats (min, max, mean, std, q01, q99) in bounded memory -> norm_stats.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-yaml", required=True, help="experiment YAML with platform: and dataset: sections")
    parser.add_argument("--out", help="output file (default: <run_dir>/norm_stats.json)")
    parser.add_argument("--batch-size", type=count(1), default=4096, help="rows read at a time (bounds memory)")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from vlablocks.core.config import ConfigError, load_config
    from vlablocks.core.dataloader.embodiments import dataset_embodiments
    from vlablocks.core.dataloader.normalization import Normalizer
    from vlablocks.core.dataloader.stats import compute_norm_stats
    from vlablocks.core.registry import DATASETS

    config = load_config(args.config_yaml, overrides)
    if config.dataset is None:
        raise ConfigError(f"{args.config_yaml} has no dataset: section to compute stats over")
    dataset = build(DATASETS, config.dataset, platform=config.platform, seed=config.seed)
    embodiments = dataset_embodiments(dataset, config.platform)
    normalizer = Normalizer(compute_norm_stats(dataset.leaves(), batch_size=args.batch_size))
    out = Path(args.out) if args.out else Path(config.run_dir) / "norm_stats.json"
    normalizer.save(out)
    owner = {d: name for name, entry in (embodiments or {}).items() for d in entry["datasets"]}
    for name, entry in normalizer.stats.items():
        keys = ", ".join(
            f"{k} dim {len(entry[k]['mean'])} over {entry[k]['count']} frames"
            for k in ("action", "state")
            if k in entry
        )
        print(f"{name}: mode {entry['mode']}, {keys}" + (f", embodiment {owner[name]}" if name in owner else ""))
        if len(normalizer.stats) > 1:
            for key in ("action", "state"):
                if key in entry:
                    ranges = " ".join(f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(entry[key]["q01"], entry[key]["q99"]))
                    print(f"  {key} q01..q99: {ranges}")
    if embodiments:
        platform = config.platform
        print(f"cross-embodiment: padded to platform {platform.name!r} D={platform.action_dim} S={platform.state_dim}")
        for name, entry in embodiments.items():
            print(f"  {name}: D={entry['action_dim']} S={entry['state_dim']} datasets {entry['datasets']}")
    print(f"wrote {out}")
    return 0
