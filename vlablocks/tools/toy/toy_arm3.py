"""A second, synthetic embodiment of the toy task for cross-embodiment mixtures: `toy_arm3`.

The same scenes, expert and images as the toy task, recorded for an arm with a height: state [x, y, z], action
[dx, dy, dz] (the toy robot has [x, y] and [dx, dy]). The height is a deterministic function of time: it starts at
Z_START and every step lowers by LOWER_RATE of what is left, dz = -LOWER_RATE * z, so the third action dimension is
learnable from the state alone. Written by `vlablocks make-toy-data --embodiment toy_arm3` (docs/cotraining.md,
"Cross-embodiment mixtures"); there is no env for it: it only adds a robot of another size to the training data.
"""

from __future__ import annotations

import numpy as np

NAME = "toy_arm3"
ACTION_DIM = 3
STATE_DIM = 3
Z_START = 0.3
LOWER_RATE = 0.25


def arm3_features(features: dict[str, dict]) -> dict[str, dict]:
    """The toy dataset's LeRobot features with a 3-D state [x, y, z] and a 3-D action [dx, dy, dz]."""
    return {
        **features,
        "observation.state": {"dtype": "float32", "shape": (STATE_DIM,), "names": ["x", "y", "z"]},
        "action": {"dtype": "float32", "shape": (ACTION_DIM,), "names": ["dx", "dy", "dz"]},
    }


def arm3_episode(frames: list[dict]) -> list[dict]:
    """Toy frames (state [2], action [2]) -> the same episode for the arm: state [x, y, z], action [dx, dy, dz]."""
    z = Z_START
    out = []
    for frame in frames:
        dz = -LOWER_RATE * z
        state = np.append(np.asarray(frame["observation.state"], np.float32), np.float32(z))
        action = np.append(np.asarray(frame["action"], np.float32), np.float32(dz))
        out.append({**frame, "observation.state": state.astype(np.float32), "action": action.astype(np.float32)})
        z += dz
    return out
