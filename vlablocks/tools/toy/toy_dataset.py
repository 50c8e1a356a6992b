"""Records toy-env episodes (the scripted expert, or a mix of behaviour policies) as a genuine LeRobot v3.0 dataset.

Every frame holds both cameras (`top`, `wrist`) with their depth maps and intrinsics, the puck state,
the action taken, and the outcome columns LeRobot datasets use: `next.reward` (1.0 on the frame whose
action reached the named block, else 0), `next.success` (same, as a flag) and `next.done` (True on an
episode's last frame), plus `behaviour_policy` (the index of the recording policy in
`meta/behaviour_policies.json`, see toy_behaviours.py); experiment configs pick the columns they want. Images are stored losslessly as
PNG inside the parquet files (`use_videos=False`): at 112 px this is faster to write and to read than
video, and a lossy codec would blur the colours the task is about (figures in docs/toy_task.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from vlablocks.tools.toy import toy_arm3
from vlablocks.tools.toy.toy import ACTION_DIM, CAMERAS, STATE_DIM, ToyTabletopEnv
from vlablocks.tools.toy.toy_behaviours import BEHAVIOURS, assign_behaviours
from vlablocks.tools.toy.toy_two_stage import EVAL_ONLY

FPS = 10
ROBOT_TYPE = "toy"
BEHAVIOURS_FILE = "behaviour_policies.json"  # in meta/: the names behind the `behaviour_policy` column


def image_key(camera: str) -> str:
    return f"observation.images.{camera}"


def depth_key(camera: str) -> str:
    return f"observation.depth.{camera}"


def intrinsics_key(camera: str) -> str:
    return f"observation.intrinsics.{camera}"


def toy_features(image_size: int) -> dict[str, dict]:
    """LeRobot feature spec of the toy dataset."""
    features: dict[str, dict] = {}
    for camera in CAMERAS:
        features[image_key(camera)] = {
            "dtype": "image",
            "shape": (image_size, image_size, 3),
            "names": ["height", "width", "channels"],
        }
        features[depth_key(camera)] = {
            "dtype": "image",
            "shape": (image_size, image_size, 1),
            "names": ["height", "width", "channels"],
            "info": {"is_depth_map": True},
        }
        # Flattened row-major [9]: lerobot's per-episode stats do not aggregate 2-D numeric features.
        features[intrinsics_key(camera)] = {"dtype": "float32", "shape": (9,), "names": None}
    features["observation.state"] = {"dtype": "float32", "shape": (STATE_DIM,), "names": ["x", "y"]}
    features["action"] = {"dtype": "float32", "shape": (ACTION_DIM,), "names": ["dx", "dy"]}
    features["next.reward"] = {"dtype": "float32", "shape": (1,), "names": None}
    features["next.success"] = {"dtype": "bool", "shape": (1,), "names": None}
    features["next.done"] = {"dtype": "bool", "shape": (1,), "names": None}
    features["behaviour_policy"] = {"dtype": "int64", "shape": (1,), "names": None}
    return features


def record_episode(env: ToyTabletopEnv, seed: int, behaviour: str = "expert", behaviour_index: int = 0) -> list[dict]:
    """Runs `behaviour` from `env.reset(seed)` until success or max_steps -> LeRobot frames (observation, action,
    task, outcome columns). The behaviour's own randomness is seeded by `seed` too."""
    obs = env.reset(seed=seed)
    policy = BEHAVIOURS[behaviour]
    rng = np.random.default_rng([seed, 0x5EED])
    choice = int(rng.integers(1 << 16))  # a per-episode pick (the `wrong` policy's block)
    frames = []
    while True:
        action = policy(env, rng, choice)
        frame = {"task": obs["prompt"], "observation.state": obs["state"], "action": action}
        for camera in env.config.cameras:
            frame[image_key(camera)] = obs["images"][camera]
            frame[depth_key(camera)] = obs["depth"][camera][..., None]
            frame[intrinsics_key(camera)] = obs["intrinsics"][camera].reshape(9)
        obs, reward, done, info = env.step(action)
        frame["next.reward"] = np.array([reward], dtype=np.float32)
        frame["next.success"] = np.array([info["success"]], dtype=bool)
        frame["next.done"] = np.array([done], dtype=bool)
        frame["behaviour_policy"] = np.array([behaviour_index], dtype=np.int64)
        frames.append(frame)
        if done:
            if behaviour == "expert" and not info["success"]:
                raise RuntimeError(f"toy expert failed on seed {seed}: the env or the expert is broken")
            return frames


def write_toy_dataset(
    out: str | Path,
    episodes: int,
    seed: int = 0,
    config: ToyTabletopEnv.Config | None = None,
    overwrite: bool = False,
    behaviours: list[str] | None = None,
    mix: np.ndarray | None = None,
    embodiment: str = ROBOT_TYPE,
) -> Path:
    """Writes `episodes` episodes (episode i uses env seed `seed + i`) to a LeRobot v3 dataset at `out`.

    behaviours: the recording policies (default: the expert alone); mix: their shares of the episodes
    (default equal), split exactly and shuffled (toy_behaviours.assign_behaviours). The two_stage variant is
    eval-only: a ValueError (its training data is the single-target `colours` data). embodiment "toy_arm3": the
    same episodes for a synthetic arm with a 3-D state and action (toy_arm3.py), for cross-embodiment mixtures."""
    base = config or ToyTabletopEnv.Config()
    if base.variant == "two_stage":
        raise ValueError(EVAL_ONLY)
    if embodiment not in (ROBOT_TYPE, toy_arm3.NAME):
        raise ValueError(f"embodiment must be {ROBOT_TYPE!r} or {toy_arm3.NAME!r}, got {embodiment!r}")
    arm3 = embodiment == toy_arm3.NAME
    import datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    datasets.disable_progress_bars()

    out = Path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) or pick another --out")
        shutil.rmtree(out)
    env = ToyTabletopEnv(ToyTabletopEnv.Config(**{**base.__dict__, "cameras": list(CAMERAS)}))
    dataset = LeRobotDataset.create(
        repo_id=f"local/{out.name}",
        fps=FPS,
        features=(
            toy_arm3.arm3_features(toy_features(env.config.image_size)) if arm3 else toy_features(env.config.image_size)
        ),
        root=out,
        robot_type=embodiment,
        use_videos=False,
    )
    names = list(behaviours or ["expert"])
    shares = np.full(len(names), 1.0 / len(names)) if mix is None else np.asarray(mix, dtype=np.float64)
    assignment = assign_behaviours(episodes, shares / shares.sum(), seed)
    for episode in range(episodes):
        behaviour = int(assignment[episode])
        frames = record_episode(env, seed + episode, names[behaviour], behaviour)
        for frame in toy_arm3.arm3_episode(frames) if arm3 else frames:
            dataset.add_frame(frame)
        dataset.save_episode()
    dataset.finalize()
    (out / "meta" / BEHAVIOURS_FILE).write_text(json.dumps(names))
    return out
