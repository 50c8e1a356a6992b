"""MLP-ResNet: the residual MLP of OpenVLA-OFT's regression and diffusion heads, with optional FiLM."""

from __future__ import annotations

import torch
from torch import nn

from vlablocks.core.partitioned import whole


class MLPResNetBlock(nn.Module):
    """x + ReLU(Linear(FiLM(LayerNorm(x)))). x: [..., hidden_dim], condition: [..., condition_dim]

    FiLM (feature-wise scale and shift from a condition) starts at zero, so an unconditioned block
    is recovered at init; the multiplicative path lets e.g. a diffusion timestep rescale features.
    """

    def __init__(self, hidden_dim: int, condition_dim: int = 0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim)
        self.linear = nn.Linear(hidden_dim, hidden_dim)
        self.film = None
        if condition_dim > 0:
            self.film = nn.Linear(condition_dim, 2 * hidden_dim)
            with whole(self.film):  # partitioned already under ZeRO-3 (vlablocks/core/partitioned.py)
                nn.init.zeros_(self.film.weight)
                nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(x)
        if self.film is not None:
            scale, shift = self.film(condition).chunk(2, dim=-1)
            h = h * (1 + scale) + shift
        return x + torch.relu(self.linear(h))


class MLPResNet(nn.Module):
    """LayerNorm -> Linear -> ReLU -> residual blocks -> LayerNorm -> Linear.

    x: [..., input_dim] -> [..., output_dim]. With condition_dim > 0, `condition` ([..., condition_dim],
    broadcastable against x) is added to the first hidden layer (through a projection) and FiLM-modulates
    every residual block.
    """

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_blocks: int, condition_dim: int = 0
    ) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(input_dim)
        self.fc_in = nn.Linear(input_dim, hidden_dim)
        self.condition_in = nn.Linear(condition_dim, hidden_dim) if condition_dim > 0 else None
        self.blocks = nn.ModuleList(MLPResNetBlock(hidden_dim, condition_dim) for _ in range(num_blocks))
        self.norm_out = nn.LayerNorm(hidden_dim)
        self.fc_out = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if (condition is None) != (self.condition_in is None):
            raise ValueError("MLPResNet: pass a condition exactly when built with condition_dim > 0")
        h = self.fc_in(self.norm_in(x))
        if condition is not None:
            h = h + self.condition_in(condition)
        h = torch.relu(h)
        for block in self.blocks:
            h = block(h, condition)
        return self.fc_out(self.norm_out(h))
