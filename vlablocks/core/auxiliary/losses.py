"""The auxiliary losses of one framework, built from its config section and added to its action loss
(equation in vlablocks/core/auxiliary/base.py)."""

from __future__ import annotations

import torch
from torch import nn

from vlablocks.core.auxiliary.base import AuxiliaryInputs
from vlablocks.core.build import build
from vlablocks.core.config import to_dataclass
from vlablocks.core.registry import AUXILIARY_LOSSES

# Where the auxiliary modules of checkpoints written before `framework.auxiliary_losses` kept their weights.
LEGACY_PREFIXES = {
    "readout.": "auxiliary_losses.readout.",
    "world_losses.geometry_head.": "auxiliary_losses.alg1_geo.head.",
    "world_losses.dynamics_head.": "auxiliary_losses.alg1_dyn.head.",
}


class AuxiliaryLosses(nn.ModuleDict):
    """{name: AuxiliaryLoss} for the losses of weight > 0 in `framework.auxiliary_losses`, in config order."""

    def __init__(self, owner: str, options: dict, *, vlm, platform, has_fusion: bool = False) -> None:
        super().__init__()
        for name, values in options.items():
            entry = AUXILIARY_LOSSES.entry(name)
            config = to_dataclass(entry.config_class, {"name": name, **(values or {})}, f"auxiliary_losses.{name}")
            if config.weight < 0:
                raise ValueError(f"{owner}: auxiliary_losses.{name}.weight must be >= 0, got {config.weight}")
            if entry.obj.needs_fusion and not has_fusion:
                raise ValueError(
                    f"{owner}: auxiliary_losses.{name} reads the geometric fusion's tokens; use QwenLayerwiseFM3D "
                    "with use_geometric_branch: true, or drop it"
                )
            if config.weight > 0:  # weight 0: never built (no parameters, no tokens, the RNG untouched)
                self[name] = build(AUXILIARY_LOSSES, config, vlm=vlm, platform=platform)

    @property
    def prompt_suffix(self) -> str:
        return "".join(token for loss in self.values() for token in loss.prompt_tokens)

    @property
    def token_ids(self) -> list[int]:
        return [token for loss in self.values() for token in loss.token_ids]

    @property
    def trains_vlm(self) -> bool:
        return any(loss.trains_vlm for loss in self.values())

    @property
    def needs_fusion(self) -> bool:
        return any(loss.needs_fusion for loss in self.values())

    def processor_options(self, options: dict) -> dict:
        for loss in self.values():
            options = loss.processor_options(options)
        return options

    def add_to(self, losses: dict, inputs: AuxiliaryInputs) -> dict:
        """losses: the framework's {"loss": its head's loss, ["log": {...}], ...} -> with "head_loss" (that loss,
        detached), "action_loss" = the head's
        loss + the weighted losses that predict actions (the readout), "loss" = action_loss + the other weighted
        losses, and "<name>_loss" for each unweighted L_k (in "log" too, detached). Unchanged when there is none."""
        if not len(self):
            return losses
        terms = {name: loss(inputs) for name, loss in self.items()}
        weighted = {name: self[name].weight * term for name, term in terms.items()}
        action_loss = losses["loss"] + sum(v for name, v in weighted.items() if self[name].predicts_actions)
        total = action_loss + sum(v for name, v in weighted.items() if not self[name].predicts_actions)
        head_loss = losses["loss"].detach()
        log = {**losses.get("log", {}), "head_loss": head_loss, "action_loss": action_loss.detach()}
        log.update({f"{name}_loss": term.detach() for name, term in terms.items()})
        named = {f"{name}_loss": term for name, term in terms.items()}  # attached, unweighted
        return {**losses, **named, "loss": total, "action_loss": action_loss, "head_loss": head_loss, "log": log}


def upgrade_legacy_keys(state: dict[str, torch.Tensor]) -> None:
    """Renames, in place, the auxiliary modules' keys of a checkpoint written before `auxiliary_losses`."""
    for key in list(state):
        for old, new in LEGACY_PREFIXES.items():
            if key.startswith(old):
                state[new + key[len(old) :]] = state.pop(key)
                break


def require_vlm_training(owner: str, insulated: bool, auxiliary: AuxiliaryLosses, learns_otherwise: bool) -> None:
    """An insulated VLM (the head's gradient stops at it) must learn from something: refuse the config if not."""
    if insulated and not learns_otherwise and not auxiliary.trains_vlm:
        raise ValueError(
            f"{owner}: insulate_vlm stops the head's gradient at the VLM, which then learns nothing; add "
            "auxiliary_losses.readout.weight > 0 (or set insulate_vlm: false)"
        )
