"""OpenVLA-OFT's diffusion variant: the noisy action chunk goes through the LLM at every denoising step.

QwenOFT with the `diffusion` head and `noisy_actions: llm_input`. At DDIM timestep k the T action queries' input
embeddings carry the noisy chunk x_k [B, T, D] and the time:

    e(<act_i>) := E[<act_i>] + W_a x_k[:, i] + tau(k)          i = 0 .. T-1

(W_a the noisy-action projector, tau a timestep embedding), the VLM runs over the prompt with them, and the head
predicts the noise from the queries' output states q(x_k, k):

    eps_hat = head.predict_noise(pool(q(x_k, k)), x_k, k)          loss = mean over real steps/dims of (eps_hat - eps)^2

Training draws one (k, eps) per sample, so one VLM pass per draw (`repeated_diffusion_steps` must be 1); sampling
runs the VLM once per DDIM step, as OFT does (the default `noisy_actions: head` pools the context once and denoises
in the head alone). Simplified against OFT (docs/fidelity.md): the time is added to every query's input rather than
given its own token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from vlablocks.core.action_model.base import Conditioning
from vlablocks.core.action_model.diffusion import DiffusionHead
from vlablocks.core.action_model.dit import TimestepEncoder
from vlablocks.core.action_model.masking import hold_last_valid, masked_mean
from vlablocks.core.batch import Batch


class NoisyActionInput(nn.Module):
    """W_a and tau of the module docstring, applied to the query tokens' input embeddings inside `applied`."""

    def __init__(self, hidden_size: int, action_dim: int, query_token_ids: list[int]) -> None:
        super().__init__()
        self.query_token_ids = list(query_token_ids)
        self.proj = nn.Linear(action_dim, hidden_size)
        self.time = TimestepEncoder(hidden_size, scale=1.0)  # integer DDPM timesteps

    @contextmanager
    def applied(self, vlm, x_t: torch.Tensor, timesteps: torch.Tensor) -> Iterator[None]:
        """Within the block the VLM's query inputs carry x_t [B, T, D] and timesteps [B] (module docstring)."""
        ids = torch.tensor(self.query_token_ids)
        extra = self.proj(x_t.to(self.proj.weight.dtype)) + self.time(timesteps).unsqueeze(1)  # [B, T, H]

        def add(module, args, output: torch.Tensor) -> torch.Tensor:
            hits = torch.isin(args[0], ids.to(args[0].device))  # [B, L], the T queries of each row in order
            steps = extra.shape[1]
            # The count is checked eagerly only: a compiled graph does not read a tensor's value on the host.
            if not torch.compiler.is_compiling() and bool(hits.any()) and not bool((hits.sum(1) == steps).all()):
                raise ValueError(f"noisy_actions: llm_input needs the {steps} action queries in every prompt")
            # The i-th query of a row is its i-th hit: gather step i's addition there, zero elsewhere (no hit: none).
            step = (hits.cumsum(1) - 1).clamp(0, steps - 1)  # [B, L]
            per_position = extra.gather(1, step.unsqueeze(-1).expand(-1, -1, extra.shape[-1]))  # [B, L, H]
            return output + hits.unsqueeze(-1).to(output.dtype) * per_position.to(output.dtype)

        handle = vlm.model.get_input_embeddings().register_forward_hook(add)
        try:
            yield
        finally:
            handle.remove()


Condition = Callable[[Batch], Conditioning]


def noise_loss(head: DiffusionHead, noisy: NoisyActionInput, vlm, condition: Condition, batch: Batch) -> dict:
    """One (k, eps) draw per sample, the VLM run on x_k -> {"loss": the masked noise MSE} (module docstring)."""
    targets = hold_last_valid(batch.actions, batch.action_is_pad, batch.action_dim_mask).float()
    x_t, noise, timesteps = head.noised(targets, None)
    with noisy.applied(vlm, x_t, timesteps):
        conditioning = condition(batch)
    state = head.encode_state(batch.state, targets.shape[0])
    predicted = head.predict_noise(head.encode_context(conditioning), x_t, timesteps, state)
    return {"loss": masked_mean((predicted - noise).pow(2), batch.action_is_pad, batch.action_dim_mask)}


@torch.no_grad()
def denoise(
    head: DiffusionHead,
    noisy: NoisyActionInput,
    vlm,
    condition: Condition,
    batch: Batch,
    generator: torch.Generator | None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDIM from N(0, I) with one VLM pass per step -> normalized actions [B, T, D]; from `noise` x_K [B, T, D] when
    it was drawn beforehand (Framework.prepare_sampling), otherwise drawn here from `generator`."""
    size = batch.vlm.input_ids.shape[0]
    device = batch.vlm.input_ids.device
    x = head.draw_noise(size, generator, device) if noise is None else noise
    x = x.float()
    state = head.encode_state(batch.state, size)
    for timestep in head.sampling_timesteps():
        timesteps = torch.full((size,), timestep, dtype=torch.long, device=device)
        with noisy.applied(vlm, x, timesteps):
            conditioning = condition(batch)
        predicted = head.predict_noise(head.encode_context(conditioning), x, timesteps, state)
        x = head.scheduler.step(predicted, timestep, x).prev_sample
    return x
