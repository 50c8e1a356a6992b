"""Cross-embodiment mixtures: robots with different action and state sizes in one model.

The platform's D and S are the largest sizes in the mixture; each embodiment keeps its own (D_e, S_e), recorded in
the processor config (`processor.json`, so in every checkpoint) and in the server's metadata:

    embodiments: {"toy":      {"action_dim": 2, "state_dim": 2, "datasets": ["toy"]},
                  "toy_arm3": {"action_dim": 3, "state_dim": 3, "datasets": ["toy_arm3"]}}

Input side (per robot sample, `EmbodimentPadding`): `resolve` names the sample's dataset (its stats) from its
`embodiment` when it has no `dataset_name` and refuses an unknown embodiment; after normalization, `pad` writes the
normalized action [T, D_e] into zeros [T, D] and the state [S_e] into zeros [S], and adds `action_dim_mask` [D]
(True at the D_e real dimensions), which the batch carries as [B, D] and every head's loss honours.
Output side: `trim` cuts each predicted chunk [T, D] back to its sample's D_e before un-normalizing.
Single-embodiment runs have no `embodiments` (None): nothing here runs and their batches are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def embodiment_sizes(metadata: dict, request: dict) -> tuple[str | None, int | None, int | None]:
    """(embodiment, action_dim, state_dim) a request is answered with: its `embodiment`'s own sizes when the policy
    serves several (metadata["embodiments"]), else the metadata's. ValueError naming the known ones if unknown."""
    table = metadata.get("embodiments")
    if not table:
        return metadata.get("embodiment"), metadata.get("action_dim"), metadata.get("state_dim")
    name = request.get("embodiment") if isinstance(request, dict) else None
    name = metadata.get("embodiment") if name is None else name
    if not isinstance(name, str) or name not in table:
        raise ValueError(
            f"'embodiment' {name!r} is not served by this policy; send one of {sorted(table)} "
            "(the request's 'embodiment' key names its robot)"
        )
    return name, int(table[name]["action_dim"]), int(table[name]["state_dim"])


def check_embodiments(embodiments: dict[str, dict], action_dim: int, state_dim: int) -> None:
    """Each entry needs action_dim <= D, state_dim <= S and at least one dataset; ValueError naming the entry."""
    if not embodiments:
        raise ValueError("embodiments must list at least one embodiment, or be None for a single-embodiment policy")
    for name, entry in embodiments.items():
        missing = [k for k in ("action_dim", "state_dim", "datasets") if k not in entry]
        if missing:
            raise ValueError(f"embodiments[{name!r}] lacks {missing}; expected action_dim, state_dim and datasets")
        if not 1 <= entry["action_dim"] <= action_dim or not 0 <= entry["state_dim"] <= state_dim:
            raise ValueError(
                f"embodiments[{name!r}] has action_dim {entry['action_dim']}, state_dim {entry['state_dim']}; the "
                f"platform's are the largest ({action_dim}, {state_dim}): raise platform.action_dim / state_dim"
            )
        if not entry["datasets"]:
            raise ValueError(f"embodiments[{name!r}] names no datasets (the stats its requests are normalized with)")


class EmbodimentPadding:
    """The processor's cross-embodiment steps (see the module docstring)."""

    def __init__(self, embodiments: dict[str, dict], action_dim: int, state_dim: int, default: str) -> None:
        check_embodiments(embodiments, action_dim, state_dim)
        self.embodiments = embodiments
        self.action_dim = action_dim
        self.state_dim = state_dim
        self.default = default if default in embodiments else sorted(embodiments)[0]
        self.dataset_embodiment = {d: name for name, entry in embodiments.items() for d in entry["datasets"]}

    def resolve(self, sample: dict, index: int) -> dict:
        """A robot sample -> the same with its `dataset_name` (from its `embodiment` when absent) and `embodiment`;
        ValueError naming the known embodiments for an unknown one, or the sizes when its action/state do not fit."""
        name, dataset = sample.get("embodiment"), sample.get("dataset_name")
        if name is None:
            name = self.dataset_embodiment.get(dataset, self.default) if dataset is not None else self.default
        if name not in self.embodiments:
            raise ValueError(
                f"sample[{index}] has embodiment {name!r}, which this policy was not trained on; "
                f"send one of {sorted(self.embodiments)}"
            )
        datasets = self.embodiments[name]["datasets"]
        if dataset is None:
            dataset = datasets[0]
        elif dataset not in datasets:
            raise ValueError(
                f"sample[{index}] has dataset_name {dataset!r}, not one of embodiment {name!r}'s datasets {datasets}; "
                "send a matching pair, or only the embodiment"
            )
        for key in ("action", "state"):
            own = self.embodiments[name][f"{key}_dim"]
            value = sample.get(key)
            got = np.shape(value)[-1] if np.ndim(value) else 0
            if value is not None and got != own:
                raise ValueError(f"sample[{index}] {key!r} has {got} dims; embodiment {name!r} has {key}_dim {own}")
        return {**sample, "embodiment": name, "dataset_name": dataset}

    def pad(self, sample: dict, index: int) -> dict:
        """Normalized `action` [T, D_e] -> [T, D] and `state` [S_e] -> [S] (zeros after the real values), plus
        `action_dim_mask` bool [D]. Sizes were checked by `resolve`."""
        entry = self.embodiments[sample["embodiment"]]
        out = {**sample, "action_dim_mask": np.arange(self.action_dim) < entry["action_dim"]}
        for key, own, full in (
            ("action", entry["action_dim"], self.action_dim),
            ("state", entry["state_dim"], self.state_dim),
        ):
            value = sample.get(key)
            if value is None:
                continue
            value = np.asarray(value, np.float32)
            padded = np.zeros((*value.shape[:-1], full), np.float32)
            padded[..., :own] = value
            out[key] = padded
        return out

    def trim(self, normalized: np.ndarray, dataset_names: Sequence[str]) -> list[np.ndarray]:
        """normalized: [B, T, D] -> per sample [T, D_e] of its dataset's embodiment."""
        rows = []
        for row, dataset in zip(normalized, dataset_names):
            name = self.dataset_embodiment.get(dataset, self.default)
            rows.append(row[..., : self.embodiments[name]["action_dim"]])
        return rows


def stack_or_list(rows: list[np.ndarray]) -> Any:
    """[T, D_e] rows -> [B, T, D_e] when they share D_e, else the list (a batch mixing embodiments)."""
    return np.stack(rows) if len({r.shape for r in rows}) == 1 else rows


def dim_mask_batch(samples: list[dict], action_dim: int) -> np.ndarray | None:
    """[B, D] bool from the samples' `action_dim_mask` (missing: all real), or None when nothing is padded."""
    masks = [np.asarray(s.get("action_dim_mask", np.ones(action_dim, bool)), bool) for s in samples]
    stacked = np.stack(masks)
    return None if stacked.all() else stacked
