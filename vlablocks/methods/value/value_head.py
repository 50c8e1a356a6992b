"""The value head: features [B, F] -> a scalar value, trained by regression (MSE) or HL-Gauss cross-entropy.

MSE:       v = w . MLP(x),                 loss = mean_b (v_b - G_b)^2
HL-Gauss:  logits z = MLP(x) in R^K over K bins whose centres c_j = v_min + j w, w = (v_max - v_min) / (K - 1),
           span the range (so v_min and v_max themselves, e.g. a failure's return 0, are bin centres); the
           target of a return G is the mass of N(G, s^2), s = sigma_ratio * w, in each bin [e_j, e_{j+1}),
           e_j = c_j - w / 2, renormalized over the K bins (action_model/hl_gauss.py):
               p_j(G) = (Phi((e_{j+1} - G) / s) - Phi((e_j - G) / s)) / (Phi((e_K - G) / s) - Phi((e_0 - G) / s))
           loss = mean_b -sum_j p_j(G_b) log softmax(z_b)_j;  value v = sum_j softmax(z)_j c_j.
           Farebrother et al. 2024 ("Stop Regressing") recommend sigma_ratio = 0.75, the default here.
Returns outside [v_min, v_max] are clipped to it before HL-Gauss binning (the bins cannot represent them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlablocks.core.action_model.hl_gauss import hl_gauss_targets


@dataclass(frozen=True)
class ValueHeadConfig:
    loss: Literal["mse", "hl_gauss"] = "hl_gauss"
    num_bins: int = 51
    v_min: float = 0.0
    v_max: float = 1.0
    sigma_ratio: float = 0.75  # HL-Gauss sigma as a fraction of the bin width
    hidden_dim: int = 256


class ValueHead(nn.Module):
    """features: [B, F] -> {"value": [B]} and, with targets, the loss."""

    def __init__(self, config: ValueHeadConfig, in_dim: int) -> None:
        super().__init__()
        if config.v_max <= config.v_min or config.num_bins < 2 or config.sigma_ratio <= 0:
            raise ValueError(
                f"value head: need v_max > v_min, num_bins >= 2 and sigma_ratio > 0; got v_min={config.v_min}, "
                f"v_max={config.v_max}, num_bins={config.num_bins}, sigma_ratio={config.sigma_ratio}"
            )
        self.config = config
        outputs = config.num_bins if config.loss == "hl_gauss" else 1
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, config.hidden_dim),
            nn.GELU(),
            nn.Linear(config.hidden_dim, config.hidden_dim),
            nn.GELU(),
            nn.Linear(config.hidden_dim, outputs),
        )
        width = (config.v_max - config.v_min) / (config.num_bins - 1)
        self.register_buffer("centres", config.v_min + width * torch.arange(config.num_bins), persistent=False)

    @property
    def bin_width(self) -> float:
        return (self.config.v_max - self.config.v_min) / (self.config.num_bins - 1)

    def targets(self, returns: torch.Tensor) -> torch.Tensor:
        """returns: [B] -> HL-Gauss target histograms [B, K] (each sums to 1)."""
        clipped = returns.float().clamp(self.config.v_min, self.config.v_max)
        in_bins = (clipped - self.config.v_min) / self.bin_width  # bin j spans [j - 1/2, j + 1/2) in these units
        return hl_gauss_targets(in_bins, self.config.num_bins, self.config.sigma_ratio).to(returns.device)

    def forward(self, features: torch.Tensor, returns: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self.mlp(features.float())
        if self.config.loss == "mse":
            value = out.squeeze(-1)
            result = {"value": value}
            if returns is not None:
                result["loss"] = F.mse_loss(value, returns.float())
            return result
        log_probs = out.log_softmax(-1)
        result = {"value": (log_probs.exp() * self.centres).sum(-1), "log_probs": log_probs}
        if returns is not None:
            result["loss"] = -(self.targets(returns) * log_probs).sum(-1).mean()
        return result
