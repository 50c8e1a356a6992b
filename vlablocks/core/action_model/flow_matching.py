"""Flow-matching DiT action head (GR00T / pi0 style).

Time convention (used by this head, `layerwise_flow_matching` and `euler_integrate`):
    t in [0, 1]; t = 0 is pure noise, t = 1 is data.
    x_t = (1 - t) * noise + t * actions          target velocity v = actions - noise
    training time: t = time_max * (1 - u), u ~ Beta(time_beta_alpha, time_beta_beta) (Beta(1.5, 1) by
    default puts most mass at u near 1, i.e. at the noisy end, like pi0 and GR00T); time_max = 0.999
    keeps t away from 1 where the target is ill-conditioned.
    sampling: x_0 ~ N(0, I), Euler from t = 0 to t = 1 in `num_inference_steps` equal steps,
    x_{k+1} = x_k + dt * v(x_k, t_k), t_k = k * dt.

Inversion (rectified-flow inversion, `invert` / `reconstruct`): the same ODE run backwards. With S steps of
h = 1 / S, t_k = 1 - k h,
    invert:       x_{k+1} = x_k - h * v(x_k, t_k),  x_0 = actions          -> noise z = x_S   (t = 1 -> 0)
    reconstruct:  x_{k+1} = x_k + h * v(x_k, k h),  x_0 = z                -> actions x_S      (t = 0 -> 1)
(explicit Euler both ways, the velocity read at the current time), so reconstruct(invert(a)) = a + O(h).

The VLM context is encoded once per call (`encode_context`: projection, optional 2-D position
encoding, per-block cross-attention keys/values) and reused by every integration step (`sample`) and
by every repeated noise draw of the loss (`repeated_diffusion_steps`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special
from torch import nn

from vlablocks.core.action_model.base import ActionHead, Conditioning
from vlablocks.core.action_model.context import ContextEncoder, ContextPositionEncoding, context_mask
from vlablocks.core.action_model.dit import BlockContext, DiTBlock, DiTOutput, TimestepEncoder
from vlablocks.core.action_model.masking import hold_last_valid, masked_mean
from vlablocks.core.registry import ACTION_MODELS

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def euler_integrate(
    velocity: Velocity, x: torch.Tensor, num_steps: int, t_start: float = 0.0, t_end: float = 1.0
) -> torch.Tensor:
    """Integrates dx/dt = velocity(x, t) with `num_steps` explicit Euler steps.

    x: [B, ...] at t_start; velocity(x [B, ...], t [B]) -> [B, ...]; returns x at t_end.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    dt = (t_end - t_start) / num_steps
    for step in range(num_steps):
        t = torch.full((x.shape[0],), t_start + step * dt, device=x.device, dtype=x.dtype)
        x = x + dt * velocity(x, t)
    return x


def random_tensor(
    kind: str, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """torch.rand / torch.randn drawn on the generator's device (so any seeded generator works)."""
    draw = torch.rand if kind == "uniform" else torch.randn
    source_device = generator.device if generator is not None else device
    return draw(shape, generator=generator, device=source_device).to(device=device, dtype=dtype)


def sample_beta(
    alpha: float, beta: float, n: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """n draws of Beta(alpha, beta) by inverse CDF of seeded uniforms (torch's Beta takes no generator).

    Closed forms when alpha or beta is 1 (the default Beta(1.5, 1): u ** (1 / 1.5)); scipy otherwise.
    """
    u = random_tensor("uniform", (n,), generator, device, torch.float64)
    if beta == 1.0:
        return u.pow(1.0 / alpha)
    if alpha == 1.0:
        return 1.0 - (1.0 - u).pow(1.0 / beta)
    return torch.from_numpy(np.asarray(special.betaincinv(alpha, beta, u.cpu().numpy()))).to(device)


@ACTION_MODELS.register("flow_matching")
class FlowMatchingHead(ActionHead):
    """Flow-matching DiT (GR00T/pi0 style): cross-attends to VLM tokens, Beta time, Euler sampling."""

    @dataclass(frozen=True)
    class Config:
        name: str = "flow_matching"
        hidden_dim: int = 512  # DiT width
        num_layers: int = 6  # DiT blocks
        num_heads: int = 8
        mlp_ratio: float = 4.0
        use_state: bool = True  # prepend a state token to the action tokens (when state_dim > 0)
        num_inference_steps: int = 10  # Euler steps
        repeated_diffusion_steps: int = 4  # noise/time draws per sample in the loss
        time_beta_alpha: float = 1.5
        time_beta_beta: float = 1.0
        time_max: float = 0.999
        context_position_encoding: ContextPositionEncoding = "none"  # or "sincos2d" at vision tokens
        cross_attention_gate_init: float = 0.0  # 0: adaLN-Zero; 1: every block reads the VLM from step one

    concat_cross_context = False  # see LayerwiseFlowMatchingHead

    def __init__(self, config: Config, *, action_horizon: int, action_dim: int, state_dim: int, cond_dim: int) -> None:
        super().__init__(
            config, action_horizon=action_horizon, action_dim=action_dim, state_dim=state_dim, cond_dim=cond_dim
        )
        self._check_config(config)
        hidden = config.hidden_dim
        self.context_encoders = nn.ModuleList(
            ContextEncoder(cond_dim, hidden, config.context_position_encoding)
            for _ in range(self.num_context_encoders())
        )
        self.time_encoder = TimestepEncoder(hidden, scale=1000.0)  # t in [0, 1] -> sinusoid steps
        self.action_encoder = nn.Sequential(nn.Linear(action_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.state_encoder = None
        if config.use_state and state_dim > 0:
            self.state_encoder = nn.Sequential(nn.Linear(state_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        num_tokens = action_horizon + (1 if self.state_encoder is not None else 0)
        self.position = nn.Parameter(torch.randn(1, num_tokens, hidden) * 0.02)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden, config.num_heads, config.mlp_ratio, config.cross_attention_gate_init)
            for _ in range(config.num_layers)
        )
        self.output = DiTOutput(hidden, action_dim)

    def _check_config(self, config: Config) -> None:
        name = config.name
        if config.num_layers < 1 or config.num_inference_steps < 1 or config.repeated_diffusion_steps < 1:
            raise ValueError(
                f"{name}: num_layers, num_inference_steps and repeated_diffusion_steps must be >= 1, got "
                f"{config.num_layers}, {config.num_inference_steps}, {config.repeated_diffusion_steps}"
            )
        if config.time_beta_alpha <= 0 or config.time_beta_beta <= 0 or not 0 < config.time_max <= 1:
            raise ValueError(
                f"{name}: need time_beta_alpha > 0, time_beta_beta > 0 and 0 < time_max <= 1, got "
                f"{config.time_beta_alpha}, {config.time_beta_beta}, {config.time_max}"
            )

    def num_context_encoders(self) -> int:
        """One projection shared by all blocks (the layerwise head has one per block)."""
        return 1

    # ------------------------------------------------------------------------------------------
    # Pieces a framework may call directly.

    def encode_context(self, conditioning: Conditioning) -> list[BlockContext]:
        """Per-block cross-attention keys/values of conditioning.tokens [B, L, cond_dim]; compute once, reuse."""
        tokens = self.context_encoders[0](conditioning.tokens, conditioning)
        mask = context_mask(conditioning, tokens)
        return [block.context(tokens, mask) for block in self.blocks]

    def encode_state(self, state: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
        """state: [B, S] -> state token [B, 1, hidden] (None when the head uses no state)."""
        if self.state_encoder is None:
            return None
        if state is None:
            raise ValueError(
                f"{self.config.name}: use_state is true and state_dim={self.state_dim}, so state [B, S] is required; "
                "pass state or set use_state: false"
            )
        if state.shape != (batch_size, self.state_dim):
            raise ValueError(
                f"{self.config.name}: state must be [{batch_size}, {self.state_dim}], got {list(state.shape)}"
            )
        return self.state_encoder(state.to(self.position.dtype)).unsqueeze(1)

    def velocity(
        self, contexts: list[BlockContext], x_t: torch.Tensor, t: torch.Tensor, state_token: torch.Tensor | None
    ) -> torch.Tensor:
        """Predicted velocity. x_t: [B, T, D], t: [B] in [0, 1], state_token: [B, 1, hidden] -> [B, T, D]"""
        x = self.action_encoder(x_t)
        if state_token is not None:
            x = torch.cat([state_token, x], dim=1)
        x = x + self.position
        temb = self.time_encoder(t)
        for block, context in zip(self.blocks, contexts, strict=True):
            x = block(x, temb, context, concat_input=self.concat_cross_context)
        return self.output(x[:, -self.action_horizon :], temb)

    def sample(
        self,
        contexts: list[BlockContext],
        noise: torch.Tensor,
        state: torch.Tensor | None = None,
        num_steps: int | None = None,
        reverse: bool = False,
    ) -> torch.Tensor:
        """Euler-integrates from noise [B, T, D] (t = 0) to actions [B, T, D] (t = 1), reusing `contexts`;
        reverse: from actions (t = 1) back to noise (t = 0) instead (`sample_reverse`)."""
        state_token = self.encode_state(state, noise.shape[0])
        return euler_integrate(
            lambda x, t: self.velocity(contexts, x, t, state_token),
            noise,
            num_steps or self.config.num_inference_steps,
            t_start=1.0 if reverse else 0.0,
            t_end=0.0 if reverse else 1.0,
        )

    def sample_reverse(
        self,
        contexts: list[BlockContext],
        actions: torch.Tensor,
        state: torch.Tensor | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """Euler-integrates backwards from actions [B, T, D] (t = 1) to noise [B, T, D] (t = 0), reusing `contexts`.

        x_{k+1} = x_k - h * v(x_k, 1 - k h), h = 1 / num_steps (config default): the mirror of `sample`.
        """
        return self.sample(contexts, actions.to(self.position.dtype), state, num_steps, reverse=True)

    def sample_time(self, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """[n] training times: time_max * (1 - Beta(alpha, beta)), concentrated at the noisy end."""
        u = sample_beta(self.config.time_beta_alpha, self.config.time_beta_beta, n, generator, device)
        return (self.config.time_max * (1.0 - u)).to(self.position.dtype)

    # ------------------------------------------------------------------------------------------
    # The ActionHead contract.

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
        """Velocity MSE over valid steps, each sample drawn `repeated_diffusion_steps` times.

        actions: [B, T, D], action_is_pad: [B, T] bool, state: [B, S], action_dim_mask: [B, D] bool or None
        -> {"loss": scalar}; padded dims: zero targets, no loss
        """
        self.check_batch(actions, action_is_pad, state, action_dim_mask)
        repeats = self.config.repeated_diffusion_steps
        contexts = [context.repeat_interleave(repeats) for context in self.encode_context(conditioning)]
        targets = hold_last_valid(actions, action_is_pad, action_dim_mask).to(self.position.dtype)
        targets = targets.repeat_interleave(repeats, dim=0)
        is_pad = action_is_pad.repeat_interleave(repeats, dim=0)
        dim_mask = action_dim_mask.repeat_interleave(repeats, dim=0) if action_dim_mask is not None else None
        state_token = self.encode_state(state, actions.shape[0])
        if state_token is not None:
            state_token = state_token.repeat_interleave(repeats, dim=0)
        noise = random_tensor("normal", tuple(targets.shape), generator, targets.device, targets.dtype)
        t = self.sample_time(targets.shape[0], generator, targets.device)
        x_t = (1 - t[:, None, None]) * noise + t[:, None, None] * targets
        predicted = self.velocity(contexts, x_t, t, state_token)
        return {"loss": masked_mean((predicted - (targets - noise)).pow(2), is_pad, dim_mask)}

    def predict(
        self,
        conditioning: Conditioning,
        state: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """-> normalized actions [B, T, D]: context encoded once, then `num_steps` Euler steps (config default)."""
        contexts = self.encode_context(conditioning)
        noise = self.draw_noise(conditioning.batch_size, generator, conditioning.tokens.device)
        return self.sample(contexts, noise, state, num_steps)

    def draw_noise(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """The starting noise of `predict`: [B, T, D] standard normal from `generator`, in the head's dtype."""
        shape = (batch_size, self.action_horizon, self.action_dim)
        return random_tensor("normal", shape, generator, device, self.position.dtype)

    def invert(
        self,
        conditioning: Conditioning,
        actions: torch.Tensor,
        state: torch.Tensor | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """Rectified-flow inversion: normalized actions [B, T, D] -> the noise [B, T, D] that `reconstruct` maps
        back to them. Reverse-time Euler from t = 1 to t = 0 in S = `num_steps` steps of h = 1 / S:
            x_0 = actions,  x_{k+1} = x_k - h * v(x_k, t_k),  t_k = 1 - k h,  noise = x_S
        (the velocity read at the current time). The context is encoded once.
        """
        self._check_chunk(actions, conditioning, "actions")
        return self.sample_reverse(self.encode_context(conditioning), actions, state, num_steps)

    def reconstruct(
        self,
        conditioning: Conditioning,
        noise: torch.Tensor,
        state: torch.Tensor | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """noise [B, T, D] -> normalized actions [B, T, D]: what `predict` does from a given noise. Forward Euler
        from t = 0 to t = 1 in S = `num_steps` steps of h = 1 / S:
            x_0 = noise,  x_{k+1} = x_k + h * v(x_k, t_k),  t_k = k h,  actions = x_S
        reconstruct(c', invert(c, a)) with another conditioning c' edits the chunk a (e.g. an edited prompt).
        """
        self._check_chunk(noise, conditioning, "noise")
        return self.sample(self.encode_context(conditioning), noise.to(self.position.dtype), state, num_steps)

    def _check_chunk(self, chunk: torch.Tensor, conditioning: Conditioning, name: str) -> None:
        expected = (conditioning.batch_size, self.action_horizon, self.action_dim)
        if tuple(chunk.shape) != expected:
            raise ValueError(
                f"{self.config.name}: {name} must be [B, T, D] = {list(expected)} (B from the conditioning), "
                f"got {list(chunk.shape)}"
            )
