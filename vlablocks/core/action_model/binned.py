"""Binned action head (OpenVLA-style, parallel-decoded): every action scalar a categorical over K bins.

The action-query hidden states [B, Q, H] go through the same MLP-ResNet as the L1 head, which here reads
D x K logits per chunk step: [B, T, D, K], all T x D distributions in one pass. Bin k of K covers
[low + k w, low + (k + 1) w) with w = (high - low) / K on the normalized action range (q99 normalization
maps the data to [-1, 1]); a bin decodes to its centre, so the quantization error is at most w / 2.

    SFT loss      L = -(1 / |valid|) sum_{t valid, d} sum_k p_{t,d,k} log softmax(z_{t,d})_k
                  p = one-hot of the target's bin, or HL-Gauss over the bins (`label_sigma` > 0, in bin widths)
    greedy        a_{t,d} = centre(argmax_k z_{t,d,k})                                 (`predict`, serving)
    sampling      k ~ Categorical(softmax(z_{t,d} / tau)),  log pi(k) = log softmax(z_{t,d} / tau)_k
                  (`sample`, RL rollouts; the same tau is used again when the update recomputes log pi)

The log-probabilities and entropies are per action scalar [B, T, D]: an RL update takes a ratio per scalar
(token-level PPO), a whole-chunk log-probability is their sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlablocks.core.action_model.base import Conditioning
from vlablocks.core.action_model.hl_gauss import hl_gauss_targets
from vlablocks.core.action_model.l1_regression import L1RegressionHead
from vlablocks.core.action_model.masking import masked_mean, valid_scalars
from vlablocks.core.registry import ACTION_MODELS
from vlablocks.core.vlm.runtime import tempered_log_probs


@ACTION_MODELS.register("binned")
class BinnedActionHead(L1RegressionHead):
    """Categorical over `num_bins` bins per action scalar from action-query hidden states; exact log-probs."""

    @dataclass(frozen=True)
    class Config:
        name: str = "binned"
        num_bins: int = 256
        low: float = -1.0  # the normalized action range the bins tile; targets outside are clipped to it
        high: float = 1.0
        label_sigma: float = 0.0  # > 0: HL-Gauss targets with this sigma in bin widths (0.75 is the paper's)
        hidden_dim: int = 256
        num_blocks: int = 2
        tokens_per_step: int = 1
        use_state: bool = False

    def __init__(self, config: Config, *, action_horizon: int, action_dim: int, state_dim: int, cond_dim: int) -> None:
        if config.num_bins < 2 or not config.high > config.low or config.label_sigma < 0:
            raise ValueError(
                f"binned: need num_bins >= 2, high > low and label_sigma >= 0, got num_bins={config.num_bins}, "
                f"low={config.low}, high={config.high}, label_sigma={config.label_sigma}"
            )
        self.num_bins = config.num_bins  # read by output_dim while the parent builds the MLP
        super().__init__(
            config, action_horizon=action_horizon, action_dim=action_dim, state_dim=state_dim, cond_dim=cond_dim
        )
        width = (config.high - config.low) / config.num_bins
        self.register_buffer("centres", config.low + width * (torch.arange(config.num_bins) + 0.5), persistent=False)

    @property
    def output_dim(self) -> int:
        return self.action_dim * self.num_bins

    # ---- the distribution ----------------------------------------------------------------------------
    def logits(self, conditioning: Conditioning, state: torch.Tensor | None = None) -> torch.Tensor:
        """-> bin logits [B, T, D, K] (float32)"""
        flat = super().forward(conditioning, state).float()
        return flat.reshape(*flat.shape[:2], self.action_dim, self.num_bins)

    def to_bins(self, actions: torch.Tensor) -> torch.Tensor:
        """Normalized actions [...] -> bin indices [...] long (clipped to the range)."""
        c = self.config
        scaled = (actions.float() - c.low) / (c.high - c.low) * c.num_bins
        return scaled.floor().clamp(0, c.num_bins - 1).long()

    def to_actions(self, bins: torch.Tensor) -> torch.Tensor:
        """Bin indices [...] -> normalized actions [...] (bin centres)."""
        return self.centres[bins]

    def forward(self, conditioning: Conditioning, state: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy decoding: -> normalized actions [B, T, D]."""
        return self.to_actions(self.logits(conditioning, state).argmax(-1))

    # ---- supervised training -------------------------------------------------------------------------
    def compute_loss(
        self,
        conditioning: Conditioning,
        actions: torch.Tensor,
        action_is_pad: torch.Tensor,
        state: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        action_dim_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Cross-entropy over the bins of every valid action scalar (real step, real dim) -> {"loss", "bin_accuracy"}"""
        self.check_batch(actions, action_is_pad, state, action_dim_mask)
        log_probs = self.logits(conditioning, state).log_softmax(-1)  # [B, T, D, K]
        valid = valid_scalars(action_is_pad, action_dim_mask, actions.shape[-1])
        bins = self.to_bins(actions.masked_fill(~valid, 0.0))  # padded steps and dims may hold anything, even NaN
        if self.config.label_sigma > 0:
            targets = hl_gauss_targets(bins.flatten().float(), self.num_bins, self.config.label_sigma)
            per_scalar = -(targets.reshape(log_probs.shape) * log_probs).sum(-1)
        else:
            per_scalar = -log_probs.gather(-1, bins.unsqueeze(-1)).squeeze(-1)
        accuracy = (log_probs.argmax(-1) == bins).float()
        return {
            "loss": masked_mean(per_scalar, action_is_pad, action_dim_mask),
            "bin_accuracy": masked_mean(accuracy, action_is_pad, action_dim_mask),
        }

    def predict(
        self, conditioning: Conditioning, state: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """-> normalized actions [B, T, D], greedy (deterministic; `generator` is unused)."""
        return self(conditioning, state)

    # ---- sampling with log-probabilities (RL) ---------------------------------------------------------
    def sample(
        self,
        conditioning: Conditioning,
        state: torch.Tensor | None,
        temperature: float,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """-> {"actions": normalized [B, T, D], "bins": [B, T, D] long, "log_probs": [B, T, D]} at `temperature`."""
        log_probs = tempered_log_probs(self.logits(conditioning, state), temperature)
        flat = log_probs.exp().reshape(-1, self.num_bins)
        bins = torch.multinomial(flat, 1, generator=generator).reshape(log_probs.shape[:-1])
        chosen = log_probs.gather(-1, bins.unsqueeze(-1)).squeeze(-1)
        return {"actions": self.to_actions(bins), "bins": bins, "log_probs": chosen}

    def evaluate(
        self, conditioning: Conditioning, state: torch.Tensor | None, bins: torch.Tensor, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """bins: [B, T, D] -> (log pi(bins) [B, T, D], entropy [B, T, D]) at `temperature`, differentiable."""
        log_probs = tempered_log_probs(self.logits(conditioning, state), temperature)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return log_probs.gather(-1, bins.unsqueeze(-1)).squeeze(-1), entropy
