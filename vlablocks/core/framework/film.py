"""FiLM of vision features by the instruction (OpenVLA-OFT): on the merged vision tokens before the LLM (a
`vision_hook`, `film: vision_tokens`) or inside every vision-transformer block (OFT+'s, `film: vision_blocks`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

from vlablocks.core.partitioned import whole


class InstructionFiLM(nn.Module):
    """image_embeds [N, H] -> image_embeds * (1 + gamma) + beta, (gamma, beta) from the mean instruction embedding.

    Zero-initialised, so it starts as the identity and the backbone's features are untouched at step 0.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.to_scale_shift = nn.Linear(hidden_size, 2 * hidden_size)
        with whole(self.to_scale_shift):  # partitioned already under ZeRO-3 (vlablocks/core/partitioned.py)
            nn.init.zeros_(self.to_scale_shift.weight)
            nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, image_embeds: torch.Tensor, info, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """image_embeds [N, H], info: the VLM's VisionHookInfo; pooled [B, H] the instruction embedding (QwenOFT passes
        `instruction_embedding`'s), else the mean embedding of every real non-vision token of info."""
        if pooled is None:
            text = info.attention_mask.bool() & ~info.vision_mask  # [B, L] real, non-vision tokens
            weights = text.unsqueeze(-1).to(info.text_embeds.dtype)
            pooled = (info.text_embeds * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # [B, H]
        # In the layer's own dtype (a bf16 VLM feeds this fp32 layer outside autocast), back to the embeddings'.
        scale_shift = self.to_scale_shift(pooled.to(self.to_scale_shift.weight.dtype)).to(image_embeds.dtype)
        gamma, beta = scale_shift.chunk(2, dim=-1)
        sample = info.batch_index  # [N] sample of each vision token
        return image_embeds * (1 + gamma[sample]) + beta[sample]


def instruction_embedding(vlm, inputs, excluded_ids: list[int]) -> torch.Tensor:
    """The mean input embedding of each sample's prompt text: real, non-vision tokens that are not a training answer
    (labels != -100: a co-training VL row's teacher-forced answer must not condition the vision features it is
    asked about) nor one of `excluded_ids` (action queries, the proprio token). -> [B, H]"""
    ids = inputs.input_ids
    embeds = vlm.model.get_input_embeddings().weight[ids]  # the table's rows: no input hook applies here
    text = inputs.attention_mask.bool() & (ids != vlm.image_token_id)
    text &= ~torch.isin(ids, torch.tensor(excluded_ids, dtype=ids.dtype, device=ids.device))
    if inputs.labels is not None:
        text &= inputs.labels == -100
    weights = text.unsqueeze(-1).to(embeds.dtype)
    return (embeds * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def patch_samples(inputs, merge_size: int) -> torch.Tensor:
    """The sample of every vision-tower patch, [P] long: images are packed in sample order, t * h * w patches each
    (Qwen2.5-VL's window reordering stays within an image, so the ranges hold inside every block). From the
    precomputed layout's host ints when the inputs carry one (a compiled call: no shape that depends on a value)."""
    layout = inputs.layout
    if layout is not None:
        view_sample = [b for b, views in enumerate(layout.views_per_sample) for _ in range(views)]
        patches = [count * merge_size**2 for count in layout.view_token_counts]  # merged tokens -> tower patches
        index = [sample for sample, count in zip(view_sample, patches) for _ in range(count)]
        return torch.tensor(index, dtype=torch.long, device=inputs.image_grid_thw.device)
    per_image = inputs.image_grid_thw.prod(-1)
    image_sample = torch.repeat_interleave(
        torch.arange(len(inputs.views_per_sample), device=per_image.device),
        inputs.views_per_sample.to(per_image.device),
    )
    return torch.repeat_interleave(image_sample, per_image)


class VisionBlockFiLM(nn.Module):
    """OpenVLA-OFT+'s FiLM inside the vision transformer, where OFT puts it: in every block l, between the attention
    and the MLP, on the residual stream,

        y = x + Attn(norm1(x));    y <- y * (1 + gamma_l[b(p)]) + beta_l[b(p)];    out = y + MLP(norm2(y))
        [gamma_l, beta_l] = W_l e_b + c_l

    with e_b [H] the instruction embedding of sample b (`instruction_embedding`), b(p) the sample of patch p, and
    W_l, c_l zero-initialised (every block starts as itself). `framework.film: vision_blocks` in QwenOFT. The
    hooks: the block's input x is kept, and the attention's output a is replaced by (x + a)(1 + gamma) + beta - x.
    """

    def __init__(self, text_dim: int, vision_dim: int, num_blocks: int) -> None:
        super().__init__()
        self.to_scale_shift = nn.ModuleList(nn.Linear(text_dim, 2 * vision_dim) for _ in range(num_blocks))
        with whole(self.to_scale_shift):
            for layer in self.to_scale_shift:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    @contextmanager
    def applied(self, vlm, inputs, pooled: torch.Tensor) -> Iterator[None]:
        """Within the block, every vision block of `vlm` is FiLM-ed for these inputs (hooks removed on exit).
        pooled: [B, H] the instruction embedding of each sample."""
        blocks = vlm.model.model.visual.blocks
        if len(blocks) != len(self.to_scale_shift):
            raise ValueError(f"VisionBlockFiLM has {len(self.to_scale_shift)} layers for {len(blocks)} vision blocks")
        samples = patch_samples(inputs, vlm.merge_size)
        handles = []
        for block, layer in zip(blocks, self.to_scale_shift):
            kept: dict[str, torch.Tensor] = {}
            handles.append(block.register_forward_pre_hook(partial(self._keep_input, kept)))
            handles.append(block.attn.register_forward_hook(partial(self._modulate, layer, pooled, samples, kept)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @staticmethod
    def _keep_input(kept: dict, module, args) -> None:
        kept["x"] = args[0]

    @staticmethod
    def _modulate(layer: nn.Linear, pooled, samples, kept: dict, module, args, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"VisionBlockFiLM expects a vision attention returning a tensor, got {type(output).__name__}"
            )
        residual = kept["x"]
        gamma, beta = layer(pooled.to(layer.weight.dtype)).to(output.dtype).chunk(2, dim=-1)  # [B, C] each
        filmed = (residual + output) * (1 + gamma[samples]) + beta[samples]
        return filmed - residual
