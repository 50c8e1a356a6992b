"""The one decoding loop (vlablocks/core/vlm/decoding.py): at temperature 0 it emits exactly what transformers'
greedy `generate` emits (constrained and not, with images, left padding and steering), and its sampled log-probs are
those of a full-sequence forward over the prompt and the drawn tokens."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList
from vlm_helpers import FAMILIES, build, encode, random_views

from vlablocks.core.batch import VLMInputs
from vlablocks.core.vlm import VLMBackbone
from vlablocks.core.vlm.decoding import decode, until_stop
from vlablocks.core.vlm.steering import Steering, steering

ACTION_TOKENS = [f"<|act_{i}|>" for i in range(6)]
MAX_NEW = 6


class OnlyAllowed(LogitsProcessor):
    """transformers' generate: every id outside `allowed` (which must hold the stop token) -> -inf."""

    def __init__(self, allowed: list[int], vocab_size: int) -> None:
        self.mask = torch.full((vocab_size,), float("-inf"))
        self.mask[allowed] = 0.0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores + self.mask.to(scores.device, scores.dtype)


def hf_greedy(vlm: VLMBackbone, inputs: VLMInputs, stop: int, allowed: list[int] | None) -> list[list[int]]:
    """Reference: HF `generate` greedy (KV cache), as VLMBackbone.generate_constrained did -> ids before the stop."""
    vocab_size = vlm.model.get_output_embeddings().weight.shape[0]
    processors = LogitsProcessorList([OnlyAllowed([*allowed, stop], vocab_size)] if allowed is not None else [])
    features, _ = vlm.encode_images(inputs)
    with torch.no_grad():  # a steering context around the call applies to generate's passes too
        output = vlm.model.generate(
            **vlm.model_kwargs(inputs),
            mm_encoder_outputs={"image": features},
            logits_processor=processors,
            max_new_tokens=MAX_NEW,
            do_sample=False,
            num_beams=1,
            eos_token_id=stop,
            pad_token_id=vlm.tokenizer.pad_token_id,
        )
    return until_stop(output[:, inputs.input_ids.shape[1] :], stop)


def examples(seed: int = 0) -> list[dict]:
    """Three prompts of different lengths (left padding) with one or two views of different sizes."""
    rng = np.random.default_rng(seed)
    return [
        {"views": random_views(rng, [(64, 80), (120, 90)]), "prompt": "pick the red block"},
        {"views": random_views(rng, [(100, 100)]), "prompt": "open the top drawer of the cabinet slowly"},
        {"views": random_views(rng, [(90, 70)]), "prompt": "stop"},
    ]


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request) -> VLMBackbone:
    vlm = build(request.param).eval()
    ids = vlm.add_special_tokens(ACTION_TOKENS)
    with torch.no_grad():  # the stop logit 30x larger: its sign decides, so some rows stop early, others hit the cap
        vlm.model.get_output_embeddings().weight[vlm.token_id("<|im_end|>")] *= 30.0
    vlm.action_ids = ids
    return vlm


@pytest.mark.parametrize("constrained", [True, False])
def test_greedy_decoding_equals_hf_generate(vlm, constrained):
    inputs = encode(vlm, examples())
    assert len(set(inputs.attention_mask.sum(1).tolist())) == 3  # three different left paddings
    stop = vlm.token_id("<|im_end|>")
    allowed = vlm.action_ids if constrained else None
    decoded = decode(vlm, inputs, stop, MAX_NEW, allowed_token_ids=allowed)
    expected = hf_greedy(vlm, inputs, stop, allowed)
    assert until_stop(decoded["tokens"], stop) == expected
    assert any(expected) and all(len(row) <= MAX_NEW for row in expected)
    if constrained:
        assert {i for row in expected for i in row} <= set(vlm.action_ids)
    emitted = torch.tensor([min(len(row) + 1, MAX_NEW) for row in expected])  # the stop counts, unless capped
    assert decoded["mask"].sum(1).tolist() == emitted.tolist()
    assert decoded["tokens"][~decoded["mask"]].eq(stop).all()


def test_greedy_decoding_equals_hf_generate_under_steering(vlm):
    inputs = encode(vlm, examples(seed=1))
    stop = vlm.token_id("<|im_end|>")
    plain = until_stop(decode(vlm, inputs, stop, MAX_NEW)["tokens"], stop)
    hidden = vlm.model.config.get_text_config().hidden_size
    vectors = 8.0 * torch.randn(3, 1, 1, hidden, generator=torch.Generator().manual_seed(0))
    with steering(vlm, Steering(vectors, (1,), "add", alpha=1.0)):
        steered = until_stop(decode(vlm, inputs, stop, MAX_NEW)["tokens"], stop)
        expected = hf_greedy(vlm, inputs, stop, None)
    assert steered == expected
    assert until_stop(decode(vlm, inputs, stop, MAX_NEW)["tokens"], stop) == plain  # removed on exit
    assert steered != plain  # the steering reached the decoded answer


@pytest.mark.parametrize("constrained", [True, False])
def test_sampled_log_probs_equal_a_full_sequence_forward(vlm, constrained):
    inputs = encode(vlm, examples())
    stop = vlm.token_id("<|im_end|>")
    allowed = vlm.action_ids if constrained else None
    temperature = 0.8
    drawn = decode(
        vlm,
        inputs,
        stop,
        MAX_NEW,
        allowed_token_ids=allowed,
        temperature=temperature,
        generator=torch.Generator().manual_seed(0),
        return_log_probs=True,
    )
    tokens, mask = drawn["tokens"], drawn["mask"]
    full = dataclasses.replace(
        inputs,
        input_ids=torch.cat([inputs.input_ids, tokens], dim=1),
        attention_mask=torch.cat([inputs.attention_mask, mask.to(inputs.attention_mask.dtype)], dim=1),
    )
    with torch.no_grad():
        hidden = vlm(full).last_hidden_state[:, inputs.input_ids.shape[1] - 1 : -1]  # [B, N, H]
        logits = vlm.model.lm_head(hidden).float()  # [B, N, V]
    if constrained:
        outside = torch.ones(logits.shape[-1], dtype=torch.bool)
        outside[[*vlm.action_ids, stop]] = False
        logits[..., outside] = float("-inf")
    expected = (logits / temperature).log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    assert (drawn["log_probs"] - expected)[mask].abs().max() < 1e-4
    assert drawn["log_probs"][~mask].eq(0).all()
    assert drawn["log_probs"][mask].max() < 0  # a distribution, not a point mass
    again = decode(vlm, inputs, stop, MAX_NEW, allowed, temperature, torch.Generator().manual_seed(0))
    assert torch.equal(again["tokens"], tokens) and "log_probs" not in again


def test_bad_temperatures_and_lengths_are_refused(vlm):
    inputs = encode(vlm, examples()[:1])
    stop = vlm.token_id("<|im_end|>")
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        decode(vlm, inputs, stop, MAX_NEW, temperature=-1.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        decode(vlm, inputs, stop, MAX_NEW, temperature=0.0, return_log_probs=True)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        decode(vlm, inputs, stop, 0)
