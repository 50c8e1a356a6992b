"""The embodiments of a training dataset: which robots a (mixture) dataset holds and each one's own sizes.

A leaf dataset states its embodiment (`embodiment`, default the platform's name) and, when it is smaller than the
platform, its own `action_dim` / `state_dim` (LeRobot datasets: the options of the same names). The platform's D
and S are the largest sizes of the mixture; smaller robots are padded to them by the processor
(vlablocks/core/processor/embodiment.py), which records this table in every checkpoint.
"""

from __future__ import annotations

from typing import Any

from vlablocks.core.config import ConfigError, PlatformConfig
from vlablocks.core.dataloader.base import RawDataset


def leaf_sizes(leaf: Any, platform: PlatformConfig) -> tuple[int, int]:
    """(action_dim, state_dim) of one leaf dataset: its own when it declares them, else the platform's."""
    action_dim = getattr(leaf, "action_dim", None)
    state_dim = getattr(leaf, "state_dim", None)
    return (
        platform.action_dim if action_dim is None else int(action_dim),
        platform.state_dim if state_dim is None else int(state_dim),
    )


def dataset_embodiments(dataset: Any, platform: PlatformConfig) -> dict[str, dict] | None:
    """{embodiment: {"action_dim", "state_dim", "datasets": [dataset_name, ...]}} of the robot datasets in
    `dataset` (a mixture's leaves), or None when every one has the platform's sizes (a single-size run).

    ConfigError when a dataset is larger than the platform, or one embodiment name has two sizes.
    """
    leaves = dataset.leaves() if isinstance(dataset, RawDataset) else []  # a list of sample dicts: one robot
    table: dict[str, dict] = {}
    for leaf in leaves:
        if getattr(leaf, "sample_kind", "robot") != "robot":
            continue
        action_dim, state_dim = leaf_sizes(leaf, platform)
        name = getattr(leaf, "embodiment", None) or platform.name
        if action_dim > platform.action_dim or state_dim > platform.state_dim:
            raise ConfigError(
                f"dataset {leaf.name!r} (embodiment {name!r}) has action_dim {action_dim}, state_dim {state_dim}, more "
                f"than platform {platform.name!r} ({platform.action_dim}, {platform.state_dim}); set platform.action_dim"
                " / platform.state_dim to the largest robot's"
            )
        entry = table.setdefault(name, {"action_dim": action_dim, "state_dim": state_dim, "datasets": []})
        if (entry["action_dim"], entry["state_dim"]) != (action_dim, state_dim):
            raise ConfigError(
                f"embodiment {name!r} has datasets of two sizes: {entry['datasets'][0]!r} ({entry['action_dim']}, "
                f"{entry['state_dim']}) and {leaf.name!r} ({action_dim}, {state_dim}); give them distinct embodiments"
            )
        entry["datasets"].append(leaf.name)
    full = (platform.action_dim, platform.state_dim)
    if all((e["action_dim"], e["state_dim"]) == full for e in table.values()):
        return None
    return table
