"""The contract of an auxiliary loss, and what one training forward hands it.

A framework's own loss (its head's flow matching, FAST cross-entropy, L1, ...) is the action loss; the auxiliary
losses named in `framework.auxiliary_losses` are added to it with their weights:

    action_loss = head_loss + sum_{k predicts actions} w_k L_k          (the readout regression)
    loss        = action_loss + sum_{k other} w_k L_k                     (alg1's world-model losses)

The forward then reports `loss`, `action_loss` and `<name>_loss` for every L_k (unweighted, detached in "log"),
so a loss schedule (`trainer.loss_schedule`) can weight the action part by the step whatever the framework.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlablocks.core.batch import Batch


@dataclass(frozen=True)
class FusionCapture:
    """A geometric fusion's input and output in one forward (QwenLayerwiseFM3D with its geometric branch).

    vision: [N, H] the VLM's own vision tokens (the fusion's input); fused: [N, H] its output; info: the VLM's
    VisionHookInfo (token -> sample, view, patch); grid_hw: the geometric encoder's (g_h, g_w) cell grid."""

    vision: torch.Tensor
    fused: torch.Tensor
    info: Any
    grid_hw: tuple[int, int]


@dataclass(frozen=True)
class AuxiliaryInputs:
    """What an auxiliary loss reads: the VLMOutput of the training forward (with the positions of every token the
    losses requested), the Batch, and the fusion's capture when the framework fuses geometry (else None)."""

    vlm_output: Any
    batch: Batch
    fusion: FusionCapture | None = None


class AuxiliaryLoss(nn.Module):
    """Base class of registered auxiliary losses: built as `Loss(config, vlm=..., platform=...)`, its `Config`
    holding `weight` (> 0; a loss of weight 0 is never built, so it has no parameters and adds no gradient).

    Subclasses implement forward(inputs: AuxiliaryInputs) -> unweighted scalar, and declare what they need:
      prompt_tokens        special tokens closing every prompt (their hidden states are read back)
      token_ids            their ids, requested from the VLM's forward
      needs_fusion         reads the geometric fusion's capture (a framework without one refuses it)
      trains_vlm           its gradient reaches the VLM (an insulated VLM needs one such loss to learn)
      predicts_actions     it is part of the action loss (a loss schedule weights it with the head's)
      processor_options()  what the processor must prepare for it (depth points, the next frame)
    """

    needs_fusion: bool = False
    trains_vlm: bool = False
    predicts_actions: bool = False

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = float(weight)
        self.prompt_tokens: list[str] = []
        self.token_ids: list[int] = []

    def processor_options(self, options: dict) -> dict:
        """The framework's processor options, with what this loss needs added (default: nothing)."""
        return options

    def forward(self, inputs: AuxiliaryInputs) -> torch.Tensor:
        raise NotImplementedError
