"""Records scripted-expert episodes of the toy env as a genuine LeRobot v3.0 dataset.

Every frame holds both cameras (`top`, `wrist`) with their depth maps and intrinsics, the puck state
and the expert action; experiment configs pick the views they want. Images are stored losslessly as
PNG inside the parquet files (`use_videos=False`): at 112 px this is faster to write and to read than
video, and a lossy codec would blur the colours the task is about (figures in docs/toy_task.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vlablocks.envs.toy import ACTION_DIM, CAMERAS, STATE_DIM, ToyTabletopEnv

FPS = 10
ROBOT_TYPE = "toy"


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
    return features


def expert_episode(env: ToyTabletopEnv, seed: int) -> list[dict]:
    """Runs the expert from `env.reset(seed)` to success -> LeRobot frames (observation + action + task)."""
    obs = env.reset(seed=seed)
    frames = []
    while True:
        action = env.expert_action()
        frame = {"task": obs["prompt"], "observation.state": obs["state"], "action": action}
        for camera in env.config.cameras:
            frame[image_key(camera)] = obs["images"][camera]
            frame[depth_key(camera)] = obs["depth"][camera][..., None]
            frame[intrinsics_key(camera)] = obs["intrinsics"][camera].reshape(9)
        frames.append(frame)
        obs, _, done, info = env.step(action)
        if done:
            if not info["success"]:
                raise RuntimeError(f"toy expert failed on seed {seed}: the env or the expert is broken")
            return frames


def write_toy_dataset(
    out: str | Path,
    episodes: int,
    seed: int = 0,
    config: ToyTabletopEnv.Config | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes `episodes` expert episodes (episode i uses env seed `seed + i`) to a LeRobot v3 dataset at `out`."""
    import datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    datasets.disable_progress_bars()

    out = Path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) or pick another --out")
        shutil.rmtree(out)
    base = config or ToyTabletopEnv.Config()
    env = ToyTabletopEnv(ToyTabletopEnv.Config(**{**base.__dict__, "cameras": list(CAMERAS)}))
    dataset = LeRobotDataset.create(
        repo_id=f"local/{out.name}",
        fps=FPS,
        features=toy_features(env.config.image_size),
        root=out,
        robot_type=ROBOT_TYPE,
        use_videos=False,
    )
    for episode in range(episodes):
        for frame in expert_episode(env, seed + episode):
            dataset.add_frame(frame)
        dataset.save_episode()
    dataset.finalize()
    return out
