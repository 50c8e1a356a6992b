"""Guards of a run directory: never clobber a run silently, resume only what the config still describes.

check_run_dir(run_dir, experiment)   an existing run without trainer.resume is an error naming both ways
                                     out; a resume whose config changed beyond RESUME_SAFE_KEYS is refused
remove_stale_temporaries(run_dir)    `.step_N.tmp-*` / `.old-*` folders a kill during a save left behind
truncate_metrics(run_dir, step)      metrics.jsonl keeps the steps up to the resumed checkpoint only
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vlablocks.core.config import ConfigError, ExperimentConfig, load_yaml
from vlablocks.core.training.checkpoint import checkpoint_dirs

# Keys a resumed run may change: how long, how often to save/log, and how the host runs it; never the model,
# the data or the optimization.
RESUME_SAFE_KEYS = (
    "run_dir",
    "trainer.max_steps",
    "rl.iterations",
    "rl.save_every",
    "rl.keep_last",
    "rl.eval_every",
    "trainer.save_every",
    "trainer.log_every",
    "trainer.keep_last",
    "trainer.resume",
    "trainer.num_workers",
    "trainer.worker_sharing",
    "trainer.torch_threads",
    "trainer.wandb_project",
    "dataset.root",
)
METRICS_FILE = "metrics.jsonl"


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def check_run_dir(run_dir: Path, experiment: ExperimentConfig) -> None:
    """Raises ConfigError when training into `run_dir` would silently restart or resume another run."""
    has_run = bool(checkpoint_dirs(run_dir)) or (run_dir / METRICS_FILE).is_file()
    if not has_run:
        return
    if not experiment.trainer.resume:
        raise ConfigError(
            f"run_dir {run_dir} already holds a run; continue it with trainer.resume=true or pick a new run_dir"
        )
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved, now = _flatten(load_yaml(saved_path)), _flatten(experiment.to_dict())
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in RESUME_SAFE_KEYS)
    if changed:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
        raise ConfigError(
            f"resuming {run_dir} with a changed config ({shown}{', ...' if len(changed) > 4 else ''}); only "
            f"{', '.join(RESUME_SAFE_KEYS)} may change on resume: start a new run_dir for the others"
        )


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Deletes the temporary folders an interrupted save left under checkpoints/; returns them."""
    root = run_dir / "checkpoints"
    stale = [p for p in root.glob(".step_*") if p.is_dir() and (".tmp-" in p.name or ".old-" in p.name)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keeps the metrics.jsonl records of steps <= `step` (a resume re-logs what follows its checkpoint)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            break  # a line cut by a kill ends the readable log
    path.write_text("".join(f"{line}\n" for line in kept))
