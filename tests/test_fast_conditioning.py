"""What QwenFAST's answer is conditioned on (docs/results/toy_root_causes.md, QwenFAST).

`use_proprio`: the projected state is added to the LM head's input in every path (teacher-forced training, greedy
decoding, RL sampling and its recomputation), and it is what lets the answer depend on the state: when frames share
image and instruction and only the state tells their chunks apart, a QwenFAST without it cannot fit them (its best
is the answers' marginal), and with it it does.
`answer_mlp_hidden`: a residual MLP on the LM head's input, the identity at initialization, lets the answer be a
nonlinear function of the state: a chunk that is the XOR of the state's signs is fitted with it and not without.
`state_tokens`: the state is also written into the prompt as bins (pi0-FAST), so the LLM's layers read it too.
`answer_token_dropout`: in training only, answer tokens are masked as inputs (never as labels) at the set rate.
`parallel_decoding`: every answer input is masked, in training and inference: no coefficient reads another, and the
one-pass inference answers what the teacher-forced training fitted.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vlablocks.core.config import PlatformConfig, parse_experiment
from vlablocks.core.framework.qwen_fast import MASK_TOKEN, QwenFAST, drop_answer_inputs
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import Policy, build_policy
from vlablocks.core.processor.steps import IGNORE_INDEX

PLATFORM = {"name": "test", "action_horizon": 2, "action_dim": 2, "state_dim": 2}


def build(examples: list[dict], use_proprio: bool, **options) -> Policy:
    """A tiny QwenFAST policy (its model: `.model`) with its FAST tokenizer fitted to `examples`."""
    torch.manual_seed(0)
    framework = {"name": "QwenFAST", "fast": {"vocab_size": 256, "bpe_merges": False}, "use_proprio": use_proprio}
    framework.update(options)
    policy = build_policy(
        parse_experiment({"platform": PLATFORM, "framework": framework}), synthetic_norm_stats(examples)
    )
    assert isinstance(policy.model, QwenFAST)
    policy.processor.fit(examples)
    return policy


def state_only_examples() -> list[dict]:
    """Four frames with one image and one instruction; the state alone decides the (constant) chunk: +-0.8 per dim."""
    base = synthetic_examples(PlatformConfig(**PLATFORM), 1, seed=3)[0]
    examples = []
    for sx, sy in [(-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0)]:
        chunk = np.tile(np.array([0.8 * sx, 0.8 * sy], dtype=np.float32), (PLATFORM["action_horizon"], 1))
        examples.append({**base, "state": np.array([sx, sy], dtype=np.float32), "action": chunk})
    return examples


@pytest.mark.parametrize("use_proprio", [False, True])
def test_the_state_reaches_the_answer_loss_only_with_use_proprio(use_proprio):
    examples = synthetic_examples(PlatformConfig(**PLATFORM), 3, seed=1)
    policy = build(examples, use_proprio).eval()
    model, processor = policy.model, policy.processor
    moved = [{**e, "state": e["state"] + 0.5} for e in examples]
    with torch.no_grad():
        loss, moved_loss = model(processor(examples))["loss"], model(processor(moved))["loss"]
    assert torch.equal(loss, moved_loss) is not use_proprio


@pytest.mark.parametrize("answer_mlp_hidden", [0, 32])
def test_sampling_and_its_recomputation_both_see_the_state_at_every_decoding_step(answer_mlp_hidden):
    examples = synthetic_examples(PlatformConfig(**PLATFORM), 4, seed=2)
    policy = build(examples, use_proprio=True, answer_mlp_hidden=answer_mlp_hidden).eval()
    model = policy.model
    with torch.no_grad():
        model.proprio.weight.mul_(20.0)  # a state term that dominates the logits: a missed step shows at once
        if answer_mlp_hidden:
            torch.nn.init.normal_(model.answer_mlp.down.weight, std=1.0)  # an MLP that changes the logits
        batch = policy.processor(examples, targets=False)
        drawn = model.sample_with_log_probs(batch, 1.0, torch.Generator().manual_seed(0))
        again = model.choice_log_probs(batch, drawn["choices"], 1.0)
        greedy = model.sample_actions(batch, None)["action_tokens"]
        coldest = model.sample_with_log_probs(batch, 1e-4, torch.Generator().manual_seed(0))["action_tokens"]
    mask = drawn["mask"]
    assert int(mask.sum()) > len(examples)  # answers longer than one token: cached steps are compared too
    torch.testing.assert_close(again["log_probs"][mask], drawn["log_probs"][mask], atol=1e-5, rtol=0)
    assert greedy == coldest


def fitted_loss(policy: Policy, examples: list[dict], steps: int) -> float:
    """The training loss after `steps` Adam steps on `examples` (one batch)."""
    model = policy.model.train()
    batch = policy.processor(examples)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


@pytest.mark.parametrize("use_proprio", [False, True])
def test_only_use_proprio_fits_chunks_that_only_the_state_tells_apart(use_proprio):
    examples = state_only_examples()
    loss = fitted_loss(build(examples, use_proprio), examples, 150)
    # Without the state every frame has the same prompt: the answers' first two tokens are each one of two values,
    # equally often, so the mean cross-entropy over the answer (T * D tokens + stop) stays >= 2 ln 2 / 5.
    floor = 2 * np.log(2) / (PLATFORM["action_horizon"] * PLATFORM["action_dim"] + 1)
    if use_proprio:
        assert loss < 0.1 * floor
    else:
        assert loss > 0.95 * floor


def xor_examples() -> list[dict]:
    """As `state_only_examples`, but the chunk is +-0.8 by the *product* of the state's signs (XOR): the first answer
    token, whose prompt is the same for all four frames, cannot be a linear function of the state."""
    return [{**e, "action": np.abs(e["action"]) * e["state"].prod()} for e in state_only_examples()]


@pytest.mark.parametrize("answer_mlp_hidden", [0, 64])
def test_only_the_answer_mlp_fits_a_chunk_that_is_a_nonlinear_function_of_the_state(answer_mlp_hidden):
    examples = xor_examples()
    loss = fitted_loss(build(examples, True, answer_mlp_hidden=answer_mlp_hidden), examples, 200)
    # The LM head's logits are linear in its input, h + W_s s: for the first token (one of two values, by XOR) the
    # best a linear function of s does is the marginal, ln 2; the later tokens follow from it. Mean over 5 tokens.
    floor = np.log(2) / (PLATFORM["action_horizon"] * PLATFORM["action_dim"] + 1)
    if answer_mlp_hidden:
        assert loss < 0.1 * floor
    else:
        assert loss > 0.95 * floor


def test_the_answer_mlp_is_the_identity_at_initialization_and_is_refused_negative():
    examples = synthetic_examples(PlatformConfig(**PLATFORM), 3, seed=4)
    plain, with_mlp = build(examples, True), build(examples, True, answer_mlp_hidden=32)
    batch = plain.processor(examples)
    with torch.no_grad():
        torch.testing.assert_close(
            with_mlp.model.eval()(batch)["loss"], plain.model.eval()(batch)["loss"], atol=0, rtol=0
        )
    with pytest.raises(ValueError, match="answer_mlp_hidden"):
        build(examples, True, answer_mlp_hidden=-1)


def test_answer_token_dropout_masks_answer_inputs_only_at_its_rate_and_keeps_the_labels():
    examples = synthetic_examples(PlatformConfig(**PLATFORM), 4, seed=5)
    policy = build(examples, use_proprio=False, answer_token_dropout=0.3)
    mask_token_id = policy.model.mask_token_id
    assert mask_token_id == policy.model.vlm.token_id(MASK_TOKEN)
    inputs = policy.processor(examples).vlm
    is_answer = inputs.labels != IGNORE_INDEX
    torch.manual_seed(0)
    draws = [drop_answer_inputs(inputs, inputs.labels, mask_token_id, 0.3) for _ in range(400)]
    masked = torch.stack([d.input_ids == mask_token_id for d in draws]).float()  # [400, B, L]
    assert not bool(masked[:, ~is_answer].any())  # the prompt is never touched
    rate = masked[:, is_answer].mean().item()
    assert abs(rate - 0.3) < 0.02  # 400 x 20 answer tokens: 3 standard deviations = 0.015
    assert all(torch.equal(d.labels, inputs.labels) for d in draws[:5])
    assert all(torch.equal(d.input_ids[~is_answer], inputs.input_ids[~is_answer]) for d in draws[:5])


def test_answer_token_dropout_acts_in_training_only_and_is_bounded():
    examples = synthetic_examples(PlatformConfig(**PLATFORM), 3, seed=6)
    plain = build(examples, use_proprio=False)
    dropping = build(examples, use_proprio=False, answer_token_dropout=0.9).model
    batch = plain.processor(examples)
    with torch.no_grad():
        dropping.eval()
        evaluated = [dropping(batch)["loss"] for _ in range(2)]
        dropping.train()
        trained = [dropping(batch)["loss"] for _ in range(2)]
    assert torch.equal(evaluated[0], evaluated[1])  # eval: the true tokens are the inputs, every time
    assert not torch.equal(trained[0], trained[1])  # training: a fresh mask per pass
    with pytest.raises(ValueError, match="answer_token_dropout"):
        build(examples, use_proprio=False, answer_token_dropout=1.0)


def test_the_shipped_toy_config_keeps_the_answer_mlp_and_the_state():
    from vlablocks.core.config import load_config

    framework = load_config("configs/experiments/toy/qwen_fast.yaml").framework
    assert framework["answer_mlp_hidden"] > 0 and framework["use_proprio"] and framework["state_tokens"]
    assert framework["parallel_decoding"] and not framework["fast"]["bpe_merges"]


def test_state_tokens_write_the_state_into_the_prompt_only_when_asked():
    examples = synthetic_examples(PlatformConfig(**PLATFORM), 2, seed=7)
    moved = [{**e, "state": -e["state"]} for e in examples]
    for state_tokens in (False, True):
        policy = build(examples, use_proprio=False, state_tokens=state_tokens)
        prompt, moved_prompt = (policy.processor(x, targets=False).vlm.input_ids for x in (examples, moved))
        assert torch.equal(prompt, moved_prompt) is not state_tokens


@pytest.mark.parametrize("parallel_decoding", [False, True])
def test_with_parallel_decoding_no_answer_position_reads_the_answer_tokens_before_it(parallel_decoding):
    examples = synthetic_examples(PlatformConfig(**PLATFORM), 4, seed=8)
    policy = build(examples, use_proprio=True, parallel_decoding=parallel_decoding).eval()
    batch = policy.processor(examples)
    vlm = batch.vlm
    answer = vlm.labels != IGNORE_INDEX
    other = torch.roll(vlm.input_ids, 1, dims=0)  # each row's answer inputs replaced by another row's, labels kept
    assert not torch.equal(vlm.input_ids[answer], other[answer])
    scrambled = dataclasses.replace(
        batch, vlm=dataclasses.replace(vlm, input_ids=torch.where(answer, other, vlm.input_ids))
    )
    with torch.no_grad():
        loss, scrambled_loss = policy.model(batch)["loss"], policy.model(scrambled)["loss"]
    assert torch.equal(loss, scrambled_loss) is parallel_decoding


def test_parallel_decoding_answers_in_one_pass_what_training_fitted():
    examples = state_only_examples()  # four frames that only the state tells apart, x by its x and y by its y
    # The state's shift is the same at every answer position: the MLP lets the x and y positions read different parts.
    policy = build(examples, use_proprio=True, parallel_decoding=True, answer_mlp_hidden=64)
    assert fitted_loss(policy, examples, 200) < 0.01
    model = policy.model.eval()
    with torch.no_grad():
        tokens = model.sample_actions(policy.processor(examples, targets=False), None)["action_tokens"]
    labels = policy.processor(examples).vlm.labels
    wanted = [[model._fast_id_of[int(i)] for i in row[row != IGNORE_INDEX][:-1]] for row in labels]  # stop dropped
    tokens = tokens.tolist()  # parallel decoding answers a [B, T * D] tensor
    assert tokens == wanted and len({tuple(t) for t in tokens}) == 4
    with pytest.raises(ValueError, match="parallel_decoding"):
        model.sample_with_log_probs(policy.processor(examples, targets=False), 1.0, None)
    with pytest.raises(ValueError, match="parallel_decoding"):
        build(examples, use_proprio=True, parallel_decoding=True, fast={"vocab_size": 256, "bpe_merges": True})
