"""QwenOFT: OpenVLA-OFT on a Qwen-VL backbone — action queries decoded in parallel in one forward pass.

    prompt = chat(views..., instruction) [+ <|proprio|>] + <act_0> ... <act_{Q-1}>
    VLM  -> hidden states of the Q action-query tokens [B, Q, H]
         (+ proprio projector: the normalized state projected to H and added to every query state)
    head -> normalized actions [B, T, D]  (l1_regression by default, or diffusion)

OpenVLA-OFT options (docs/fidelity.md), each off by default:
  action_attention: bidirectional   the action queries attend to each other (and to the whole prompt, which stays
                                    causal): OFT's parallel decoding (vlablocks/core/vlm/attention.py)
  proprio: llm_token                the state projected into one LLM input token before the queries, instead of
                                    added to the query outputs (vlablocks/core/framework/proprio.py)
  film: vision_blocks               with use_film, FiLM from the mean instruction embedding in every
                                    vision-transformer block (OFT+), instead of once on the merged vision tokens
  noisy_actions: llm_input          with the diffusion head, the noisy chunk enters the LLM through the action
                                    queries at every denoising step (vlablocks/core/framework/oft_diffusion.py)

Co-training (docs/cotraining.md): batches may mix vision-language samples (`batch.is_robot` False), whose answer
is trained by cross-entropy through the same VLM pass (framework/cotraining.py) while only the robot rows reach the
action head: loss = action loss + vl_loss_weight * answer cross-entropy.
Optional FiLM: the mean embedding of the prompt's text (no answer, query or proprio tokens) yields a per-channel
scale and shift applied to every merged vision token before it enters the LLM (OpenVLA-OFT's language-conditioned
vision features), or inside every vision block (`film: vision_blocks`).
Run this file to smoke-test it: `python vlablocks/core/framework/qwen_oft.py [--config-yaml F] [overrides]`.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import nn

from vlablocks.core.action_model.base import Conditioning, ReadsVocabulary
from vlablocks.core.action_model.binned import BinnedActionHead
from vlablocks.core.batch import Batch
from vlablocks.core.build import build
from vlablocks.core.config import PlatformConfig, registry_field
from vlablocks.core.framework.base import Framework
from vlablocks.core.framework.conditioning import start_noise
from vlablocks.core.framework.cotraining import (
    answer_cross_entropy,
    cotraining_loss,
    has_vl_samples,
    robot_rows,
    select_rows,
    zero_touch,
)
from vlablocks.core.framework.film import InstructionFiLM, VisionBlockFiLM, instruction_embedding
from vlablocks.core.framework.oft_diffusion import NoisyActionInput, denoise, noise_loss
from vlablocks.core.framework.proprio import PROPRIO_TOKEN, ProprioToken
from vlablocks.core.registry import FRAMEWORKS, VLMS
from vlablocks.core.vlm.base import VLMBackbone


@FRAMEWORKS.register("QwenOFT")
class QwenOFT(Framework):
    """Qwen-VL + parallel-decoded action queries + L1 (or DDIM) head (OpenVLA-OFT)."""

    vlm: VLMBackbone  # set in __init__; declared for the Steerable capability (core/capabilities.py)

    @dataclass(frozen=True)
    class Config:
        name: str = "QwenOFT"
        vlm: dict = registry_field("vlms", "qwen2_5_vl")
        action_model: dict = registry_field("action_models", "l1_regression")
        use_proprio: bool = True  # the normalized state enters the model (where: `proprio`)
        proprio: Literal["query_outputs", "llm_token"] = "query_outputs"  # added to the query states, or OFT's token
        use_film: bool = False  # instruction-conditioned scale/shift of the vision features (where: `film`)
        film: Literal["vision_tokens", "vision_blocks"] = "vision_tokens"  # once before the LLM, or per ViT block
        action_attention: Literal["causal", "bidirectional"] = "causal"  # bidirectional: OFT's parallel decoding
        noisy_actions: Literal["head", "llm_input"] = "head"  # diffusion head: llm_input = OFT's diffusion variant
        query_token_prefix: str = "<|act_"
        vl_loss_weight: float = 1.0  # co-training: weight of the VL samples' answer cross-entropy

    def __init__(self, config: Config, *, platform: PlatformConfig) -> None:
        super().__init__(config, platform=platform)
        self.vlm = build(VLMS, config.vlm)
        hidden = self.vlm.hidden_size
        self.action_model = self.build_action_model(config.action_model, cond_dim=hidden)
        if isinstance(self.action_model, ReadsVocabulary):  # token_bins: the LM head scores its bin tokens
            self.action_model.bind_vlm(self.vlm)
        num_queries = getattr(self.action_model, "num_query_tokens", self.platform.action_horizon)
        self.query_tokens = [f"{config.query_token_prefix}{i}|>" for i in range(num_queries)]
        self.query_token_ids = self.vlm.add_special_tokens(self.query_tokens)
        self.proprio = self.proprio_token = None
        if config.use_proprio and config.proprio == "query_outputs":
            self.proprio = nn.Linear(self.platform.state_dim, hidden)
        elif config.use_proprio:
            self.proprio_token = ProprioToken(self.vlm, self.platform.state_dim)
        self.film = self.vision_film = None
        if config.use_film and config.film == "vision_tokens":
            self.film = InstructionFiLM(hidden)
        elif config.use_film:
            vision = self.vlm.model.config.vision_config
            self.vision_film = VisionBlockFiLM(hidden, vision.hidden_size, len(self.vlm.model.model.visual.blocks))
        self.noisy_actions = None
        if config.noisy_actions == "llm_input":
            self._check_noisy_actions(config, num_queries)
            self.noisy_actions = NoisyActionInput(hidden, self.platform.action_dim, self.query_token_ids)

    def _check_noisy_actions(self, config: Config, num_queries: int) -> None:
        head = config.action_model
        if head.get("name") != "diffusion" or head.get("repeated_diffusion_steps", 1) != 1:
            raise ValueError(
                "QwenOFT noisy_actions: llm_input feeds the DDIM head's noisy chunk through the LLM: it needs "
                "action_model.name: diffusion with repeated_diffusion_steps: 1 (one VLM pass per noise draw)"
            )
        if num_queries != self.platform.action_horizon:
            raise ValueError(
                f"QwenOFT noisy_actions: llm_input puts one action step into each query: {num_queries} queries for "
                f"{self.platform.action_horizon} steps"
            )

    def processor_options(self) -> dict:
        """The action queries (after the proprio token, if any) close every prompt; the state is needed by the
        proprio projector or token, or the head."""
        use_state = self.config.use_proprio or bool(self.config.action_model.get("use_state", False))
        suffix = (PROPRIO_TOKEN if self.proprio_token is not None else "") + "".join(self.query_tokens)
        return {**super().processor_options(), "prompt_suffix": suffix, "use_state": use_state}

    def encode(self, batch: Batch):
        """The VLM pass over the prompt -> VLMOutput, with this config's proprio token, FiLM and query attention."""
        bidirectional = self.query_token_ids if self.config.action_attention == "bidirectional" else ()
        vision_hook = None
        with ExitStack() as stack:
            if self.film is not None or self.vision_film is not None:
                special = self.query_token_ids + ([self.proprio_token.token_id] if self.proprio_token else [])
                pooled = instruction_embedding(self.vlm, batch.vlm, special)  # [B, H], the prompt's text only
                if self.film is not None:
                    vision_hook = partial(self.film, pooled=pooled)
                else:
                    stack.enter_context(self.vision_film.applied(self.vlm, batch.vlm, pooled))
            if self.proprio_token is not None:
                stack.enter_context(self.proprio_token.applied(self.vlm, batch.state))
            return self.vlm(
                batch.vlm,
                requested_token_ids=self.query_token_ids,
                vision_hook=vision_hook,
                bidirectional_token_ids=bidirectional,
            )

    def condition(self, batch: Batch) -> Conditioning:
        """-> Conditioning with tokens = action-query hidden states [B, Q, H] (+ projected state)."""
        return self.queries(self.encode(batch), batch)

    def queries(self, out, batch: Batch) -> Conditioning:
        """The VLM pass `out` -> Conditioning with tokens = action-query hidden states [B, Q, H] (+ projected state)."""
        positions = torch.cat([out.token_positions[t] for t in self.query_token_ids], dim=1)  # [B, Q]
        index = positions.unsqueeze(-1).expand(-1, -1, out.last_hidden_state.shape[-1])
        queries = out.last_hidden_state.gather(1, index)
        if self.proprio is not None:
            if batch.state is None:
                raise ValueError("QwenOFT.use_proprio needs a `state` in every sample; set use_proprio: false")
            # In the projector's own dtype: a bf16 VLM feeds this fp32 layer outside autocast (Policy.predict).
            projected = self.proprio(batch.state.to(self.proprio.weight.dtype))
            queries = queries + projected.to(queries.dtype).unsqueeze(1)
        return Conditioning(tokens=queries)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        if has_vl_samples(batch):
            if self.noisy_actions is not None:
                raise ValueError("QwenOFT noisy_actions: llm_input does not co-train; use noisy_actions: head")
            return self.cotraining_forward(batch)
        if self.noisy_actions is not None:
            return noise_loss(self.action_model, self.noisy_actions, self.vlm, self.condition, batch)
        conditioning = self.condition(batch)
        return self.action_model.compute_loss(
            conditioning, batch.actions, batch.action_is_pad, batch.state, action_dim_mask=batch.action_dim_mask
        )

    def cotraining_forward(self, batch: Batch) -> dict:
        """A batch with VL samples: one VLM pass; the action loss on the robot rows [R] only, the answer
        cross-entropy on the VL rows' answer tokens -> {"loss", "log": {"action_loss", "answer_loss"}}."""
        out = self.encode(batch)
        rows = robot_rows(batch)
        if bool(rows.any()):
            state = batch.state[rows] if batch.state is not None else None
            conditioning = select_rows(self.queries(out, batch), rows)
            dim_mask = batch.action_dim_mask[rows] if batch.action_dim_mask is not None else None
            action_loss = self.action_model.compute_loss(
                conditioning, batch.actions[rows], batch.action_is_pad[rows], state, action_dim_mask=dim_mask
            )
            action_loss = action_loss["loss"]
        else:  # only VL samples: exact-zero gradients for the head and the proprio projector
            action_loss = zero_touch(self.action_model, self.proprio).to(out.last_hidden_state.device)
        answer_loss = answer_cross_entropy(self.vlm, out, batch.vlm.labels)
        return cotraining_loss(action_loss, answer_loss, self.config.vl_loss_weight, self.vlm.model.lm_head)

    @property
    def sampling_token_ids(self) -> tuple[int, ...]:
        """The action queries: their hidden states are the head's input."""
        return tuple(self.query_token_ids)

    def sampling_noise(self, batch: Batch, generator: torch.Generator | None) -> torch.Tensor | None:
        """The DDIM head's starting chunk [B, T, D], drawn before a compiled sample_actions (prepare_sampling); None
        for the deterministic heads."""
        return start_noise(self.action_model, len(batch), generator)

    def sample_actions(self, batch: Batch, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        if self.noisy_actions is not None:  # one VLM pass per denoising step
            noisy, condition = self.noisy_actions, self.condition
            return {"actions": denoise(self.action_model, noisy, self.vlm, condition, batch, generator, batch.noise)}
        if batch.noise is None:
            return {"actions": self.action_model.predict(self.condition(batch), batch.state, generator=generator)}
        # a DDIM start drawn before a compiled call (sampling_noise): the same steps from it
        return {"actions": self.action_model.reconstruct(self.condition(batch), batch.noise, batch.state)}

    # ---- a stochastic policy with exact log-probabilities (RL; needs the `binned` head) -------------------
    def sample_with_log_probs(self, batch: Batch, temperature: float, generator: torch.Generator | None) -> dict:
        """-> {"actions": normalized [B, T, D], "choices": bins [B, N], "log_probs": [B, N], "mask": [B, N]}, N = T*D"""
        head = self._stochastic_head()
        drawn = head.sample(self.condition(batch), batch.state, temperature, generator)
        size = drawn["bins"].shape[0]
        return {
            "actions": drawn["actions"],
            "choices": drawn["bins"].reshape(size, -1),
            "log_probs": drawn["log_probs"].reshape(size, -1),
            "mask": torch.ones(size, drawn["bins"][0].numel(), dtype=torch.bool, device=drawn["bins"].device),
        }

    def choice_log_probs(self, batch: Batch, choices: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
        """choices: [B, N] from `sample_with_log_probs` -> {"log_probs": [B, N], "entropy": [B, N]}, differentiable."""
        head = self._stochastic_head()
        bins = choices.reshape(choices.shape[0], head.action_horizon, head.action_dim)
        log_probs, entropy = head.evaluate(self.condition(batch), batch.state, bins, temperature)
        return {"log_probs": log_probs.reshape(choices.shape), "entropy": entropy.reshape(choices.shape)}

    def _stochastic_head(self) -> BinnedActionHead:
        if not isinstance(self.action_model, BinnedActionHead):
            raise ValueError(
                f"QwenOFT with action_model {self.config.action_model.get('name')!r} is deterministic: RL needs "
                "framework.action_model.name: binned"
            )
        return self.action_model


if __name__ == "__main__":
    from vlablocks.core.framework.standalone import run_standalone

    raise SystemExit(run_standalone("QwenOFT"))
