"""Records Meta-World's scripted experts (`metaworld.policies`) as a LeRobot v3.0 dataset, one task set at a time.

Each task runs `episodes_per_task` episodes from env seeds `seed .. seed + episodes_per_task - 1` (the same seeds
for every task: the tasks draw different layouts from them). An episode ends on success or after `max_steps`; a
failed demonstration is dropped and counted, never written. Every frame holds the corner2 view
(`observation.images.corner2`, PNG inside the parquet files), the 4-D hand state, the expert's action, the task's
instruction (LeRobot's `task`) and the outcome columns `next.reward`, `next.success`, `next.done`.
`meta/metaworld.json` records the protocol: the env settings, the seeds, and per task the kept and dropped seeds
and every attempted episode's success and length.

Data seeds are kept apart from evaluation's (`vlablocks eval` starts at seed 1000, `EVAL_SEED`): a range that
reaches into [EVAL_SEED, EVAL_SEED + EVAL_SEEDS_RESERVED) is refused.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FPS = 80  # Meta-World's control rate: 5 MuJoCo substeps of 2.5 ms (LeRobot's render_fps)
ROBOT_TYPE = "sawyer"
IMAGE_KEY = "observation.images.corner2"
META_FILE = "metaworld.json"  # in meta/
DATA_SEED = 0  # the first data seed
EVAL_SEED = 1000  # `vlablocks eval --seed` default: the first evaluation seed
EVAL_SEEDS_RESERVED = 100_000  # evaluation seeds are EVAL_SEED .. EVAL_SEED + this - 1: data never uses them


@dataclass(frozen=True)
class EpisodeRecord:
    """One attempted demonstration: its task, env seed, outcome and length (steps)."""

    task: str
    seed: int
    success: bool
    steps: int


def metaworld_features(image_size: int) -> dict[str, dict]:
    """LeRobot feature spec: the view [H, W, 3], state [4], action [4], reward, success and done flags."""
    return {
        IMAGE_KEY: {"dtype": "image", "shape": (image_size, image_size, 3), "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (4,), "names": ["x", "y", "z", "gripper"]},
        "action": {"dtype": "float32", "shape": (4,), "names": ["dx", "dy", "dz", "grip"]},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
    }


def check_data_seeds(seed: int, episodes_per_task: int) -> None:
    """Refuses data seeds that reach into the evaluation seeds, in one line naming the fix."""
    first, last = seed, seed + episodes_per_task - 1
    if first < 0 or (first < EVAL_SEED + EVAL_SEEDS_RESERVED and last >= EVAL_SEED):
        raise ValueError(
            f"data seeds {first}..{last} overlap the evaluation seeds {EVAL_SEED}..{EVAL_SEED + EVAL_SEEDS_RESERVED - 1}; "
            f"use --seed {DATA_SEED} with at most {EVAL_SEED - DATA_SEED} episodes per task, "
            f"or --seed {EVAL_SEED + EVAL_SEEDS_RESERVED} and up"
        )


def record_demo(env, seed: int) -> tuple[list[dict], bool]:
    """The expert from `env.reset(seed)` until success or max_steps -> (LeRobot frames, success)."""
    obs = env.reset(seed=seed)
    frames = []
    while True:
        action = env.expert_action()
        frame = {"task": obs["prompt"], "observation.state": obs["state"], "action": action}
        frame[IMAGE_KEY] = obs["images"]["corner2"]
        obs, reward, done, info = env.step(action)
        frame["next.reward"] = np.array([reward], dtype=np.float32)
        frame["next.success"] = np.array([info["success"]], dtype=bool)
        frame["next.done"] = np.array([done], dtype=bool)
        frames.append(frame)
        if done:
            return frames, bool(info["success"])


def write_metaworld_dataset(
    out: str | Path,
    tasks: list[str],
    episodes_per_task: int,
    seed: int = DATA_SEED,
    image_size: int = 128,
    max_steps: int = 200,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Writes the experts' successful demonstrations of `tasks` to a LeRobot v3 dataset at `out` -> the protocol
    (also meta/metaworld.json): {"tasks", "seeds", "kept", "dropped", "per_task", "episodes", "seconds", ...}."""
    if episodes_per_task < 1:
        raise ValueError(f"--episodes-per-task must be >= 1, got {episodes_per_task}")
    check_data_seeds(seed, episodes_per_task)
    import datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from vlablocks.core.envs.metaworld import MetaWorldEnv

    datasets.disable_progress_bars()
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} already exists; pass --overwrite or pick another --out")
        shutil.rmtree(out)
    dataset = LeRobotDataset.create(
        repo_id=f"local/{out.name}",
        fps=FPS,
        features=metaworld_features(image_size),
        root=out,
        robot_type=ROBOT_TYPE,
        use_videos=False,
    )
    start = time.perf_counter()
    records: list[EpisodeRecord] = []
    bar = _bar(len(tasks) * episodes_per_task, progress)
    for task in tasks:
        env = MetaWorldEnv(MetaWorldEnv.Config(task=task, image_size=image_size, max_steps=max_steps))
        try:
            for episode_seed in range(seed, seed + episodes_per_task):
                frames, success = record_demo(env, episode_seed)
                records.append(EpisodeRecord(env.task, episode_seed, success, len(frames)))
                if success:
                    for frame in frames:
                        dataset.add_frame(frame)
                    dataset.save_episode()
                if bar is not None:
                    bar.update(1)
        finally:
            env.close()
    if bar is not None:
        bar.close()
    dataset.finalize()
    protocol = summarize(records, tasks, seed, episodes_per_task, image_size, max_steps)
    protocol["seconds"] = round(time.perf_counter() - start, 1)
    (out / "meta" / META_FILE).write_text(json.dumps(protocol, indent=1))
    return protocol


def summarize(
    records: list[EpisodeRecord], tasks: list[str], seed: int, episodes_per_task: int, image_size: int, max_steps: int
) -> dict:
    """Attempted episodes -> the dataset's protocol: per task the kept and dropped seeds, and the totals."""
    per_task = {}
    for task in tasks:
        mine = [r for r in records if r.task == task]
        kept = [r for r in mine if r.success]
        per_task[task] = {
            "kept": len(kept),
            "dropped": len(mine) - len(kept),
            "dropped_seeds": [r.seed for r in mine if not r.success],
            "mean_steps": float(np.mean([r.steps for r in kept])) if kept else 0.0,
        }
    return {
        "tasks": list(tasks),
        "seeds": [seed, seed + episodes_per_task - 1],
        "episodes_per_task": episodes_per_task,
        "image_size": image_size,
        "max_steps": max_steps,
        "fps": FPS,
        "kept": sum(r.success for r in records),
        "dropped": sum(not r.success for r in records),
        "per_task": per_task,
        "episodes": [asdict(r) for r in records],
    }


def _bar(total: int, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="demos", dynamic_ncols=True)
