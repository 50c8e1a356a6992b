"""QwenFAST's stochastic policy for RL: temperature sampling of the constrained FAST answer with exact log-probs.

`sample_with_log_probs` draws with the KV cache; `choice_log_probs` recomputes the same log-probs (and the
entropy) in one teacher-forced pass. A tiny random-init QwenFAST with a FAST tokenizer fitted on synthetic chunks.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from vlablocks.core.batch import Batch
from vlablocks.core.config import PlatformConfig, parse_experiment
from vlablocks.core.framework.qwen_fast import QwenFAST
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import Policy, build_policy

PLATFORM = {"name": "test", "action_horizon": 4, "action_dim": 3, "state_dim": 2}
N = 4 * 3 + 1  # tokens decoding may emit: T * D FAST tokens + the stop token


def build_fast(examples: list[dict], vlm: str) -> Policy:
    """A QwenFAST policy (its model: `.model`) with the FAST tokenizer fitted to `examples`."""
    torch.manual_seed(0)
    framework = {"name": "QwenFAST", "vlm": {"name": vlm}, "fast": {"vocab_size": 256}}
    policy = build_policy(
        parse_experiment({"platform": PLATFORM, "framework": framework}), synthetic_norm_stats(examples)
    )
    policy.processor.fit(examples)
    return policy.eval()


def stopping(model: QwenFAST) -> QwenFAST:
    """A copy whose stop-token logit is 40x larger: its sign decides, so some answers stop early, others hit the cap."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.vlm.model.get_output_embeddings().weight[model.stop_token_id] *= 40.0
    return model


def draw(model: QwenFAST, batch: Batch, temperature: float, seed: int) -> dict:
    return model.sample_with_log_probs(batch, temperature, torch.Generator().manual_seed(seed))


def allowed_ids(model: QwenFAST, batch: Batch) -> list[int]:
    return sorted([*model.fast_token_ids[: batch.action_vocab], model.stop_token_id])


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    return synthetic_examples(PlatformConfig(**PLATFORM), 4, seed=0)  # 4 instructions of different lengths


@pytest.fixture(scope="module")
def fast_policy(examples) -> Policy:
    return build_fast(examples, "qwen2_5_vl")


@pytest.fixture(scope="module")
def model(fast_policy) -> QwenFAST:
    return fast_policy.model


@pytest.fixture(scope="module")
def batch(fast_policy, examples) -> Batch:
    batch = fast_policy.processor(examples, targets=False).to(fast_policy.device)
    assert len(set(batch.vlm.attention_mask.sum(1).tolist())) >= 3  # different left padding
    return batch


@pytest.mark.parametrize("vlm", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_log_probs_equal_the_teacher_forced_recomputation(examples, vlm, temperature):
    fast_policy = build_fast(examples, vlm)
    model = stopping(fast_policy.model)
    batch = fast_policy.processor(examples, targets=False).to(model.device)
    lengths = batch.vlm.attention_mask.sum(1)
    assert len(set(lengths.tolist())) == len(examples)  # every prompt has its own left padding
    for seed in range(10):  # a draw where some answers stop early and others run to the cap
        drawn = draw(model, batch, temperature, seed)
        generated = drawn["mask"].sum(1)
        if generated.min() < N and generated.max() == N and len(set(generated.tolist())) > 2:
            break
    else:
        pytest.fail(f"no draw with answers of different lengths, last: {generated.tolist()}")
    recomputed = model.choice_log_probs(batch, drawn["choices"], temperature)
    assert recomputed["log_probs"].shape == recomputed["entropy"].shape == (len(examples), N)
    assert torch.isfinite(recomputed["log_probs"]).all() and torch.isfinite(recomputed["entropy"]).all()
    mask = drawn["mask"]
    assert (recomputed["log_probs"] - drawn["log_probs"])[mask].abs().max() < 1e-5
    # whatever fills the padding after the stop (here id 0, not an allowed one): the same, finite log-probs
    zero_padded = model.choice_log_probs(batch, drawn["choices"].masked_fill(~mask, 0), temperature)
    assert torch.isfinite(zero_padded["log_probs"]).all() and torch.isfinite(zero_padded["entropy"]).all()
    assert (zero_padded["log_probs"] - drawn["log_probs"])[mask].abs().max() < 1e-5
    # differentiable: the log-probs of the drawn answers send a gradient into the VLM
    recomputed["log_probs"][mask].sum().backward()
    grads = [p.grad for p in model.vlm.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_every_sample_is_an_allowed_token_and_the_action_tokens_are_the_choices(fast_policy, model, batch):
    model = stopping(model)
    drawn = draw(model, batch, 1.0, seed=0)
    choices, mask, stop = drawn["choices"], drawn["mask"], model.stop_token_id
    assert choices.shape == mask.shape == drawn["log_probs"].shape == (len(batch), N)
    assert choices.dtype == torch.long and mask.dtype == torch.bool
    assert set(choices[mask].tolist()) <= set(allowed_ids(model, batch))
    stopped = 0
    for k in range(len(batch)):
        row = choices[k].tolist()
        length = row.index(stop) + 1 if stop in row else N  # up to and including the stop, or every token at the cap
        stopped += stop in row
        assert mask[k].tolist() == [True] * length + [False] * (N - length)
        assert row[length:] == [stop] * (N - length)  # right-padded with the stop token
        fast = [model.fast_token_ids.index(i) for i in row[:length] if i != stop]
        assert drawn["action_tokens"][k] == fast and all(0 <= i < batch.action_vocab for i in fast)
    assert 0 < stopped < len(batch)  # both kinds of answer were checked
    assert (drawn["log_probs"][~mask] == 0).all() and (drawn["log_probs"][mask] < 0).all()
    output = {"action_tokens": drawn["action_tokens"]}
    actions = fast_policy.processor.postprocess(output, batch)["actions"]
    assert actions.shape == (len(batch), 4, 3) and np.isfinite(actions).all()


def test_a_seeded_generator_reproduces_the_draw_and_another_seed_changes_it(model, batch):
    first, again, other = (
        draw(model, batch, 1.0, seed=0),
        draw(model, batch, 1.0, seed=0),
        draw(model, batch, 1.0, 1),
    )
    assert torch.equal(first["choices"], again["choices"]) and torch.equal(first["log_probs"], again["log_probs"])
    assert first["action_tokens"] == again["action_tokens"]
    assert not torch.equal(first["choices"], other["choices"])


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_log_probs_are_the_log_softmax_of_the_constrained_logits_over_the_temperature(model, batch, temperature):
    drawn = draw(model, batch, temperature, seed=0)
    choices, mask = drawn["choices"], drawn["mask"]
    # Reference: the full-vocabulary LM-head logits of the prompt + answer, -inf outside FAST + stop, / temperature.
    prompt = batch.vlm
    inputs = dataclasses.replace(
        prompt,
        input_ids=torch.cat([prompt.input_ids, choices], dim=1),
        attention_mask=torch.cat([prompt.attention_mask, mask.long()], dim=1),
    )
    with torch.no_grad():
        hidden = model.vlm(inputs).last_hidden_state[:, prompt.input_ids.shape[1] - 1 : -1]  # [B, N, H]
        logits = model.vlm.model.lm_head(hidden).float()  # [B, N, V]
    constrained = torch.full_like(logits, float("-inf"))
    allowed = allowed_ids(model, batch)
    constrained[..., allowed] = logits[..., allowed]
    reference = (constrained / temperature).log_softmax(-1)  # [B, N, V]
    expected = reference.gather(-1, choices.unsqueeze(-1)).squeeze(-1)
    assert (drawn["log_probs"] - expected)[mask].abs().max() < 1e-5
    assert (drawn["log_probs"].exp() <= 1.0).all()
    p = reference[..., allowed].exp()
    entropy = -(p * reference[..., allowed]).sum(-1)
    recomputed = model.choice_log_probs(batch, choices, temperature)
    assert (recomputed["entropy"] - entropy)[mask].abs().max() < 1e-4
    # the temperature matters: the same answer has other log-probs at another temperature
    assert (model.choice_log_probs(batch, choices, 1.0)["log_probs"] - expected)[mask].abs().max() > 1e-3


def test_a_near_zero_temperature_samples_the_greedy_answer(model, batch):
    """1e-4, not 0.01: on a random-init model the top two allowed logits differ by as little as ~3e-3."""
    greedy = model.sample_actions(batch, None)["action_tokens"]
    drawn = draw(model, batch, 1e-4, seed=0)
    assert drawn["action_tokens"] == greedy
    assert drawn["log_probs"][drawn["mask"]].min() > -1e-3  # each token all but certain


def test_the_entropy_lies_between_zero_and_the_log_of_the_allowed_count(model, batch):
    choices = draw(model, batch, 1.0, seed=0)["choices"]
    most = math.log(len(allowed_ids(model, batch)))
    temperatures = (1e-4, 0.1, 1.0, 100.0)
    entropies = [model.choice_log_probs(batch, choices, t)["entropy"].detach() for t in temperatures]
    for entropy in entropies:
        assert (entropy >= -1e-6).all() and (entropy <= most + 1e-5).all()
    for colder, warmer in zip(entropies, entropies[1:]):  # softmax(z / T) spreads out as T grows
        assert (colder <= warmer + 1e-6).all() and colder.mean() < warmer.mean()
    assert entropies[0].median() < 0.01  # ~ greedy: one token takes the mass
    assert entropies[-1].min() > most - 1e-3  # ~ uniform over the allowed tokens


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_a_non_positive_temperature_is_refused(model, batch, temperature):
    with pytest.raises(ValueError, match="temperature must be > 0.*pass a positive temperature"):
        model.sample_with_log_probs(batch, temperature, None)
    choices = torch.full((len(batch), N), model.stop_token_id)
    with pytest.raises(ValueError, match="temperature must be > 0.*pass a positive temperature"):
        model.choice_log_probs(batch, choices, temperature)


def test_choices_outside_the_fast_tokens_and_stop_are_refused(model, batch):
    choices = torch.full((len(batch), N), model.stop_token_id)
    choices[0, 0] = model.vlm.token_id("<|image_pad|>")
    with pytest.raises(ValueError, match="outside the FAST tokens"):
        model.choice_log_probs(batch, choices, 1.0)
