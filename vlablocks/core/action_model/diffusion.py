"""DDIM diffusion head (OpenVLA-OFT's DDIM head): epsilon prediction with diffusers' DDIMScheduler.

Conditioning: the VLM tokens are projected (optional 2-D position encoding at vision tokens) and
attention-pooled by `num_pool_queries` learned queries (cross-attention honouring conditioning.mask);
the pooled vectors are computed once per call and reused at every denoising step. The noise predictor
is an MLP-ResNet over [flattened noisy chunk, pooled context], conditioned (FiLM in every block) on
the time embedding (+ state embedding): noise [B, T, D] from x_t [B, T, D].
Sampling runs `num_inference_steps` deterministic DDIM steps (eta = 0) from N(0, I), with diffusers'
default `timestep_spacing="leading"` (as OpenVLA-OFT). squaredcos_cap_v2 caps beta at 0.999, so the
last training timestep has alpha_bar ~ 0 and DDIM's x0 estimate (x_t - sqrt(1 - a) eps) / sqrt(a)
divides by ~0 whenever sampling visits it ("trailing" spacing always does, "leading" when
num_inference_steps == num_train_timesteps). `clip_sample` (on by default, as in OpenVLA-OFT) bounds
that estimate to the normalized action range; turn it off only with a schedule that avoids alpha_bar ~ 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DDIMScheduler
from torch import nn

from vlablocks.core.action_model.base import ActionHead, Conditioning
from vlablocks.core.action_model.context import ContextEncoder, ContextPositionEncoding, context_mask
from vlablocks.core.action_model.dit import Attention, TimestepEncoder
from vlablocks.core.action_model.flow_matching import random_tensor
from vlablocks.core.action_model.masking import hold_last_valid, masked_mean
from vlablocks.core.action_model.mlp_resnet import MLPResNet
from vlablocks.core.registry import ACTION_MODELS


@ACTION_MODELS.register("diffusion")
class DiffusionHead(ActionHead):
    """DDIM noise-prediction head (OpenVLA-OFT): MLP-ResNet over noisy chunk + attention-pooled VLM context."""

    @dataclass(frozen=True)
    class Config:
        name: str = "diffusion"
        hidden_dim: int = 256
        num_blocks: int = 3  # MLP-ResNet residual blocks
        num_pool_queries: int = 4  # learned queries pooling the context tokens
        num_heads: int = 4  # heads of the pooling attention
        num_train_timesteps: int = 100
        num_inference_steps: int = 10
        repeated_diffusion_steps: int = 1  # noise/timestep draws per sample in the loss (context pooled once)
        beta_schedule: str = "squaredcos_cap_v2"
        timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading"
        clip_sample: bool = True  # clip each x0 estimate to +-clip_sample_range (see the module docstring)
        clip_sample_range: float = 1.0  # the normalized action range: 1 for q99 / min_max, larger for mean_std
        use_state: bool = True  # add a state embedding (when state_dim > 0)
        context_position_encoding: ContextPositionEncoding = "none"  # or "sincos2d" at vision tokens

    def __init__(self, config: Config, *, action_horizon: int, action_dim: int, state_dim: int, cond_dim: int) -> None:
        super().__init__(
            config, action_horizon=action_horizon, action_dim=action_dim, state_dim=state_dim, cond_dim=cond_dim
        )
        if not 1 <= config.num_inference_steps <= config.num_train_timesteps:
            raise ValueError(
                f"diffusion: need 1 <= num_inference_steps <= num_train_timesteps, got "
                f"{config.num_inference_steps}, {config.num_train_timesteps}"
            )
        if config.num_pool_queries < 1 or config.repeated_diffusion_steps < 1:
            raise ValueError(
                f"diffusion: need num_pool_queries >= 1 and repeated_diffusion_steps >= 1, got "
                f"{config.num_pool_queries}, {config.repeated_diffusion_steps}"
            )
        self.scheduler = DDIMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            clip_sample=config.clip_sample,
            clip_sample_range=config.clip_sample_range,
            prediction_type="epsilon",
            timestep_spacing=config.timestep_spacing,
        )
        self._sampling_timesteps: dict[int, tuple[int, ...]] = {}  # num_steps -> its timesteps (sampling_timesteps)
        self.sampling_timesteps()  # the default run's, set up front (host-side, before any compiled call)
        hidden = config.hidden_dim
        self.context_encoder = ContextEncoder(cond_dim, hidden, config.context_position_encoding)
        self.pool_queries = nn.Parameter(torch.randn(config.num_pool_queries, hidden) * 0.02)
        self.pool = Attention(hidden, config.num_heads)
        self.time_encoder = TimestepEncoder(hidden, scale=1.0)  # integer DDPM timesteps
        self.state_encoder = nn.Linear(state_dim, hidden) if config.use_state and state_dim > 0 else None
        chunk = action_horizon * action_dim
        # Time (+ state) enters as the FiLM condition: eps depends on x_t through a time-dependent scale.
        self.noise_net = MLPResNet(chunk + config.num_pool_queries * hidden, hidden, chunk, config.num_blocks, hidden)

    def encode_context(self, conditioning: Conditioning) -> torch.Tensor:
        """conditioning.tokens [B, L, cond_dim] -> pooled context [B, num_pool_queries * hidden]; compute once."""
        tokens = self.context_encoder(conditioning.tokens, conditioning)
        keys, values = self.pool.keys_values(tokens)
        queries = self.pool_queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.pool(queries, keys, values, context_mask(conditioning, tokens)).flatten(1)

    def encode_state(self, state: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
        """state: [B, S] -> [B, hidden] (None when the head uses no state)."""
        if self.state_encoder is None:
            return None
        if state is None or state.shape != (batch_size, self.state_dim):
            got = None if state is None else list(state.shape)
            raise ValueError(
                f"diffusion: use_state is true, so state [B, {self.state_dim}] is required (got {got}); "
                "pass state or set use_state: false"
            )
        return self.state_encoder(state.to(self.pool_queries.dtype))

    def predict_noise(
        self, pooled: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor, state_embedding: torch.Tensor | None
    ) -> torch.Tensor:
        """pooled: [B, P * hidden], x_t: [B, T, D], timesteps: [B] -> predicted noise [B, T, D]"""
        condition = self.time_encoder(timesteps.to(x_t.dtype))
        if state_embedding is not None:
            condition = condition + state_embedding
        out = self.noise_net(torch.cat([x_t.flatten(1), pooled], dim=-1), condition)
        return out.view_as(x_t)

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
        """Noise MSE over valid steps and real dims. actions: [B, T, D], action_is_pad: [B, T] bool, state: [B, S],
        action_dim_mask: [B, D] bool or None -> {"loss"}"""
        self.check_batch(actions, action_is_pad, state, action_dim_mask)
        repeats = self.config.repeated_diffusion_steps
        pooled = self.encode_context(conditioning).repeat_interleave(repeats, dim=0)
        state_embedding = self.encode_state(state, actions.shape[0])
        if state_embedding is not None:
            state_embedding = state_embedding.repeat_interleave(repeats, dim=0)
        targets = hold_last_valid(actions, action_is_pad, action_dim_mask).to(pooled.dtype)
        x_t, noise, timesteps = self.noised(targets.repeat_interleave(repeats, dim=0), generator)
        predicted = self.predict_noise(pooled, x_t, timesteps, state_embedding)
        dim_mask = action_dim_mask.repeat_interleave(repeats, dim=0) if action_dim_mask is not None else None
        is_pad = action_is_pad.repeat_interleave(repeats, dim=0)
        return {"loss": masked_mean((predicted - noise).pow(2), is_pad, dim_mask)}

    def noised(
        self, targets: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """targets: [B, T, D] -> (x_t = sqrt(a_bar_k) x_0 + sqrt(1 - a_bar_k) eps [B, T, D], eps, k [B]) with
        k ~ U{0, ..., num_train_timesteps - 1} and eps ~ N(0, I), drawn from `generator`."""
        noise = random_tensor("normal", tuple(targets.shape), generator, targets.device, targets.dtype)
        uniform = random_tensor("uniform", (targets.shape[0],), generator, targets.device, torch.float64)
        timesteps = (uniform * self.config.num_train_timesteps).long().clamp(max=self.config.num_train_timesteps - 1)
        return self.scheduler.add_noise(targets, noise, timesteps), noise, timesteps

    def predict(
        self,
        conditioning: Conditioning,
        state: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """-> normalized actions [B, T, D] after `num_steps` DDIM steps (config default), context pooled once."""
        noise = self.draw_noise(conditioning.batch_size, generator, conditioning.tokens.device)
        return self.reconstruct(conditioning, noise, state, num_steps)

    def draw_noise(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """The starting chunk x_K of `predict`: [B, T, D] standard normal from `generator`, in the head's dtype."""
        shape = (batch_size, self.action_horizon, self.action_dim)
        return random_tensor("normal", shape, generator, device, self.pool_queries.dtype)

    def reconstruct(
        self,
        conditioning: Conditioning,
        noise: torch.Tensor,
        state: torch.Tensor | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """noise: x_K [B, T, D] -> normalized actions [B, T, D]: `predict`'s deterministic DDIM steps from a given
        start (eta = 0, so the start is all the randomness there is)."""
        pooled = self.encode_context(conditioning)
        batch = pooled.shape[0]
        state_embedding = self.encode_state(state, batch)
        x = noise.to(pooled.dtype)
        for timestep in self.sampling_timesteps(num_steps):
            timesteps = torch.full((batch,), timestep, dtype=torch.long, device=x.device)
            x = self.scheduler.step(self.predict_noise(pooled, x, timesteps, state_embedding), timestep, x).prev_sample
        return x

    def sampling_timesteps(self, num_steps: int | None = None) -> tuple[int, ...]:
        """The timesteps of one DDIM sampling run (descending) as Python ints, with the scheduler set for them. A
        compiled sampling loop then indexes the schedule with constants instead of reading a tensor's value."""
        steps = num_steps or self.config.num_inference_steps
        if steps not in self._sampling_timesteps:
            self.scheduler.set_timesteps(steps)
            self._sampling_timesteps[steps] = tuple(int(t) for t in self.scheduler.timesteps)
        if self.scheduler.num_inference_steps != steps:
            self.scheduler.set_timesteps(steps)
        return self._sampling_timesteps[steps]
