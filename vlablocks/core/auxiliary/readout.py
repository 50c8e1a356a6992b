"""Readout regression: an auxiliary, deterministic action loss that teaches the VLM to ground the instruction,
for frameworks whose own loss does not (flow matching; FAST tokens). docs/results/toy_results.md gives the evidence.

    prompt = chat(views..., instruction) + <|readout_0|> ... <|readout_{T-1}|>
    VLM    -> hidden states h_t of the T readout tokens [B, T, H] (+ proprio: W_s state, as QwenOFT)
    loss   = mean over valid steps of |f(h_t) - a_t|_1                     (OpenVLA-OFT's L1 objective)
    f(h)   = W h + b                          hidden_dim 0 (the default: a linear readout)
           = W_2 GELU(W_1 h + b_1) + b_2      hidden_dim > 0 (W_1: [hidden_dim, H]; an MLP as QwenOFT's head is)
    total  = the head's loss (flow matching, FAST cross-entropy) + weight * loss      (auxiliary_losses.readout)

Why: a flow-matching head's gradient reaches the VLM weak and noisy (a random noise and time per sample;
and none at all at initialization under adaLN-Zero), so a VLM trained from scratch learns where the blocks
are but not which one the instruction names. The readouts come last in the causal prompt, after the
instruction, so the L1 loss makes the LLM fuse the instruction with the image in them, as QwenOFT's
queries do; the flow head then reads them with the rest of the prompt. `insulate_vlm` (pi0.5's knowledge
insulation) additionally stops the head's gradient at the VLM's outputs: the VLM learns from the readout
loss alone and the head learns to use what it provides.
At inference the readouts are part of the prompt (the head reads them, the FAST answer follows them);
their regression is not used. The state projection is left out (`state_projection: false`, or a framework
that builds it with state_dim 0, as QwenPI05 does: its state is in the prompt).
With a linear f the VLM's last layer must itself write the chunk, a clipped (nonlinear) function of where the puck
and the named block are; with an MLP it only has to carry where they are (QwenPI05's toy recipe,
docs/results/toy_results.md, measures what that does to an insulated VLM's grounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlablocks.core.action_model.masking import masked_mean
from vlablocks.core.auxiliary.base import AuxiliaryInputs, AuxiliaryLoss
from vlablocks.core.registry import AUXILIARY_LOSSES

READOUT_TOKEN_PREFIX = "<|readout_"


@AUXILIARY_LOSSES.register("readout")
class ReadoutRegression(AuxiliaryLoss):
    """T readout tokens closing the prompt and the L1 regression of the action chunk from their hidden states."""

    trains_vlm = True
    predicts_actions = True

    @dataclass(frozen=True)
    class Config:
        name: str = "readout"
        weight: float = 0.0  # w in `total` above; 0: no readout tokens, no parameters
        state_projection: bool = True  # add W_s state to the readout states (as QwenOFT's proprio)
        hidden_dim: int = 0  # 0: a linear readout; > 0: Linear -> GELU -> Linear with this width (as QwenOFT's head)

    def __init__(self, config: Config, *, vlm, platform) -> None:
        super().__init__(config.weight)
        if config.hidden_dim < 0:
            raise ValueError(
                f"auxiliary_losses.readout.hidden_dim must be >= 0 (0: a linear readout), got {config.hidden_dim}"
            )
        self.prompt_tokens = [f"{READOUT_TOKEN_PREFIX}{i}|>" for i in range(platform.action_horizon)]
        self.token_ids = vlm.add_special_tokens(self.prompt_tokens)
        if config.hidden_dim > 0:
            self.proj = nn.Sequential(
                nn.Linear(vlm.hidden_size, config.hidden_dim),
                nn.GELU(),
                nn.Linear(config.hidden_dim, platform.action_dim),
            )
        else:
            self.proj = nn.Linear(vlm.hidden_size, platform.action_dim)
        with_state = config.state_projection and platform.state_dim > 0
        self.proprio = nn.Linear(platform.state_dim, vlm.hidden_size) if with_state else None

    def forward(self, inputs: AuxiliaryInputs) -> torch.Tensor:
        batch = inputs.batch
        return self.regression(
            inputs.vlm_output, batch.actions, batch.action_is_pad, batch.state, batch.action_dim_mask
        )

    def regression(
        self,
        out,
        actions: torch.Tensor,
        action_is_pad: torch.Tensor,
        state: torch.Tensor | None,
        action_dim_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """out: the VLMOutput of a forward that requested `token_ids`; actions: [B, T, D], action_dim_mask: [B, D]
        bool or None -> scalar L1 loss over real steps and dims."""
        positions = torch.cat([out.token_positions[t] for t in self.token_ids], dim=1)  # [B, T]
        index = positions.unsqueeze(-1).expand(-1, -1, out.last_hidden_state.shape[-1])
        hidden = out.last_hidden_state.gather(1, index)
        if self.proprio is not None and state is not None:
            hidden = hidden + self.proprio(state.to(self.proprio.weight.dtype)).to(hidden.dtype).unsqueeze(1)
        predicted = self.proj(hidden.to(next(self.proj.parameters()).dtype))  # a bf16 VLM may feed it outside autocast
        return masked_mean((predicted - actions.to(predicted.dtype)).abs(), action_is_pad, action_dim_mask)
