"""Co-training on robot and vision-language samples (docs/cotraining.md): the shared loss arithmetic.

A batch may mix robot samples (`batch.is_robot` True: an action chunk) and vision-language samples (False: an
image question whose answer tokens carry `batch.vlm.labels`). One VLM pass serves both; then

    action_loss = the action head's loss over the robot rows only          (0 when the batch has none)
    answer_loss = cross-entropy of the answer tokens (the VL rows' labels)  (0 when the batch has none)
    loss        = action_loss + vl_loss_weight * answer_loss

A VL row never reaches the action head, and a robot row has no answer labels, so each kind of sample reaches
only its own loss. When a batch lacks one kind, that loss is `zero_touch`: an exact zero that still depends on
the idle module's parameters (every parameter gets a gradient, exactly zero: DDP's reducer stays complete).
A framework supports co-training by implementing `cotraining_forward(batch)` (the VisionLanguageCoTraining
capability, vlablocks/core/capabilities.py) with these helpers; `check_cotraining` refuses VL data for any other.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from vlablocks.core.action_model.base import Conditioning
from vlablocks.core.batch import Batch
from vlablocks.core.capabilities import VisionLanguageCoTraining, require
from vlablocks.core.dataloader.base import RawDataset
from vlablocks.core.framework.answer_tokens import answer_logits
from vlablocks.core.processor.steps import IGNORE_INDEX


def has_vl_samples(batch: Batch) -> bool:
    """True when any sample of the batch is a vision-language sample."""
    return batch.is_robot is not None and not bool(batch.is_robot.all())


def robot_rows(batch: Batch) -> torch.Tensor:
    """[B] bool, True at robot samples (all True for batches without `is_robot`)."""
    if batch.is_robot is None:
        return torch.ones(len(batch), dtype=torch.bool, device=batch.vlm.input_ids.device)
    return batch.is_robot


def select_rows(conditioning: Conditioning, rows: torch.Tensor) -> Conditioning:
    """The conditioning of the samples where rows [B] is True: every [B, ...] field indexed by it."""
    picked = {}
    for field in dataclasses.fields(conditioning):
        value = getattr(conditioning, field.name)
        if torch.is_tensor(value):
            value = value[rows]
        elif isinstance(value, list):
            value = [layer[rows] for layer in value]
        picked[field.name] = value
    return Conditioning(**picked)


def zero_touch(*modules: nn.Module | None) -> torch.Tensor:
    """A scalar exactly 0 that depends on every trainable parameter of `modules` (their gradients: exact zeros)."""
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    if not params:
        return torch.zeros(())
    return sum(p.sum() for p in params) * 0.0


def answer_cross_entropy(vlm, out, labels: torch.Tensor | None) -> torch.Tensor | None:
    """Mean cross-entropy of the answer tokens (labels [B, L] not -100), teacher-forced from the VLM pass `out`
    (vlablocks/core/framework/answer_tokens.py `answer_logits`); None when the batch has no answer token."""
    if labels is None or not bool((labels != IGNORE_INDEX).any()):
        return None
    logits, targets = answer_logits(vlm, out, labels)
    return F.cross_entropy(logits, targets)


def cotraining_loss(
    action_loss: torch.Tensor, answer_loss: torch.Tensor | None, vl_loss_weight: float, idle_vlm_head: nn.Module
) -> dict[str, torch.Tensor]:
    """-> {"loss": action_loss + vl_loss_weight * answer_loss, "log": {"action_loss", "answer_loss"} detached}.

    answer_loss None (no VL sample): the answer term is `zero_touch(idle_vlm_head)` (the LM head).
    """
    answer = answer_loss if answer_loss is not None else zero_touch(idle_vlm_head).to(action_loss.device)
    loss = action_loss + vl_loss_weight * answer
    return {"loss": loss, "log": {"action_loss": action_loss.detach(), "answer_loss": answer.detach()}}


def check_cotraining(framework: nn.Module, dataset: RawDataset | list[dict]) -> bool:
    """True when the training data holds vision-language samples (a dataset whose leaves include one of
    `sample_kind` "vl"); MissingCapability (a ValueError naming the frameworks that can) when `framework` lacks
    VisionLanguageCoTraining. An in-memory list of sample dicts holds robot samples only."""
    leaves = dataset.leaves() if isinstance(dataset, RawDataset) else []
    if not any(leaf.sample_kind == "vl" for leaf in leaves):
        return False
    require(framework, VisionLanguageCoTraining, "training on a dataset with vision-language samples", "or drop them")
    return True
