"""The typed tensor batch a processor hands a framework: what `forward` and the sampling methods take.

Shapes: B samples, L tokens, V views in the whole batch, P vision patches in the whole batch, T chunk
length, D action dim, S state dim, G views per sample in the geometric grid (the most any sample has).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch


def _move(value, device: torch.device):
    """A tensor, or a dataclass of them (recursively), on `device`; anything else as it is."""
    if torch.is_tensor(value):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {key: _move(item, device) for key, item in value.items()}
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(
            value, **{f.name: _move(getattr(value, f.name), device) for f in dataclasses.fields(value)}
        )
    return value


@dataclass
class VLMInputs:
    """The VLM's processor outputs, LEFT padded.

    input_ids:         [B, L] long
    attention_mask:    [B, L] long, 1 at real tokens
    pixel_patches:     [P, C, p, p] uint8, every view's patches, views in sample order (the VLM normalizes them)
    image_grid_thw:    [V, 3] long, (t, h, w) patch grid of each view
    views_per_sample:  [B] long, V = its sum
    labels:            [B, L] long or None: the answer's token ids where a loss is taken, -100 elsewhere
    layout:            None, or the pass's precomputed layout (a vlablocks.core.vlm.layout.VLMLayout: what the VLM
                       derives from these integers with host-side Python), set before a compiled sample_actions
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_patches: torch.Tensor
    image_grid_thw: torch.Tensor
    views_per_sample: torch.Tensor
    labels: torch.Tensor | None = None
    layout: Any = None

    def to(self, device: torch.device | str) -> VLMInputs:
        return _move(self, torch.device(device))

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        """What the transformers model takes besides the (separately encoded) pixels."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "image_grid_thw": self.image_grid_thw,
        }


@dataclass
class GeometryInputs:
    """The geometric encoder's inputs (see vlablocks/core/geometry/preprocess.py).

    pixels:    [B, G, 3, h, w] float, ImageNet-normalized views
    view_mask: [B, G] bool, True at real views
    points:    [B, G, 4, h, w] float camera-frame xyz + validity, or None when no sample has depth
    next_points: [B, G, 4, h, w] the same for the samples' later frame (sample["next"]), or None
    next_valid:  [B] bool, True where that later frame exists (within the episode), or None
    """

    pixels: torch.Tensor
    view_mask: torch.Tensor
    points: torch.Tensor | None = None
    next_points: torch.Tensor | None = None
    next_valid: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> GeometryInputs:
        return _move(self, torch.device(device))


@dataclass
class Batch:
    """A processed batch: everything a framework's model needs, as tensors.

    vlm:            VLMInputs
    state:          [B, S] float, normalized, or None (no state in the samples or the platform)
    actions:        [B, T, D] float, normalized targets, or None (inference)
    action_is_pad:  [B, T] bool, True at chunk steps past the episode end, or None (inference)
    geometry:       GeometryInputs or None (frameworks without a geometric branch)
    dataset_names:  per sample, the stats that un-normalize its predicted actions
    action_vocab:   number of action tokens decoding may emit (tokenized-action frameworks), else None
    returns:        [B] float, the samples' discounted returns (value-model targets), or None
    is_robot:       [B] bool, False at vision-language samples (question + answer, co-training: their `actions`
                    rows are zeros with `action_is_pad` all True, their `state` rows zeros), or None (all robot)
    action_dim_mask: [B, D] bool, True at each sample's real action dimensions, in a batch mixing embodiments of
                    different action sizes (smaller ones are zero-padded to D: every head's loss skips them), or
                    None when no sample is padded (single-embodiment batches)
    noise:          [B, T, D] float, a flow head's starting noise drawn before a compiled sample_actions
                    (Framework.prepare_sampling), or None: the head draws it from the generator
    """

    vlm: VLMInputs | None  # None only for models without a VLM (ProcessorConfig.vision_language false)
    state: torch.Tensor | None = None
    actions: torch.Tensor | None = None
    action_is_pad: torch.Tensor | None = None
    geometry: GeometryInputs | None = None
    dataset_names: tuple[str, ...] = ()
    action_vocab: int | None = None
    returns: torch.Tensor | None = None
    is_robot: torch.Tensor | None = None
    action_dim_mask: torch.Tensor | None = None
    noise: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        return _move(self, torch.device(device))

    def __len__(self) -> int:
        if self.vlm is None:
            return len(self.dataset_names)
        return int(self.vlm.input_ids.shape[0])
