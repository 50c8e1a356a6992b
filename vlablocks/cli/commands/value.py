"""`vlablocks value --ckpt V --data ROOT --out DIR`: a value model's per-frame values on a LeRobot dataset.

Writes DIR/values.safetensors (index, episode_index, value, return per frame; the returns' gamma in its
metadata: the file `dataset: {name: value_guided, values: ...}` reads), DIR/summary.json (ROC AUC of the
first frame's value against episode success, value MSE, per-behaviour means when the dataset records
`behaviour_policy`) and DIR/calibration.png. The dataset is read with the checkpoint's cameras and the
returns options given here (use the ones the value model was trained with).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlablocks.cli.arguments import count, real

NAME = "value"
HELP = "per-frame values of a value-model checkpoint on a dataset: values.safetensors, ROC AUC, calibration plot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="checkpoint of a value model (framework QwenValue)")
    parser.add_argument("--data", required=True, help="local LeRobot dataset directory")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--gamma", type=real(0, 1, open_low=True), default=0.9, help="returns discount (the value model's; default 0.9)"
    )
    parser.add_argument(
        "--source", default="outcome", choices=["outcome", "reward"], help="returns from (default outcome)"
    )
    parser.add_argument("--key", default="next.success", help="success or reward column (default next.success)")
    parser.add_argument("--first-frames", action="store_true", help="only each episode's first frame (fast AUC)")
    parser.add_argument("--batch-size", type=count(1), default=64)
    parser.add_argument(
        "--dataset-name", help="the normalization stats to use (default: the checkpoint's, when it has one set)"
    )


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"unexpected arguments: {' '.join(overrides)}")
    import numpy as np
    from safetensors.numpy import save_file

    from vlablocks.core.atomic import atomic_directory
    from vlablocks.core.capabilities import ValuePredictor, require
    from vlablocks.core.dataloader.checkpoint_dataset import checkpoint_dataset
    from vlablocks.core.policy.policy import Policy
    from vlablocks.methods.value.metrics import calibration_table, plot_calibration, roc_auc

    policy = Policy.from_pretrained(args.ckpt)
    model, processor = policy.model, policy.processor
    require(model, ValuePredictor, "vlablocks value", hint=f"{args.ckpt} is a policy: pass a value model's checkpoint")
    returns = {"source": args.source, "key": args.key, "gamma": args.gamma}
    dataset = checkpoint_dataset(policy, args.data, args.dataset_name, returns=returns)
    table = dataset.lerobot.hf_dataset
    columns = [c for c in ("episode_index", "behaviour_policy") if c in table.column_names]
    meta = table.with_format("numpy", columns=columns)[:]
    episodes = np.asarray(meta["episode_index"]).reshape(-1)
    first = np.ones(len(episodes), dtype=bool)
    first[1:] = episodes[1:] != episodes[:-1]
    rows = np.flatnonzero(first) if args.first_frames else np.arange(len(episodes))
    values = np.concatenate(
        [
            model.predict_value(processor([dataset[int(i)] for i in rows[start : start + args.batch_size]]))
            for start in range(0, len(rows), args.batch_size)
        ]
    )
    returns = dataset.returns[rows].astype(np.float64)
    is_first = first[rows]
    success = returns[is_first] > 0  # outcome returns: positive exactly for successful episodes
    auc = roc_auc(values[is_first], success)
    summary = {
        "checkpoint": str(args.ckpt),
        "data": str(args.data),
        "frames": int(len(rows)),
        "episodes": int(is_first.sum()),
        "success_rate": float(success.mean()),
        "first_frame_auc": auc,
        "value_mse": float(np.mean((values - returns) ** 2)),
        "calibration": calibration_table(values, returns),
    }
    if "behaviour_policy" in meta:
        names_file = Path(args.data) / "meta" / "behaviour_policies.json"
        names = json.loads(names_file.read_text()) if names_file.is_file() else None
        behaviour = np.asarray(meta["behaviour_policy"]).reshape(-1)[rows][is_first]
        summary["first_frame_by_behaviour"] = {
            (names[b] if names else str(b)): {
                "episodes": int((behaviour == b).sum()),
                "success_rate": float(success[behaviour == b].mean()),
                "mean_value": float(values[is_first][behaviour == b].mean()),
            }
            for b in np.unique(behaviour).tolist()
        }
    with atomic_directory(args.out) as tmp:
        tensors = {
            "index": dataset.frame_indices()[rows].astype(np.int64),
            "episode_index": episodes[rows].astype(np.int64),
            "value": values.astype(np.float32),
            "return": returns.astype(np.float32),
        }
        save_file(tensors, str(tmp / "values.safetensors"), metadata={"gamma": repr(args.gamma)})
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
        plot_calibration(tmp / "calibration.png", summary["calibration"], values[is_first], success, auc)
    print(
        f"{len(rows)} frames of {int(is_first.sum())} episodes: first-frame ROC AUC {auc:.3f}, "
        f"value MSE {summary['value_mse']:.4f} -> {args.out}"
    )
    return 0
