"""Activation memory of a Qwen-VL backbone in training: the tensors autograd keeps for the backward pass.

An analytic count per token and per transformer block (attention through SDPA / flash attention, so no
L x L score matrix is kept; SwiGLU MLP; RMSNorm that computes in fp32), for the vision tower and the
language model separately. `e` is the activation width in bytes (2 under bf16, 4 in fp32). Per token:

    each RMSNorm (two per block)  4h + 2e*h   (its fp32 input copy, the normalized and the weighted output)
    language-model attention      5e*h        (q, k and v repeated to every head, SDPA's output, o_proj's input)
    vision attention              7e*h        (the fused qkv output, rotated q and k, SDPA's output, proj's input)
    SwiGLU MLP                    4e*i        (gate and up outputs, the activation, their product)
    kept hidden states            e*h         (language model under bf16: every layer's output is returned)

and per vision patch, outside the blocks: the patch embedding's input (e * 3 channels * t * p * p pixel
values) and the patch merger (its RMSNorm, 4h + 2e*h, and its two-layer MLP, 3e*h).

With gradient checkpointing a block keeps only its input (e*h per token) and one block's full set exists
while it is recomputed. The token embeddings, the final norm and the action head are left out (under 1% at
3B). `tests/test_plan.py` checks the count against the bytes autograd really saves for the
tiny model in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StackShape:
    """One transformer stack: `layers` blocks of width `hidden`, MLP width `intermediate`."""

    layers: int
    hidden: int
    intermediate: int
    attention_factor: int  # e*h multiples kept by attention: 5 (language model), 7 (vision tower)
    keeps_hidden_states: bool  # every layer's output is returned (and so stays alive)


@dataclass(frozen=True)
class SequenceShape:
    """Tokens of one sample: `text_tokens` + `vision_tokens` reach the language model; the vision tower sees
    `vision_patches` (= vision_tokens * merge_size^2)."""

    text_tokens: int
    vision_tokens: int
    vision_patches: int

    @property
    def llm_tokens(self) -> int:
        return self.text_tokens + self.vision_tokens


def block_bytes_per_token(stack: StackShape, e: int) -> int:
    """Bytes one block keeps per token (the table in the module docstring)."""
    norms = 2 * (4 * stack.hidden + 2 * e * stack.hidden)
    attention = stack.attention_factor * e * stack.hidden
    mlp = 4 * e * stack.intermediate
    kept = e * stack.hidden if stack.keeps_hidden_states and e < 4 else 0  # fp32: the next norm's input already
    return norms + attention + mlp + kept


def stack_bytes(stack: StackShape, tokens: int, e: int, checkpointing: bool) -> int:
    """Bytes the stack keeps for `tokens` tokens (all samples of the micro-batch together)."""
    per_block = block_bytes_per_token(stack, e) * tokens
    if not checkpointing:
        return stack.layers * per_block
    return stack.layers * e * stack.hidden * tokens + per_block


def vlm_stacks(model_config) -> tuple[StackShape, StackShape]:
    """(vision tower, language model) of a transformers Qwen-VL config."""
    vision, text = model_config.vision_config, model_config.text_config
    tower = StackShape(vision.depth, vision.hidden_size, vision.intermediate_size, 7, False)
    llm = StackShape(text.num_hidden_layers, text.hidden_size, text.intermediate_size, 5, True)
    return tower, llm


def activation_bytes(model_config, sequence: SequenceShape, batch: int, e: int, checkpointing: bool) -> dict[str, int]:
    """{"vision": bytes, "language_model": bytes} kept for one micro-batch of `batch` samples."""
    tower, llm = vlm_stacks(model_config)
    vision = model_config.vision_config
    pixels = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    outside_blocks = e * pixels + (4 + 2 * e) * tower.hidden + 3 * e * tower.hidden  # patch embed + merger
    patches = batch * sequence.vision_patches
    return {
        "vision": stack_bytes(tower, patches, e, checkpointing) + outside_blocks * patches,
        "language_model": stack_bytes(llm, batch * sequence.llm_tokens, e, checkpointing),
    }
