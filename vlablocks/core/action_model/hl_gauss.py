"""HL-Gauss: cross-entropy against a Gaussian smeared over ordered bins (Imani & White, 2018; Farebrother et
al., "Stop Regressing", 2024), for any quantity predicted as a class over ordered bins (FAST coefficients
without BPE merges, values).

For a target y and bins j = 0 .. K-1 with edges [e_j, e_{j+1}), the target distribution is the mass of
N(y, sigma^2) in each bin, renormalized over the K bins:

    p_j = (Phi((e_{j+1} - y) / sigma) - Phi((e_j - y) / sigma)) / (Phi((e_K - y) / sigma) - Phi((e_0 - y) / sigma))

and the loss is -sum_j p_j log q_j for the predicted distribution q. With unit-width bins centred on the
integers (e_j = j - 1/2) and sigma = 0.75 bin widths (the paper's recommendation), neighbouring bins share
the label: predicting 5 when 6 is right costs less than predicting 0, which a one-hot target cannot say.
"""

from __future__ import annotations

import math

import torch


def hl_gauss_targets(values: torch.Tensor, num_bins: int, sigma: float) -> torch.Tensor:
    """values: [N] targets in bin units (bin j spans [j - 1/2, j + 1/2)) -> [N, num_bins] probabilities."""
    if sigma <= 0 or num_bins < 1:
        raise ValueError(f"hl_gauss_targets needs sigma > 0 and num_bins >= 1, got {sigma}, {num_bins}")
    edges = torch.arange(num_bins + 1, device=values.device, dtype=torch.float64) - 0.5
    cdf = 0.5 * (1 + torch.erf((edges[None, :] - values.double()[:, None]) / (sigma * math.sqrt(2))))
    mass = cdf[:, 1:] - cdf[:, :-1]
    return (mass / (cdf[:, -1:] - cdf[:, :1])).to(torch.float32)
