"""QwenPI05: the pi0.5 recipe on a Qwen-VL backbone: discrete state tokens, knowledge insulation, and a
flow-matching action expert that alone acts at inference (docs/pi05.md).

    processor: prompt = chat(views..., instruction + "\\nState: b_1 ... b_S;") [+ readout tokens]
               (each normalized state dimension as one of 256 bins, processor/steps.py DiscretizeState);
               training appends the chunk's FAST answer (<|fast_i|>... <|im_end|>), as QwenFAST
    training:  one VLM pass over prompt + answer, then
                 L_fast = cross-entropy of the answer tokens                      (trains the VLM)
                 L_flow = flow-matching MSE of the expert, reading sg(h) at the prompt positions only
                 loss   = fast_loss_weight * L_fast + flow_loss_weight * L_flow [+ w_readout * L1]
               sg = stop-gradient (`.detach()`) when `insulate_vlm` (knowledge insulation): the expert's
               gradient never reaches the VLM, and L_fast never depends on the expert. insulate_vlm false
               (the ablation): L_flow backpropagates into the VLM too.
    expert:    reads sg(h) at the last VLM layer (cross-attention), or with `expert_attention: every_layer` the
               VLM's own keys and values of every layer, sg at each (pi0's shared attention, action_model/shared_attention.py)
    inference: the prompt once through the VLM, then the expert's Euler integration on those states;
               no FAST token is decoded (the FAST tokenizer only makes training targets)

The expert never sees the answer positions: at training they hold the teacher-forced target tokens, and at
inference they do not exist. Prompt positions are causal, so their hidden states are the same with or without
the answer after them: the expert reads at training exactly what it reads at inference (tests/test_pi05.py).
The state reaches the model only as prompt tokens: the expert (and the readout regression) has no state input.
`auxiliary_losses: {readout: {weight: w}}` adds readout tokens with their L1 regression on the VLM
(vlablocks/core/auxiliary/readout.py), a grounding objective for a VLM trained from scratch (the toy config);
none is the plain recipe. `fast_parallel: true` feeds <|fast_mask|> at every answer position (QwenFAST's
parallel_decoding, OpenVLA-OFT's parallel decoding): each FAST token is predicted from the prompt alone, not from the
token before it, a departure from pi0.5's teacher-forced answer (docs/fidelity.md); the prompt positions, and so the
expert's input, are unchanged by it.
Run this file to smoke-test it: `python vlablocks/core/framework/qwen_pi05.py [--config-yaml F] [overrides]`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from vlablocks.core.action_model.base import Conditioning
from vlablocks.core.auxiliary.base import AuxiliaryInputs
from vlablocks.core.auxiliary.losses import require_vlm_training
from vlablocks.core.batch import Batch
from vlablocks.core.build import build
from vlablocks.core.config import PlatformConfig, registry_field, registry_map
from vlablocks.core.framework.answer_tokens import MASK_TOKEN, add_fast_tokens, answer_logits, masked_answer_inputs
from vlablocks.core.framework.base import Framework
from vlablocks.core.framework.conditioning import (
    expert_head_options,
    expert_keys_values,
    predict_actions,
    start_noise,
    vlm_conditioning,
)
from vlablocks.core.processor.config import FASTOptions, StateTokenOptions
from vlablocks.core.processor.steps import IGNORE_INDEX
from vlablocks.core.registry import ACTION_MODELS, FRAMEWORKS, VLMS
from vlablocks.core.vlm.base import VLMBackbone


def prefix_conditioning(out, labels: torch.Tensor | None, insulate: bool) -> Conditioning:
    """VLMOutput -> the expert's Conditioning over the prompt positions: the answer's positions (labels [B, L]
    not -100) are masked out with the padding. insulate: the hidden states are detached (stop-gradient)."""
    conditioning = vlm_conditioning(out, insulate=insulate)
    if labels is not None:
        conditioning.mask = conditioning.mask & (labels == IGNORE_INDEX)
    return conditioning


@FRAMEWORKS.register("QwenPI05")
class QwenPI05(Framework):
    """Qwen-VL trained on FAST tokens + an insulated flow-matching action expert (pi0.5); the expert acts."""

    vlm: VLMBackbone  # set in __init__; declared for the Steerable capability (core/capabilities.py)

    @dataclass(frozen=True)
    class Config:
        name: str = "QwenPI05"
        vlm: dict = registry_field("vlms", "qwen2_5_vl")
        action_model: dict = registry_field("action_models", "flow_matching")  # the action expert
        fast: FASTOptions = dataclasses.field(default_factory=FASTOptions)  # the VLM's training targets
        state_tokens: StateTokenOptions = dataclasses.field(default_factory=StateTokenOptions)
        fast_loss_weight: float = 1.0
        flow_loss_weight: float = 1.0
        insulate_vlm: bool = True  # knowledge insulation: the expert reads sg(VLM states); false for the ablation
        expert_attention: Literal["last_layer", "every_layer"] = "last_layer"  # every_layer: pi0's shared attention
        # true: the FAST answer's inputs are all <|fast_mask|> (QwenFAST.parallel_decoding's training), so no answer
        # token is predicted from the one before it; pi0.5 teacher-forces them (docs/fidelity.md)
        fast_parallel: bool = False
        auxiliary_losses: dict = registry_map("auxiliary_losses")  # {name: options}, vlablocks/core/auxiliary/
        MOVED: ClassVar[dict[str, str]] = {"readout_loss_weight": "framework.auxiliary_losses.readout.weight"}

    def __init__(self, config: Config, *, platform: PlatformConfig) -> None:
        super().__init__(config, platform=platform)
        if config.fast_loss_weight < 0 or config.flow_loss_weight <= 0:
            raise ValueError(
                f"QwenPI05: need fast_loss_weight >= 0 and flow_loss_weight > 0 (the expert is what acts), got "
                f"{config.fast_loss_weight}, {config.flow_loss_weight}"
            )
        self.vlm = build(VLMS, config.vlm)
        self.fast_token_ids = add_fast_tokens(self.vlm, config.fast)
        self.mask_token_id = self.vlm.add_special_tokens([MASK_TOKEN])[0] if config.fast_parallel else None
        # state_dim 0: the expert has no state input; the state reaches the model as prompt tokens only.
        self.action_model = build(
            ACTION_MODELS,
            expert_head_options("QwenPI05", config.action_model, config.expert_attention, self.vlm),
            action_horizon=platform.action_horizon,
            action_dim=platform.action_dim,
            state_dim=0,
            cond_dim=self.vlm.hidden_size,
        )
        # The readouts regress the chunk without a state projection (state_dim 0): the state is in the prompt.
        self.auxiliary_losses = self.build_auxiliary_losses(platform=dataclasses.replace(platform, state_dim=0))
        # An insulated VLM learns from the FAST loss (or an auxiliary loss); with neither it learns nothing.
        require_vlm_training("QwenPI05", config.insulate_vlm, self.auxiliary_losses, config.fast_loss_weight > 0)

    def processor_options(self) -> dict:
        """The state as prompt tokens, FAST answers for training, the readout tokens (if any) closing the prompt."""
        return {
            **super().processor_options(),
            "fast": self.config.fast,
            "state_tokens": self.config.state_tokens,
            "prompt_suffix": self.auxiliary_losses.prompt_suffix,
        }

    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        """-> {"fast": answer cross-entropy, "flow": the expert's flow-matching loss}: scalars, unweighted and
        differentiable, from one VLM pass over prompt + answer."""
        return self._terms(batch)[0]

    def _terms(self, batch: Batch) -> tuple[dict[str, torch.Tensor], object]:
        """-> (loss_terms, the VLMOutput they came from)."""
        labels = batch.vlm.labels
        if labels is None or batch.actions is None:
            raise ValueError("QwenPI05.forward needs actions and FAST answer labels: the samples must have 'action'")
        insulate = self.config.insulate_vlm
        inputs = (
            batch.vlm if self.mask_token_id is None else masked_answer_inputs(batch.vlm, labels, self.mask_token_id)
        )
        with expert_keys_values(self.vlm, self.config.expert_attention, insulate) as keys_values:
            out = self.vlm(inputs, requested_token_ids=self.auxiliary_losses.token_ids)
        logits, targets = answer_logits(self.vlm, out, labels)
        conditioning = prefix_conditioning(out, labels, insulate=insulate)
        conditioning.layer_keys_values = keys_values
        terms = {
            "fast": F.cross_entropy(logits, targets),
            "flow": self.action_model.compute_loss(
                conditioning, batch.actions, batch.action_is_pad, action_dim_mask=batch.action_dim_mask
            )["loss"],
        }
        return terms, out

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """-> {"loss": the weighted sum, "log": {"fast_loss", "flow_loss"}: each term, detached (metrics.jsonl records
        them per step)}; with auxiliary losses also "action_loss" (the FAST + flow part) and "<name>_loss"."""
        terms, out = self._terms(batch)
        weights = {"fast": self.config.fast_loss_weight, "flow": self.config.flow_loss_weight}
        loss = sum(weights[name] * term for name, term in terms.items())
        losses = {"loss": loss, "log": {f"{name}_loss": term.detach() for name, term in terms.items()}}
        return self.auxiliary_losses.add_to(losses, AuxiliaryInputs(out, batch))

    def flow_conditioning(self, batch: Batch) -> tuple[Conditioning, None]:
        """-> (the expert's Conditioning over the prompt positions, None): the expert has no state input (the state
        is in the prompt), so its predict / invert / reconstruct take state None. Detached: nothing trains here."""
        with expert_keys_values(self.vlm, self.config.expert_attention, insulate=True) as keys_values:
            out = self.vlm(batch.vlm, requested_token_ids=self.auxiliary_losses.token_ids)
        conditioning = prefix_conditioning(out, batch.vlm.labels, insulate=True)
        conditioning.layer_keys_values = keys_values
        return conditioning, None

    def sampling_noise(self, batch: Batch, generator: torch.Generator | None) -> torch.Tensor | None:
        """The flow head's starting noise [B, T, D], drawn before a compiled sample_actions (prepare_sampling)."""
        return start_noise(self.action_model, len(batch), generator)

    def sample_actions(self, batch: Batch, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """-> {"actions": normalized [B, T, D]}: the prompt through the VLM once, then the expert integrates."""
        conditioning, state = self.flow_conditioning(batch)
        return {"actions": predict_actions(self.action_model, conditioning, state, generator, batch.noise)}


if __name__ == "__main__":
    from vlablocks.core.framework.standalone import run_standalone

    raise SystemExit(run_standalone("QwenPI05"))
