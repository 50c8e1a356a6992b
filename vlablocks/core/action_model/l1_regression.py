"""L1 regression head (OpenVLA-OFT parallel decoding): action-query hidden states -> MLP-ResNet -> actions.

The framework appends `num_query_tokens` = action_horizon * tokens_per_step learnable query tokens to
the prompt and passes their last hidden states as conditioning.tokens [B, Q, H]. Consecutive groups of
`tokens_per_step` queries belong to one chunk step: [B, Q, H] -> [B, T, tokens_per_step * H] -> the
MLP-ResNet (shared over steps) -> [B, T, D]. OpenVLA-OFT uses one query per action scalar
(tokens_per_step = D); the default is one query per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlablocks.core.action_model.base import ActionHead, Conditioning
from vlablocks.core.action_model.masking import masked_mean
from vlablocks.core.action_model.mlp_resnet import MLPResNet
from vlablocks.core.registry import ACTION_MODELS


@ACTION_MODELS.register("l1_regression")
class L1RegressionHead(ActionHead):
    """L1 regression from action-query hidden states (OpenVLA-OFT): one pass, MLP-ResNet, L1 loss."""

    @dataclass(frozen=True)
    class Config:
        name: str = "l1_regression"
        hidden_dim: int = 256
        num_blocks: int = 2  # MLP-ResNet residual blocks
        tokens_per_step: int = 1  # query tokens per chunk step (Q = action_horizon * tokens_per_step)
        use_state: bool = False  # condition every step on the state (FiLM; when the VLM did not see it)

    def __init__(self, config: Config, *, action_horizon: int, action_dim: int, state_dim: int, cond_dim: int) -> None:
        super().__init__(
            config, action_horizon=action_horizon, action_dim=action_dim, state_dim=state_dim, cond_dim=cond_dim
        )
        if config.tokens_per_step < 1 or config.num_blocks < 0:
            raise ValueError(
                f"{config.name}: need tokens_per_step >= 1 and num_blocks >= 0, "
                f"got {config.tokens_per_step}, {config.num_blocks}"
            )
        self.uses_state = config.use_state and state_dim > 0
        condition_dim = state_dim if self.uses_state else 0
        self.mlp = MLPResNet(
            config.tokens_per_step * cond_dim, config.hidden_dim, self.output_dim, config.num_blocks, condition_dim
        )

    @property
    def output_dim(self) -> int:
        """Outputs per chunk step: D here; a subclass reading more per step (e.g. D x K bin logits) says so."""
        return self.action_dim

    @property
    def num_query_tokens(self) -> int:
        """Q: how many action-query tokens the framework must provide."""
        return self.action_horizon * self.config.tokens_per_step

    def forward(self, conditioning: Conditioning, state: torch.Tensor | None = None) -> torch.Tensor:
        """conditioning.tokens: [B, Q, H] -> actions [B, T, D] (`output_dim` values per step)"""
        tokens = conditioning.tokens
        expected = [self.num_query_tokens, self.cond_dim]
        if tokens.ndim != 3 or list(tokens.shape[1:]) != expected:
            raise ValueError(
                f"{self.config.name}: conditioning.tokens must be the action-query hidden states [B, {expected[0]}, "
                f"{expected[1]}] (action_horizon x tokens_per_step queries), got {list(tokens.shape)}"
            )
        grouped = tokens.reshape(tokens.shape[0], self.action_horizon, -1).to(self.mlp.fc_in.weight.dtype)
        condition = None
        if self.uses_state:
            if state is None or state.shape != (tokens.shape[0], self.state_dim):
                got = None if state is None else list(state.shape)
                raise ValueError(f"{self.config.name}: use_state needs state [B, {self.state_dim}], got {got}")
            condition = state.to(grouped.dtype).unsqueeze(1)  # [B, 1, S]: the same state for every step
        return self.mlp(grouped, condition)

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
        """Mean |prediction - actions| over valid steps and real dims. actions: [B, T, D], action_is_pad: [B, T],
        action_dim_mask: [B, D] or None -> {"loss"}"""
        self.check_batch(actions, action_is_pad, state, action_dim_mask)
        predicted = self(conditioning, state)
        error = (predicted - actions.to(predicted.dtype)).abs()
        return {"loss": masked_mean(error, action_is_pad, action_dim_mask)}

    def predict(
        self, conditioning: Conditioning, state: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """-> normalized actions [B, T, D] (deterministic; `generator` is unused)."""
        return self(conditioning, state)
