"""FiLM of vision tokens by the instruction (OpenVLA-OFT): a `vision_hook` for the VLM backbone."""

from __future__ import annotations

import torch
from torch import nn


class InstructionFiLM(nn.Module):
    """image_embeds [N, H] -> image_embeds * (1 + gamma) + beta, (gamma, beta) from the mean instruction embedding.

    Zero-initialised, so it starts as the identity and the backbone's features are untouched at step 0.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.to_scale_shift = nn.Linear(hidden_size, 2 * hidden_size)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, image_embeds: torch.Tensor, info) -> torch.Tensor:
        text = info.attention_mask.bool() & ~info.vision_mask  # [B, L] real, non-vision tokens
        weights = text.unsqueeze(-1).to(info.text_embeds.dtype)
        pooled = (info.text_embeds * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # [B, H]
        # In the layer's own dtype (a bf16 VLM feeds this fp32 layer outside autocast), back to the embeddings'.
        scale_shift = self.to_scale_shift(pooled.to(self.to_scale_shift.weight.dtype)).to(image_embeds.dtype)
        gamma, beta = scale_shift.chunk(2, dim=-1)
        sample = info.batch_index  # [N] sample of each vision token
        return image_embeds * (1 + gamma[sample]) + beta[sample]
