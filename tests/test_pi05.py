"""QwenPI05 (vlablocks/core/framework/qwen_pi05.py): knowledge insulation by exact zero gradients, the state as prompt
tokens, and the state discretization (processor/steps.py DiscretizeState) against hand computations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vlablocks.core.config import PlatformConfig, load_config, parse_experiment
from vlablocks.core.dataloader.normalization import Normalizer
from vlablocks.core.framework.answer_tokens import MASK_TOKEN
from vlablocks.core.framework.base import build_framework
from vlablocks.core.framework.qwen_pi05 import QwenPI05
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import Policy, build_policy
from vlablocks.core.processor.steps import IGNORE_INDEX, DiscretizeState

PLATFORM = {"name": "test", "action_horizon": 4, "action_dim": 3, "state_dim": 2}
# Cross-attention gates open: under adaLN-Zero (gates 0) no gradient would reach the context at initialization,
# and "the flow loss reaches the VLM" could not be told from "it does not".
EXPERT = {"name": "flow_matching", "hidden_dim": 32, "num_layers": 2, "num_heads": 2, "cross_attention_gate_init": 1.0}


def tiny(**options) -> tuple[Policy, list[dict]]:
    """A tiny QwenPI05 policy (its model: `.model`) with its processor fitted to three examples."""
    framework = {"name": "QwenPI05", "action_model": EXPERT, "fast": {"vocab_size": 256}, **options}
    experiment = parse_experiment({"platform": PLATFORM, "framework": framework})
    examples = synthetic_examples(PlatformConfig(**PLATFORM), 3, seed=4)
    torch.manual_seed(0)
    policy = build_policy(experiment, synthetic_norm_stats(examples))
    assert isinstance(policy.model, QwenPI05)
    policy.processor.fit(examples)
    return policy, examples


def grads(loss: torch.Tensor, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """d loss / d p for every parameter of `module`; a parameter the loss does not reach gets exact zeros."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    found = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True, allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named, found)}


def nonzero(gradients: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, g in gradients.items() if bool(g.abs().sum() > 0)}


# ---- knowledge insulation ---------------------------------------------------------------------------


@pytest.mark.parametrize("readout_weight", [0.0, 1.0])
def test_insulated_flow_loss_leaves_every_vlm_parameter_at_exactly_zero(readout_weight):
    policy, examples = tiny(auxiliary_losses={"readout": {"weight": readout_weight}})
    model = policy.model
    terms = model.loss_terms(policy.processor(examples))
    flow_on_vlm = grads(terms["flow"], model.vlm)
    assert len(flow_on_vlm) > 10 and all(torch.equal(g, torch.zeros_like(g)) for g in flow_on_vlm.values())
    fast_on_expert = grads(terms["fast"], model.action_model)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in fast_on_expert.values())
    # ... while each loss trains its own side: the flow loss the expert, the FAST loss the VLM.
    assert len(nonzero(grads(terms["flow"], model.action_model))) > 10
    assert any(".layers." in n for n in nonzero(grads(terms["fast"], model.vlm)))


def test_insulated_total_loss_trains_the_vlm_with_the_fast_loss_alone():
    policy, examples = tiny()
    model = policy.model
    batch = policy.processor(examples)
    torch.manual_seed(1)
    losses = model(batch)
    torch.manual_seed(1)
    terms = model.loss_terms(batch)
    torch.testing.assert_close(losses["loss"], terms["fast"] + terms["flow"])
    # each term is logged (metrics.jsonl) as computed, detached
    assert set(losses["log"]) == {"fast_loss", "flow_loss"} and not losses["log"]["fast_loss"].requires_grad
    torch.testing.assert_close(losses["log"]["fast_loss"], terms["fast"].detach())
    total, fast = grads(losses["loss"], model.vlm), grads(terms["fast"], model.vlm)
    for name in total:
        torch.testing.assert_close(total[name], fast[name], rtol=0, atol=0)


def test_without_insulation_the_flow_loss_reaches_the_whole_backbone():
    policy, examples = tiny(insulate_vlm=False)
    model = policy.model
    terms = model.loss_terms(policy.processor(examples))
    flow_on_vlm = nonzero(grads(terms["flow"], model.vlm))
    fast_on_vlm = nonzero(grads(terms["fast"], model.vlm))
    # Both losses train the VLM: through the LLM's decoder layers and down into the vision tower.
    for reached in (flow_on_vlm, fast_on_vlm):
        assert any("language_model.layers." in n for n in reached), sorted(reached)[:5]
        assert any(".visual." in n for n in reached), sorted(reached)[:5]
    # The FAST loss is computed from the VLM alone, which never reads the expert: no gradient there either way.
    fast_on_expert = grads(terms["fast"], model.action_model)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in fast_on_expert.values())


def test_insulated_vlm_without_a_vlm_loss_is_refused():
    with pytest.raises(ValueError, match="learns nothing"):
        tiny(fast_loss_weight=0.0)
    with pytest.raises(ValueError, match="flow_loss_weight > 0"):
        tiny(flow_loss_weight=0.0)


# ---- what the expert reads --------------------------------------------------------------------------


def test_the_expert_reads_the_prompt_only_so_training_and_inference_agree():
    policy, examples = tiny(auxiliary_losses={"readout": {"weight": 1.0}})
    model = policy.eval().model
    train_batch = policy.processor(examples)  # prompt + FAST answer
    infer_batch = policy.processor(examples, targets=False)  # prompt only
    answer = train_batch.vlm.labels != IGNORE_INDEX
    assert answer.any() and infer_batch.vlm.labels is None
    with torch.no_grad():
        train_out, infer_out = model.vlm(train_batch.vlm), model.vlm(infer_batch.vlm)
        for row in range(len(examples)):
            prompt = train_batch.vlm.attention_mask[row].bool() & ~answer[row]
            torch.testing.assert_close(
                train_out.last_hidden_state[row, prompt],
                infer_out.last_hidden_state[row, infer_batch.vlm.attention_mask[row].bool()],
                rtol=1e-4,
                atol=1e-5,
            )
        from_train = model.sample_actions(train_batch, torch.Generator().manual_seed(0))["actions"]
        from_infer = model.sample_actions(infer_batch, torch.Generator().manual_seed(0))["actions"]
    torch.testing.assert_close(from_train, from_infer, rtol=1e-4, atol=1e-5)


def test_changing_only_the_state_changes_the_prompt_tokens_and_the_actions():
    policy, examples = tiny()
    sample = examples[0]
    moved = {**sample, "state": (sample["state"] + 0.5).astype(np.float32)}
    tokenizer = policy.model.vlm.tokenizer
    ids = [policy.processor([s], targets=False).vlm.input_ids[0].tolist() for s in (sample, moved, dict(sample))]
    assert ids[0] != ids[1] and ids[0] == ids[2]
    texts = [tokenizer.decode(i) for i in ids[:2]]
    assert all("State: " in t for t in texts)
    assert texts[0].split("State: ")[0] == texts[1].split("State: ")[0]  # views and instruction unchanged
    before, after, again = (policy.predict([s], seed=0)["actions"] for s in (sample, moved, dict(sample)))
    np.testing.assert_array_equal(before, again)  # same state, same noise: the same chunk
    assert np.abs(before - after).max() > 1e-4  # the expert has no state input: the tokens carried the change


# ---- the state discretization -----------------------------------------------------------------------


def hand_stats() -> dict:
    """q99 stats whose state range is [0, 1] in dim 0 and [-2, 2] in dim 1."""
    state = {
        "min": [0.0, -2.0],
        "max": [1.0, 2.0],
        "mean": [0.5, 0.0],
        "std": [0.3, 1.0],
        "q01": [0.0, -2.0],
        "q99": [1.0, 2.0],
        "mask": [True, True],
    }
    action = {k: [0.0] if k != "mask" else [True] for k in state}
    action["std"], action["q99"], action["max"] = [1.0], [1.0], [1.0]
    return {"hand": {"mode": "q99", "action": action, "state": state}}


def test_state_bins_match_hand_computation():
    normalizer = Normalizer(hand_stats())
    step = DiscretizeState(normalizer, num_bins=256)

    def bins(raw):
        return step.bins(normalizer.normalize(np.asarray(raw, np.float32), "state", "hand")).tolist()

    # normalized = 2 (x - q01) / (q99 - q01) - 1; bin = floor((normalized + 1) / 2 * 256), clipped to 0..255
    assert bins([0.5, 0.0]) == [128, 128]  # the middle of both ranges
    assert bins([0.25, 1.0]) == [64, 192]  # a quarter / three quarters of the way
    assert bins([0.0, -2.0]) == [0, 0] and bins([1.0, 2.0]) == [255, 255]  # q01 in the first bin, q99 in the last
    assert bins([-5.0, 9.0]) == [0, 255]  # outside the range: the end bins
    assert bins([0.0039, 0.0]) == [0, 128] and bins([0.0040, 0.0]) == [1, 128]  # dim 0's first edge at 1/256
    sample = {"prompt": "move to the red block", "state": normalizer.normalize(np.float32([0.25, 1.0]), "state")}
    assert step(sample, 0)["prompt"] == "move to the red block\nState: 64 192;"


def test_state_discretization_round_trips_within_one_bin():
    normalizer = Normalizer(hand_stats())
    step = DiscretizeState(normalizer, num_bins=256)
    width = np.array([1.0 / 256, 4.0 / 256])  # (q99 - q01) / num_bins per dimension, by hand
    rng = np.random.default_rng(0)
    raw = np.stack([rng.uniform(0.0, 1.0, 2000), rng.uniform(-2.0, 2.0, 2000)], axis=1).astype(np.float32)
    bins = step.bins(normalizer.normalize(raw, "state", "hand"))
    recovered = normalizer.unnormalize(step.centres(bins), "state", "hand")
    error = np.abs(recovered - raw)
    assert (error <= width / 2 + 1e-6).all()  # the bin centre is within half a bin of the value
    assert (error.max(axis=0) > width / 4).all()  # and the bins are really that wide (not finer)
    np.testing.assert_array_equal(step.bins(step.centres(bins)), bins)  # centres land in their own bin


def test_state_text_needs_a_bounded_normalization():
    stats = hand_stats()
    stats["hand"]["mode"] = "mean_std"
    with pytest.raises(ValueError, match="bounded normalization"):
        DiscretizeState(Normalizer(stats))
    stats = hand_stats()
    stats["hand"]["state"]["mask"] = [True, False]
    with pytest.raises(ValueError, match=r"state dims \[1\] unnormalized"):
        DiscretizeState(Normalizer(stats))


# ---- the shipped configs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "insulated", "readout"),
    [
        ("configs/experiments/toy/qwen_pi05.yaml", True, 1.0),
        ("configs/experiments/toy/qwen_pi05_no_insulation.yaml", False, 1.0),
        ("configs/experiments/toy/qwen_pi05_no_readout.yaml", True, 0.0),
    ],
)
def test_toy_configs_build(path, insulated, readout):
    model = build_framework(load_config(path))
    assert isinstance(model, QwenPI05)
    assert model.config.insulate_vlm is insulated
    assert model.config.auxiliary_losses.get("readout", {}).get("weight", 0.0) == readout
    assert len(model.auxiliary_losses) == (readout > 0)
    assert model.action_model.state_encoder is None  # the state enters as prompt tokens only
    assert model.config.state_tokens.num_bins == 256 and not model.config.fast.bpe_merges


# ---- fast_parallel: the FAST answer's inputs masked ----------------------------------------------------


@pytest.mark.parametrize("parallel", [False, True])
def test_fast_parallel_masks_the_answer_inputs_so_no_answer_token_is_read(parallel):
    """With fast_parallel the FAST loss is the same whatever the answer's input tokens are (each is <|fast_mask|>);
    teacher-forced (pi0.5's), it changes when they are scrambled."""
    policy, examples = tiny(fast_parallel=parallel)
    model = policy.model
    batch = policy.processor(examples)
    answer = batch.vlm.labels != IGNORE_INDEX
    fast_ids = torch.tensor(model.fast_token_ids)
    scrambled_ids = batch.vlm.input_ids.clone()
    scrambled_ids[answer] = fast_ids[(torch.arange(int(answer.sum())) * 7 + 3) % len(fast_ids)]
    assert not torch.equal(scrambled_ids, batch.vlm.input_ids)
    scrambled = dataclasses.replace(batch, vlm=dataclasses.replace(batch.vlm, input_ids=scrambled_ids))
    with torch.no_grad():
        loss, loss_scrambled = (model.loss_terms(b)["fast"] for b in (batch, scrambled))
    if parallel:
        assert model.mask_token_id == model.vlm.token_id(MASK_TOKEN)
        assert torch.equal(loss, loss_scrambled)
    else:
        assert model.mask_token_id is None
        assert abs(float(loss - loss_scrambled)) > 1e-3
