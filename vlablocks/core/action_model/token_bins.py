"""Action tokens from the VLA's own LM head (OpenVLA / OpenVLA-OFT, as SimpleVLA-RL samples them): `token_bins`.

K reserved tokens <|abin_0|> ... <|abin_{K-1}|> are added to the VLM's vocabulary (where the embedding has more rows
than the tokenizer has tokens, as pretrained Qwen-VL checkpoints do, they take those unused rows first); token k is
bin k of every action dimension. The framework appends Q = T x D action queries, one per action scalar (OFT's
parallel decoding: every scalar in one forward pass), and the LM head, restricted to the K bin tokens, reads each
query's final hidden state h_{t,d} (after the last norm):

    z_{t,d,k}  = W_lm[id(k)] . h_{t,d}                          the LM head's logits of the K bin tokens
    log pi(k)  = log softmax(z_{t,d} / tau)_k                   decoding constrained to the bin tokens, at tau

Bins, greedy decoding, the SFT cross-entropy (one-hot or HL-Gauss) and RL's `sample` / `evaluate` are the binned
head's (binned.py), so QwenOFT serves it, trains it by SFT and hands it to `vlablocks rl` unchanged. This head owns
no weights: the logits are the VLM's (its LM head, tied to the input embeddings where the VLM ties them). Under LoRA
(peft's all-linear never wraps the LM head) the bin rows stay frozen and the adapters move the hidden states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlablocks.core.action_model.base import ActionHead, Conditioning
from vlablocks.core.action_model.binned import BinnedActionHead
from vlablocks.core.registry import ACTION_MODELS


@ACTION_MODELS.register("token_bins")
class TokenBinsHead(BinnedActionHead):
    """K bins per action scalar as K reserved tokens of the VLM's vocabulary, scored by its LM head."""

    @dataclass(frozen=True)
    class Config:
        name: str = "token_bins"
        num_bins: int = 256
        low: float = -1.0  # the normalized action range the bins tile; targets outside are clipped to it
        high: float = 1.0
        label_sigma: float = 0.0  # > 0: HL-Gauss targets with this sigma in bin widths
        token_prefix: str = "<|abin_"  # bin k is the token f"{token_prefix}{k}|>"

    def __init__(self, config: Config, *, action_horizon: int, action_dim: int, state_dim: int, cond_dim: int) -> None:
        if config.num_bins < 2 or not config.high > config.low or config.label_sigma < 0:
            raise ValueError(
                f"token_bins: need num_bins >= 2, high > low and label_sigma >= 0, got num_bins={config.num_bins}, "
                f"low={config.low}, high={config.high}, label_sigma={config.label_sigma}"
            )
        ActionHead.__init__(  # not the binned head's MLP: the logits are the LM head's
            self, config, action_horizon=action_horizon, action_dim=action_dim, state_dim=state_dim, cond_dim=cond_dim
        )
        self.num_bins = config.num_bins
        width = (config.high - config.low) / config.num_bins
        self.register_buffer("centres", config.low + width * (torch.arange(config.num_bins) + 0.5), persistent=False)
        self.register_buffer("bin_token_ids", torch.zeros(0, dtype=torch.long), persistent=False)
        self.__dict__["_vlm"] = None  # the backbone whose LM head scores the bins; not a submodule (its own weights)

    @property
    def num_query_tokens(self) -> int:
        """Q = T x D: one action query per action scalar (OFT)."""
        return self.action_horizon * self.action_dim

    def bind_vlm(self, vlm) -> None:
        """Adds the K bin tokens to `vlm`'s vocabulary and scores them with its LM head from now on."""
        ids = vlm.add_special_tokens([f"{self.config.token_prefix}{k}|>" for k in range(self.num_bins)])
        self.bin_token_ids = torch.tensor(ids, dtype=torch.long, device=self.centres.device)
        self.__dict__["_vlm"] = vlm

    def logits(self, conditioning: Conditioning, state: torch.Tensor | None = None) -> torch.Tensor:
        """conditioning.tokens: the Q = T x D query states [B, Q, H] -> the bin tokens' logits [B, T, D, K] (fp32)."""
        vlm = self.__dict__["_vlm"]
        if vlm is None:
            raise ValueError("token_bins reads the VLM's LM head: use it under QwenOFT (framework.action_model)")
        tokens = conditioning.tokens
        if tokens.ndim != 3 or tokens.shape[1] != self.num_query_tokens:
            raise ValueError(
                f"token_bins: conditioning.tokens must be the {self.num_query_tokens} action-query states "
                f"[B, T x D, H], got {list(tokens.shape)}"
            )
        rows = vlm.model.get_output_embeddings().weight[self.bin_token_ids]  # [K, H]
        logits = F.linear(tokens.float(), rows.float())  # [B, Q, K]
        return logits.reshape(tokens.shape[0], self.action_horizon, self.action_dim, self.num_bins)
