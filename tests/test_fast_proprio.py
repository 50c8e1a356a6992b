"""QwenFAST `use_proprio`: the projected state is added to the LM head's input in every path (teacher-forced
training, greedy decoding, RL sampling and its recomputation), and it is what lets the answer depend on the state.

The regression probe of docs/toy_root_causes.md's FAST finding: when frames share image and instruction and only
the state tells their chunks apart, a QwenFAST without the state cannot fit them (its best is the answers' marginal),
and with `use_proprio` it does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlablocks.config import PlatformConfig, parse_experiment
from vlablocks.framework.base import build_policy
from vlablocks.framework.qwen_fast import QwenFAST
from vlablocks.framework.synthetic import synthetic_examples, synthetic_norm_stats

PLATFORM = {"name": "test", "action_horizon": 2, "action_dim": 2, "state_dim": 2}


def build(examples: list[dict], use_proprio: bool) -> QwenFAST:
    torch.manual_seed(0)
    framework = {"name": "QwenFAST", "fast": {"vocab_size": 256, "bpe_merges": False}, "use_proprio": use_proprio}
    policy = build_policy(
        parse_experiment({"platform": PLATFORM, "framework": framework}), synthetic_norm_stats(examples)
    )
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
    moved = [{**e, "state": e["state"] + 0.5} for e in examples]
    with torch.no_grad():
        loss, moved_loss = policy(policy.processor(examples))["loss"], policy(policy.processor(moved))["loss"]
    assert torch.equal(loss, moved_loss) is not use_proprio


def test_sampling_and_its_recomputation_both_see_the_state_at_every_decoding_step():
    examples = synthetic_examples(PlatformConfig(**PLATFORM), 4, seed=2)
    policy = build(examples, use_proprio=True).eval()
    with torch.no_grad():
        policy.proprio.weight.mul_(20.0)  # a state term that dominates the logits: a missed step shows at once
        batch = policy.processor(examples, targets=False)
        drawn = policy.sample_with_log_probs(batch, 1.0, torch.Generator().manual_seed(0))
        again = policy.choice_log_probs(batch, drawn["choices"], 1.0)
        greedy = policy.sample_actions(batch, None)["action_tokens"]
        coldest = policy.sample_with_log_probs(batch, 1e-4, torch.Generator().manual_seed(0))["action_tokens"]
    mask = drawn["mask"]
    assert int(mask.sum()) > len(examples)  # answers longer than one token: cached steps are compared too
    torch.testing.assert_close(again["log_probs"][mask], drawn["log_probs"][mask], atol=1e-5, rtol=0)
    assert greedy == coldest


@pytest.mark.parametrize("use_proprio", [False, True])
def test_only_use_proprio_fits_chunks_that_only_the_state_tells_apart(use_proprio):
    examples = state_only_examples()
    policy = build(examples, use_proprio).train()
    batch = policy.processor(examples)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(150):
        loss = policy(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # Without the state every frame has the same prompt: the answers' first two tokens are each one of two values,
    # equally often, so the mean cross-entropy over the answer (T * D tokens + stop) stays >= 2 ln 2 / 5.
    floor = 2 * np.log(2) / (PLATFORM["action_horizon"] * PLATFORM["action_dim"] + 1)
    if use_proprio:
        assert loss.item() < 0.1 * floor
    else:
        assert loss.item() > 0.95 * floor
