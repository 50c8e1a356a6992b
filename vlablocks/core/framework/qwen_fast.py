"""QwenFAST: pi0-FAST on a Qwen-VL backbone — the action chunk as FAST tokens in the assistant answer.

    processor: normalized chunk -> FAST ids -> answer = <|fast_i|>... <|im_end|>; labels mark the answer
    training:  cross-entropy on the answer tokens only (the prompt is context, not target)
    inference: greedy decoding with the KV cache, constrained to the fitted FAST tokens and the stop token;
               the processor decodes the ids (inverse DCT) -> normalized actions [B, T, D] -> robot units
    RL:        `sample_with_log_probs` samples at a temperature from that constrained distribution (softmax of
               logits / T over the FAST tokens + stop) with the log-prob of every drawn token;
               `choice_log_probs` recomputes them, and the entropy, differentiably in one teacher-forced pass

The FAST tokenizer is part of the processor (vlablocks/core/processor/fast_tokenizer.py): fitted on the
training set's normalized chunks (`Processor.fit`) unless `fast.path` names a fitted one, and saved with
every checkpoint. The model only owns one VLM token per possible FAST id. Chunk steps padded at episode
ends are part of the DCT (the dataset repeats the boundary frame, i.e. "hold").
`auxiliary_losses: {readout: {weight: w}}`: readout tokens close the prompt before the answer, with an auxiliary L1
regression of the chunk from their hidden states that grounds the instruction (vlablocks/core/auxiliary/readout.py).
`use_proprio`: the normalized state s [B, S], projected, is added to the language model's final hidden states
(the LM head's input) at every position of its row, in training, greedy decoding and RL sampling alike:

    h'[b, l] = h[b, l] + W_s s[b]          logits[b, l] = lm_head(h'[b, l])

as QwenOFT adds it to its action head's input. Without it the answer can read the robot's own position only from
the image (docs/results/toy_root_causes.md: the first FAST token, the chunk's mean x displacement, was right for 33% of
training frames while the readout regression, which has the state, predicted the chunk's direction to cosine 0.97).
`answer_mlp_hidden` W > 0: a residual MLP, per position, between the final hidden states (+ the state) and the LM
head, in every path alike:

    h'' = h' + W_2 GELU(W_1 LayerNorm(h'))        W_1: [W, H], W_2: [H, W], zero at initialization (the identity)

The LM head's logits are linear in their input; QwenOFT's L1 head is an MLP over the same kind of states. On the toy
task the chunk is the step toward the named block, a nonlinear function of the block's and the robot's positions,
and the tiny 2-layer LLM's final states carry it only coarsely: without the MLP the first FAST token (the mean x step)
was off by 2.8 bins on training frames, with it 1.5 (docs/results/toy_root_causes.md, QwenFAST).
`state_tokens`: the normalized state is also written into the prompt as bins after the instruction
("State: 131 7;", the processor's DiscretizeState, as pi0-FAST and QwenPI05 do), so the LLM's own layers can
combine it with the image and the instruction before the answer, not only the head.
`answer_token_dropout` p: in training, each answer token is replaced *as an input* by `<|fast_mask|>` with
probability p (its label stays), so a later token cannot be predicted from the earlier ones alone and must be
read from the prompt; inference feeds the true tokens (docs/results/toy_root_causes.md: the second token, the chunk's mean
y displacement, was 92% right on training frames and 27% on fresh ones, i.e. memorized given the first).
`parallel_decoding`: every answer input is `<|fast_mask|>`, in training and at inference, so each of the T x D
coefficients is predicted from the prompt alone, all in one forward pass (OpenVLA-OFT's parallel decoding; the answer
is then a fixed T x D tokens, `fast.bpe_merges: false`):

    inputs  = prompt, <|fast_mask|> x (T * D)          coefficient k = argmax over the FAST ids at prompt end + k

Autoregressively, the second coefficient (the chunk's mean y step) is read with the first (its mean x step) as input,
and the tiny LLM learns the pairing of the two on the training scenes instead of reading y from the scene: teacher-
forced with the true first token, the second was right on 95% of training frames and 55% of fresh ones, off by 4.3
bins on average there (a wrong sign), in the shipped recipe at its own seed 42 (docs/results/toy_root_causes.md).
Run this file to smoke-test it: `python vlablocks/core/framework/qwen_fast.py [--config-yaml F] [overrides]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vlablocks.core.action_model.hl_gauss import hl_gauss_targets
from vlablocks.core.auxiliary.base import AuxiliaryInputs
from vlablocks.core.batch import Batch
from vlablocks.core.build import build
from vlablocks.core.config import PlatformConfig, registry_field, registry_map
from vlablocks.core.framework.answer_tokens import MASK_TOKEN, add_fast_tokens, answer_logits, masked_answer_inputs
from vlablocks.core.framework.base import Framework
from vlablocks.core.partitioned import whole
from vlablocks.core.processor.config import FASTOptions, StateTokenOptions
from vlablocks.core.processor.steps import IGNORE_INDEX
from vlablocks.core.registry import FRAMEWORKS, VLMS
from vlablocks.core.vlm.base import VLMBackbone
from vlablocks.core.vlm.decoding import allowed_logits, decode, until_stop
from vlablocks.core.vlm.runtime import allowed_ids, check_temperature, tempered_log_probs
from vlablocks.core.vlm.steering import language_final_norm


class AnswerMLP(nn.Module):
    """A residual MLP on the LM head's input, per position: h -> h + W_2 GELU(W_1 LayerNorm(h)), W_2 zero at
    initialization (the identity). h: [B, L, H] -> [B, L, H]."""

    def __init__(self, hidden_size: int, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.up = nn.Linear(hidden_size, width)
        self.down = nn.Linear(width, hidden_size)
        with whole(self.down):  # partitioned already under ZeRO-3 (vlablocks/core/partitioned.py)
            nn.init.zeros_(self.down.weight)
            nn.init.zeros_(self.down.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        update = self.down(F.gelu(self.up(self.norm(hidden.to(self.up.weight.dtype)))))
        return hidden + update.to(hidden.dtype)


def drop_answer_inputs(inputs, labels: torch.Tensor, mask_token_id: int, probability: float):
    """Teacher forcing with dropped inputs: every answer token (labels != -100) is replaced, as an *input*, by
    `mask_token_id` with `probability` (torch's global generator). The labels keep the true tokens, so each answer
    token is still the target of the position before it; it is the following positions that no longer see it.
    -> a copy of `inputs` [B, L] with the new input_ids."""
    dropped = (labels != IGNORE_INDEX) & (torch.rand(labels.shape, device=labels.device) < probability)
    return dataclasses.replace(inputs, input_ids=torch.where(dropped, mask_token_id, inputs.input_ids))


@FRAMEWORKS.register("QwenFAST")
class QwenFAST(Framework):
    """Qwen-VL answering with FAST action tokens (pi0-FAST): autoregressive, KV-cached, constrained decoding."""

    vlm: VLMBackbone  # set in __init__; declared for the Steerable capability (core/capabilities.py)

    @dataclass(frozen=True)
    class Config:
        name: str = "QwenFAST"
        vlm: dict = registry_field("vlms", "qwen2_5_vl")
        fast: FASTOptions = dataclasses.field(default_factory=FASTOptions)
        auxiliary_losses: dict = registry_map("auxiliary_losses")  # {name: options}, vlablocks/core/auxiliary/
        hl_gauss_sigma: float = 0.0  # > 0: HL-Gauss targets over the ordered FAST ids (needs fast.bpe_merges: false)
        use_proprio: bool = False  # add the projected state to the LM head's input (module docstring)
        answer_token_dropout: float = 0.0  # training: each answer input token -> <|fast_mask|> with this probability
        answer_mlp_hidden: int = 0  # > 0: a residual MLP of this width on the LM head's input (module docstring)
        state_tokens: bool = False  # the state also written into the prompt as bins (pi0-FAST; StateTokenOptions)
        parallel_decoding: bool = False  # answer inputs all <|fast_mask|>: one pass, no token reads another (docstring)
        MOVED: ClassVar[dict[str, str]] = {"readout_loss_weight": "framework.auxiliary_losses.readout.weight"}

    def __init__(self, config: Config, *, platform: PlatformConfig) -> None:
        super().__init__(config, platform=platform)
        self.vlm = build(VLMS, config.vlm)
        self.auxiliary_losses = self.build_auxiliary_losses()
        if config.hl_gauss_sigma < 0 or (config.hl_gauss_sigma > 0 and config.fast.bpe_merges):
            raise ValueError(
                f"QwenFAST: hl_gauss_sigma={config.hl_gauss_sigma} needs ordered FAST ids: set fast.bpe_merges: false "
                "(merged BPE tokens have no order), or hl_gauss_sigma: 0"
            )
        self.fast_token_ids = add_fast_tokens(self.vlm, config.fast)
        self.stop_token_id = self.vlm.token_id(config.fast.stop_token)
        self._fast_id_of = {vlm_id: i for i, vlm_id in enumerate(self.fast_token_ids)}
        if config.use_proprio and self.platform.state_dim < 1:
            raise ValueError("QwenFAST.use_proprio needs a platform with state_dim > 0; set use_proprio: false")
        self.proprio = nn.Linear(self.platform.state_dim, self.vlm.hidden_size) if config.use_proprio else None
        if not 0.0 <= config.answer_token_dropout < 1.0:
            raise ValueError(f"QwenFAST.answer_token_dropout must lie in [0, 1), got {config.answer_token_dropout}")
        if config.parallel_decoding and (config.fast.bpe_merges or config.answer_token_dropout):
            raise ValueError(
                "QwenFAST.parallel_decoding needs a fixed-length answer, fast.bpe_merges: false, and masks every answer "
                "input already (answer_token_dropout: 0)"
            )
        masking = config.answer_token_dropout or config.parallel_decoding
        self.mask_token_id = self.vlm.add_special_tokens([MASK_TOKEN])[0] if masking else None
        if config.answer_mlp_hidden < 0:
            raise ValueError(f"QwenFAST.answer_mlp_hidden must be >= 0 (0: none), got {config.answer_mlp_hidden}")
        self.answer_mlp = (
            AnswerMLP(self.vlm.hidden_size, config.answer_mlp_hidden) if config.answer_mlp_hidden else None
        )

    @contextmanager
    def _state_at_head(self, batch: Batch) -> Iterator[None]:
        """Inside the block, every pass of the language model over `batch`'s rows returns final hidden states
        `_head_input` makes of them (teacher-forced passes); without use_proprio or answer_mlp_hidden nothing changes.
        """
        if self.proprio is None and self.answer_mlp is None:
            yield
            return
        shift = self._state_shift(batch)
        hook = language_final_norm(self.vlm).register_forward_hook(lambda m, i, out: self._head_input(out, shift))
        try:
            yield
        finally:
            hook.remove()

    def _state_shift(self, batch: Batch) -> torch.Tensor | None:
        """use_proprio: W_s state [B, 1, H]; else None."""
        if self.proprio is None:
            return None
        if batch.state is None:
            raise ValueError("QwenFAST.use_proprio needs a `state` in every sample; set use_proprio: false")
        return self.proprio(batch.state.to(self.device, self.proprio.weight.dtype)).unsqueeze(1)

    def _head_map(self, batch: Batch) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """`_head_input` with `batch`'s state shift, for decoding (a map rather than `_state_at_head`'s hook: a hook
        registered inside a compiled graph breaks it); None without use_proprio and answer_mlp_hidden."""
        if self.proprio is None and self.answer_mlp is None:
            return None
        return partial(self._head_input, shift=self._state_shift(batch))

    def _head_input(self, hidden: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
        """The language model's final hidden states [B, L, H] -> the LM head's input: h' = h + shift (use_proprio),
        then h' + MLP(h') (answer_mlp_hidden)."""
        hidden = hidden if shift is None else hidden + shift.to(hidden.dtype)
        return hidden if self.answer_mlp is None else self.answer_mlp(hidden)

    def processor_options(self) -> dict:
        """The processor tokenizes the answers (and decodes generated ids) with its FAST tokenizer."""
        suffix = self.auxiliary_losses.prompt_suffix
        options = {**super().processor_options(), "fast": self.config.fast, "prompt_suffix": suffix}
        return {**options, "state_tokens": StateTokenOptions()} if self.config.state_tokens else options

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Cross-entropy on the answer tokens (FAST tokens + stop), averaged over those tokens."""
        labels = batch.vlm.labels
        if labels is None:
            raise ValueError("QwenFAST.forward needs answer labels: the batch must come from samples with actions")
        inputs = self.answer_inputs(batch.vlm, labels)
        with self._state_at_head(batch):
            out = self.vlm(inputs, requested_token_ids=self.auxiliary_losses.token_ids)
        logits, targets = answer_logits(self.vlm, out, labels)
        if self.config.hl_gauss_sigma > 0:
            loss = -(self.soft_targets(targets, batch.action_vocab) * logits.log_softmax(-1)).sum(-1).mean()
        else:
            loss = F.cross_entropy(logits, targets)
        return self.auxiliary_losses.add_to({"loss": loss}, AuxiliaryInputs(out, batch))

    def answer_inputs(self, inputs, labels: torch.Tensor):
        """The teacher-forced inputs [B, L] of a batch with its answer: parallel_decoding masks every answer token (in
        training and evaluation alike), answer_token_dropout some of them in training; otherwise `inputs` as they are.
        """
        if self.config.parallel_decoding:
            return masked_answer_inputs(inputs, labels, self.mask_token_id)
        if self.training and self.mask_token_id is not None:
            return drop_answer_inputs(inputs, labels, self.mask_token_id, self.config.answer_token_dropout)
        return inputs

    def soft_targets(self, targets: torch.Tensor, action_vocab: int) -> torch.Tensor:
        """targets: [N] VLM ids -> [N, vocab] distributions: HL-Gauss over the FAST ids (ordered quantized
        coefficients), one-hot for the stop token."""
        fast_ids = torch.tensor(self.fast_token_ids[:action_vocab], device=targets.device)
        distributions = F.one_hot(targets, self.vlm.model.lm_head.out_features).float()
        is_fast = torch.isin(targets, fast_ids)
        if is_fast.any():
            order = (targets[is_fast, None] == fast_ids[None, :]).float().argmax(-1)  # FAST id = ordered value
            smooth = hl_gauss_targets(order.float(), action_vocab, self.config.hl_gauss_sigma)
            distributions[is_fast] = 0.0
            distributions[torch.nonzero(is_fast)[:, :1], fast_ids[None, :]] = smooth
        return distributions

    def sample_actions(
        self, batch: Batch, generator: torch.Generator | None
    ) -> dict[str, list[list[int]] | torch.Tensor]:
        """-> {"action_tokens": per sample the generated FAST ids (parallel_decoding: a [B, T * D] long tensor, no host
        read inside a compiled graph)}; the processor decodes them to actions."""
        if self.config.parallel_decoding:
            return {"action_tokens": self._parallel_tokens(batch)}
        greedy = decode(
            self.vlm,
            batch.vlm,
            stop_token_id=self.stop_token_id,
            max_new_tokens=self._max_new_tokens,
            allowed_token_ids=self._fast_ids(batch),
            head_input=self._head_map(batch),
        )
        generated = until_stop(greedy["tokens"], self.stop_token_id)
        return {"action_tokens": [[self._fast_id_of[i] for i in row] for row in generated]}

    @torch.no_grad()
    def _parallel_tokens(self, batch: Batch) -> torch.Tensor:
        """parallel_decoding: the (left-padded) prompt followed by T * D mask tokens, one forward pass; coefficient k is
        the argmax over the FAST ids at the prompt's last position + k -> [B, T * D] long, each sample's FAST ids."""
        prompt, count = batch.vlm, self._max_new_tokens - 1
        masks = torch.full((prompt.input_ids.shape[0], count), self.mask_token_id, device=prompt.input_ids.device)
        inputs = dataclasses.replace(
            prompt,
            input_ids=torch.cat([prompt.input_ids, masks], dim=1),
            attention_mask=torch.cat([prompt.attention_mask, torch.ones_like(masks)], dim=1),
            labels=None,
            layout=prompt.layout.with_text_appended(count) if prompt.layout is not None else None,
        )  # the VLM's forward derives the rope positions (multimodal prompt, then text) from the attention mask
        length = prompt.input_ids.shape[1]
        allowed = torch.tensor(self._fast_ids(batch), device=self.device)
        # The head's input made here rather than by `_state_at_head`'s hook: a hook registered inside a compiled graph
        # breaks it. The final norm's output is the last hidden state, so both compute the same.
        hidden = self._head_input(self.vlm(inputs).last_hidden_state, self._state_shift(batch))
        hidden = hidden[:, length - 1 : length - 1 + count]  # [B, T * D, H]
        return allowed_logits(self.vlm, hidden, allowed).argmax(-1)  # FAST id = column in `allowed`

    def _refuse_parallel(self, what: str) -> None:
        if self.config.parallel_decoding:
            raise ValueError(f"QwenFAST.{what}: not written for parallel_decoding (its answer is decoded in one pass)")

    # ---- a stochastic policy with exact log-probabilities (RL) -----------------------------------------------
    def sample_with_log_probs(self, batch: Batch, temperature: float, generator: torch.Generator | None) -> dict:
        """Samples the answer at `temperature` from the constrained distribution (FAST tokens + stop).

        -> {"action_tokens": per sample its FAST ids (before the stop), "choices": [B, N] long VLM ids, the stop token
            included, right-padded with the stop token, "log_probs": [B, N] float32 log pi(choice),
            "mask": [B, N] bool, True up to and including the stop}, N = T * D + 1 (fixed, so records stack).
        """
        self._refuse_parallel("sample_with_log_probs")
        drawn = decode(
            self.vlm,
            batch.vlm,
            stop_token_id=self.stop_token_id,
            max_new_tokens=self._max_new_tokens,
            allowed_token_ids=self._fast_ids(batch),
            temperature=temperature,
            generator=generator,
            return_log_probs=True,
            head_input=self._head_map(batch),
        )
        rows = until_stop(drawn["tokens"], self.stop_token_id)
        return {
            "action_tokens": [[self._fast_id_of[i] for i in row] for row in rows],
            "choices": drawn["tokens"],
            "log_probs": drawn["log_probs"],
            "mask": drawn["mask"],
        }

    def choice_log_probs(self, batch: Batch, choices: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
        """choices: [B, N] VLM ids from `sample_with_log_probs` -> {"log_probs": [B, N], "entropy": [B, N]} under the
        same constrained tempered distribution, teacher-forced in one differentiable forward pass over the (left-padded)
        prompt followed by the choices. Positions after the first stop are padding: finite, meant to be masked."""
        self._refuse_parallel("choice_log_probs")
        check_temperature(temperature)
        vocab_size = self.vlm.model.get_output_embeddings().weight.shape[0]
        allowed = torch.tensor(allowed_ids(self._fast_ids(batch), self.stop_token_id, vocab_size), device=self.device)
        choices = choices.to(self.device)
        is_stop = (choices == self.stop_token_id).long()
        valid = is_stop.cumsum(1) - is_stop == 0  # [B, N]: no stop before
        choices = torch.where(valid, choices, self.stop_token_id)  # padding -> an allowed id: finite log-probs
        index = torch.searchsorted(allowed, choices).clamp(max=len(allowed) - 1)  # [B, N] column in `allowed`
        if not bool((allowed[index] == choices).all()):
            raise ValueError("QwenFAST.choice_log_probs: choices hold ids outside the FAST tokens + stop token")
        prompt = batch.vlm
        inputs = dataclasses.replace(
            prompt,
            input_ids=torch.cat([prompt.input_ids, choices], dim=1),
            attention_mask=torch.cat([prompt.attention_mask, valid.to(prompt.attention_mask.dtype)], dim=1),
            labels=None,
        )  # the VLM's forward derives the rope positions (multimodal prompt, then text) from the attention mask
        length = prompt.input_ids.shape[1]
        with self._state_at_head(batch):
            hidden = self.vlm(inputs).last_hidden_state[:, length - 1 : -1]  # [B, N, H]: the states predicting choices
        log_probs = tempered_log_probs(allowed_logits(self.vlm, hidden, allowed), temperature)  # [B, N, K]
        chosen = log_probs.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return {"log_probs": chosen, "entropy": entropy}

    def _fast_ids(self, batch: Batch) -> list[int]:
        """The VLM ids of the FAST tokens the batch's fitted tokenizer may emit."""
        if not batch.action_vocab:
            raise ValueError("QwenFAST: the batch has no action_vocab; the processor's FAST tokenizer is not fitted")
        return self.fast_token_ids[: batch.action_vocab]

    @property
    def _max_new_tokens(self) -> int:
        return self.platform.action_horizon * self.platform.action_dim + 1


if __name__ == "__main__":
    from vlablocks.core.framework.standalone import run_standalone

    raise SystemExit(run_standalone("QwenFAST"))
