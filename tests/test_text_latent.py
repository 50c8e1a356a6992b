"""Text latents: the residual-stream hook (vlablocks/core/vlm/steering.py), extraction / interpolation / decoding
(vlablocks/methods/steering/text_latent.py), the steered policy (vlablocks/methods/steering/steered_policy.py) and `vlablocks text-latent`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from head_helpers import wake
from test_frameworks import built, scaled_examples

from vlablocks.cli.main import main
from vlablocks.core.policy.policy import Policy
from vlablocks.core.vlm.steering import Steering, capture_residuals, instruction_mask, steering, text_positions
from vlablocks.methods.steering.steered_policy import LatentOptions, SteeredPolicy, blank_prompt
from vlablocks.methods.steering.text_latent import TextLatents, decode, extract, interpolation_weight

TASKS = ("move to the red block", "go to the blue square")


def examples_with(prompts: list[str], seed: int = 0) -> list[dict]:
    examples = scaled_examples(len(prompts), seed=seed)
    for example, prompt in zip(examples, prompts, strict=True):
        example["prompt"] = prompt
    return examples


def awake(name: str, examples: list[dict]) -> Policy:
    """A tiny policy whose head's zero-initialized gates are randomized, so its actions read the VLM."""
    policy = built(name, examples).eval()
    wake(policy.model.action_model)
    return policy


def residual_count(framework) -> int:
    return framework.vlm.num_layers + 1


def test_text_positions_by_hand():
    # ids: 5 = vision_end, 6 = turn end; row 0: two views, the instruction is [7, 8]; row 1: left padding (0)
    ids = torch.tensor([[1, 5, 2, 5, 7, 8, 6, 9, 6], [0, 0, 0, 1, 5, 7, 6, 9, 9]])
    expected = torch.tensor(
        [[False, False, False, False, True, True, False, False, False], [False] * 5 + [True, False, False, False]]
    )
    assert torch.equal(text_positions(ids, vision_end_id=5, turn_end_id=6), expected)


@pytest.mark.parametrize("name", ["QwenFlowMatching", "QwenOFT"])
@pytest.mark.parametrize("mode", ["add", "blend"])
def test_alpha_zero_leaves_outputs_bit_identical(name, mode):
    examples = examples_with(list(TASKS))
    policy = awake(name, examples)
    framework = policy.model
    batch = policy.processor(examples, targets=False)
    with torch.no_grad():
        plain = framework.sample_actions(batch, torch.Generator().manual_seed(0))["actions"]
        indices = tuple(range(residual_count(framework)))
        vectors = torch.randn(2, len(indices), 1, framework.vlm.hidden_size) * 10
        with steering(framework.vlm, Steering(vectors, indices, mode, alpha=0.0)):
            steered = framework.sample_actions(batch, torch.Generator().manual_seed(0))["actions"]
        with steering(framework.vlm, Steering(vectors, indices, mode, alpha=1.0)):
            moved = framework.sample_actions(batch, torch.Generator().manual_seed(0))["actions"]
        after = framework.sample_actions(batch, torch.Generator().manual_seed(0))["actions"]  # hooks removed on exit
    assert torch.equal(steered, plain)
    assert not torch.allclose(moved, plain)  # the same vectors at alpha 1 do reach the actions
    assert torch.equal(after, plain)  # leaving the block removed every hook


def test_an_edit_writes_only_the_text_positions_of_its_index():
    examples = examples_with(list(TASKS))
    policy = built("QwenFlowMatching", examples).eval()
    framework = policy.model
    vlm = framework.vlm
    batch = policy.processor(examples, targets=False)
    mask = instruction_mask(vlm, batch.vlm.input_ids)
    vectors = torch.randn(2, 1, 1, vlm.hidden_size)
    plain, edited = [], []
    with torch.no_grad():
        with capture_residuals(vlm, plain):
            vlm(batch.vlm)
        with steering(vlm, Steering(vectors, (1,), "blend", alpha=1.0)), capture_residuals(vlm, edited):
            vlm(batch.vlm)
    assert len(plain) == residual_count(framework)
    torch.testing.assert_close(edited[0], plain[0])  # index 0 (before the edit) untouched
    expected = vectors[:, 0, 0][:, None].expand(-1, mask.shape[1], -1)
    torch.testing.assert_close(edited[1][mask], expected[mask])
    torch.testing.assert_close(edited[1][~mask], plain[1][~mask])
    assert not torch.allclose(edited[2][mask], plain[2][mask])  # the next layer reads the edit


def test_extraction_on_a_two_task_batch_equals_a_hand_computed_mean():
    prompts = [TASKS[0], TASKS[1], TASKS[0], TASKS[1]]
    examples = examples_with(prompts)
    policy = built("QwenFlowMatching", examples).eval()
    latents = extract(policy, [examples[:3], examples[3:]])  # two batches: sums carry across them
    assert latents.tasks == list(TASKS) and latents.counts == [2, 2]
    vlm, tokenizer = policy.model.vlm, policy.model.vlm.tokenizer
    batch = policy.processor(examples, targets=False)
    with torch.no_grad():
        hidden = vlm(batch.vlm).hidden_states  # transformers' own record: indices 0..L-1 are the residual stream
    for t, task in enumerate(TASKS):
        ids = tokenizer(task, add_special_tokens=False)["input_ids"]
        rows = [i for i, p in enumerate(prompts) if p == task]
        per_row = []
        for row in rows:  # find the instruction's ids in the row by hand
            row_ids = batch.vlm.input_ids[row].tolist()
            start = next(s for s in range(len(row_ids)) if row_ids[s : s + len(ids)] == ids)
            per_row.append(torch.stack([hidden[r][row, start : start + len(ids)] for r in range(vlm.num_layers)]))
        hand = torch.stack(per_row).mean(0)  # [L, P, H]
        torch.testing.assert_close(latents.positions[t][: vlm.num_layers], hand, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(latents.mean[t][: vlm.num_layers], hand.mean(1), rtol=1e-4, atol=1e-5)
        assert latents.positions[t].shape == (vlm.num_layers + 1, len(ids), vlm.hidden_size)


def test_the_latent_of_one_frame_on_a_blank_prompt_reproduces_its_actions(tmp_path):
    examples = examples_with([TASKS[0]])
    policy = awake("QwenFlowMatching", examples)
    latents = extract(policy, [examples])
    latents.save(tmp_path / "latents.safetensors")
    loaded = TextLatents.load(tmp_path / "latents.safetensors")
    assert loaded.tasks == latents.tasks and torch.equal(loaded.positions[0], latents.positions[0])
    obs = {key: value for key, value in examples[0].items() if key not in ("action", "action_is_pad")}
    real = policy.infer(obs)["actions"]
    steered = SteeredPolicy(policy, loaded, LatentOptions(mode="blend", alpha=1.0))
    blank = SteeredPolicy(policy, loaded, LatentOptions(mode="blend", alpha=0.0))
    np.testing.assert_allclose(steered.infer(obs)["actions"], real, atol=1e-4)
    assert np.abs(blank.infer(obs)["actions"] - real).max() > 1e-3  # the blank prompt alone does not
    with pytest.raises(KeyError, match="no text latent for task 'reach the cube'"):
        steered.infer({**obs, "prompt": "reach the cube"})


def test_interpolation_weight_and_the_steered_schedule(tmp_path):
    assert [interpolation_weight(k, "step", 2) for k in range(4)] == [0.0, 0.0, 1.0, 1.0]
    assert [interpolation_weight(k, "linear", 4) for k in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    with pytest.raises(ValueError, match="switch-at"):
        interpolation_weight(0, "step", 0)
    examples = examples_with(list(TASKS))
    policy = built("QwenFlowMatching", examples).eval()
    latents = extract(policy, [examples])
    a, b = latents.vector(TASKS[0], "mean"), latents.vector(TASKS[1], "mean")
    options = LatentOptions(task="auto", task_2="auto", schedule="linear", switch_at=2, kind="mean")
    steered = SteeredPolicy(policy, latents, options)
    obs = {"prompt": "touch the red block, then the blue block", "subtasks": list(TASKS)}
    seen = []
    for _ in range(3):
        seen.append(steered.vectors(obs))
        steered.calls += 1
    torch.testing.assert_close(seen[0], a)
    torch.testing.assert_close(seen[1], 0.5 * a + 0.5 * b)
    torch.testing.assert_close(seen[2], b)
    steered.infer({**{k: v for k, v in examples[0].items() if k != "action"}, **obs, "episode_start": True})
    assert steered.calls == 1  # episode_start reset the count before this call
    with pytest.raises(ValueError, match="subtasks"):
        steered.vectors({"prompt": "go"})


def test_decoding_the_embedding_latent_of_one_frame_gives_back_its_tokens():
    examples = examples_with([TASKS[1]])
    policy = built("QwenFlowMatching", examples).eval()
    latents = extract(policy, [examples])
    nearest = decode(policy.model, latents.vector(TASKS[1])[0], top_k=2)
    tokens = policy.model.vlm.tokenizer.tokenize(TASKS[1])
    assert [row[0][0] for row in nearest] == tokens
    assert all(abs(row[0][1] - 1.0) < 1e-5 and row[1][1] < row[0][1] for row in nearest)


def test_blank_prompt_has_exactly_the_requested_tokens():
    examples = examples_with([TASKS[0]])
    tokenizer = built("QwenFlowMatching", examples).model.vlm.tokenizer
    for length in (1, 5, 17):
        assert len(tokenizer(blank_prompt(tokenizer, length), add_special_tokens=False)["input_ids"]) == length


def test_cli_extracts_every_prompt_of_a_dataset_and_decodes_to_a_prompts_file(tmp_path, toy_dataset, capsys):
    from vlablocks.core.config import load_config
    from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
    from vlablocks.core.policy.policy import build_policy

    experiment = load_config(
        "configs/experiments/toy/qwen_flow_matching.yaml",
        ["framework.action_model.hidden_dim=32", "framework.action_model.num_layers=2"],
    )
    samples = synthetic_examples(experiment.platform, 8, image_size=112, dataset_name="toy", camera_keys=["top"])
    checkpoint = build_policy(experiment, synthetic_norm_stats(samples), camera_keys=["top"]).save_pretrained(
        tmp_path / "ckpt"
    )
    out = tmp_path / "latents.safetensors"
    assert (
        main(["text-latent", "extract", "--ckpt", str(checkpoint), "--data", str(toy_dataset), "--out", str(out)]) == 0
    )
    latents = TextLatents.load(out)
    from vlablocks.core.dataloader.checkpoint_dataset import checkpoint_dataset

    dataset = checkpoint_dataset(Policy.from_pretrained(checkpoint), str(toy_dataset))
    prompts = [dataset[i]["prompt"] for i in range(len(dataset))]
    assert sorted(latents.tasks) == sorted(set(prompts))
    assert latents.counts == [prompts.count(task) for task in latents.tasks]
    prompts_file = tmp_path / "decoded.yaml"
    argv = ["text-latent", "decode", "--ckpt", str(checkpoint), "--latents", str(out), "--out", str(prompts_file)]
    assert main(argv) == 0
    decoded = yaml.safe_load(prompts_file.read_text())
    assert list(decoded) == latents.tasks and all(len(v) == 1 and isinstance(v[0], str) for v in decoded.values())
    capsys.readouterr()
    assert main(["text-latent", "decode", "--ckpt", str(checkpoint), "--latents", str(tmp_path / "none")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_the_hook_edits_only_the_instruction_on_both_qwen_families(family):
    from vlm_helpers import build, encode, random_views

    vlm = build(family).eval()
    rng = np.random.default_rng(0)
    examples = [
        {"views": random_views(rng, [(56, 56)]), "prompt": "pick the red block"},
        {"views": random_views(rng, [(56, 56), (56, 56)]), "prompt": "open the top drawer now"},
    ]
    inputs = encode(vlm, examples)
    mask = instruction_mask(vlm, inputs.input_ids)
    for row, example in enumerate(examples):  # exactly the instruction's tokens
        assert inputs.input_ids[row][mask[row]].tolist() == vlm.tokenizer(example["prompt"])["input_ids"]
    vectors = torch.randn(2, 2, 1, vlm.hidden_size)
    plain, zero, edited = [], [], []
    with torch.no_grad():
        with capture_residuals(vlm, plain):
            before = vlm(inputs).last_hidden_state
        with steering(vlm, Steering(vectors, (0, vlm.num_layers), "blend", alpha=0.0)), capture_residuals(vlm, zero):
            unchanged = vlm(inputs).last_hidden_state
        with steering(vlm, Steering(vectors, (0, vlm.num_layers), "blend", alpha=1.0)), capture_residuals(vlm, edited):
            vlm(inputs)
    assert torch.equal(unchanged, before) and all(torch.equal(a, b) for a, b in zip(zero, plain, strict=True))
    for k, index in enumerate((0, vlm.num_layers)):
        expected = vectors[:, k, 0][:, None].expand(-1, mask.shape[1], -1)
        torch.testing.assert_close(edited[index][mask], expected[mask])
    torch.testing.assert_close(edited[0][~mask], plain[0][~mask])
    assert not torch.allclose(edited[1][~mask], plain[1][~mask])  # later tokens read the edited embeddings


def test_a_served_steered_policy_answers_like_the_local_one():
    from deployment.client import PolicyClient
    from vlablocks.core.serving.server import running_server

    examples = examples_with([TASKS[0]])
    policy = awake("QwenFlowMatching", examples)
    latents = extract(policy, [examples])
    obs = {key: value for key, value in examples[0].items() if key not in ("action", "action_is_pad")}
    local = SteeredPolicy(policy, latents, LatentOptions()).infer(obs)["actions"]
    served = SteeredPolicy(policy, latents, LatentOptions())
    with running_server(served) as server, PolicyClient("127.0.0.1", server.port) as client:
        remote = client.infer({**obs, "episode_start": True})["actions"]
        assert served.calls == 0  # the connection's own session counted the call, not the shared policy
    np.testing.assert_allclose(remote, local, atol=1e-6)
    blank = blank_prompt(policy.model.vlm.tokenizer, latents.positions[0].shape[1])
    plain = policy.infer({**obs, "prompt": blank})["actions"]
    assert np.abs(remote - plain).max() > 1e-3
