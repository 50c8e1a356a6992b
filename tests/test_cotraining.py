"""Co-training with vision-language samples (docs/cotraining.md): the toy VQA generator, the JSONL + PNG dataset,
mixtures with robot data, the processor's per-sample kinds, QwenOFT's split losses, and the VQA evaluation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from vlablocks.core.build import build as build_component
from vlablocks.core.config import ConfigError, PlatformConfig, parse_experiment
from vlablocks.core.dataloader.sample import SampleError, is_vl_sample, validate_sample, validate_vl_sample
from vlablocks.core.dataloader.stats import compute_norm_stats
from vlablocks.core.framework.cotraining import check_cotraining
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import build_policy
from vlablocks.core.processor.steps import IGNORE_INDEX
from vlablocks.core.registry import DATASETS
from vlablocks.methods.cotraining.vqa_dataset import VQADataset, normalize_answer, write_vqa_dataset
from vlablocks.methods.cotraining.vqa_eval import answer_questions, vqa_accuracy
from vlablocks.tools.toy.toy_dataset import write_toy_dataset
from vlablocks.tools.toy.toy_scene import COLOURS
from vlablocks.tools.toy.toy_vqa import make_toy_vqa

PLATFORM = {"name": "test", "action_horizon": 4, "action_dim": 3, "state_dim": 2}
TOY = PlatformConfig(name="toy", action_horizon=4, action_dim=2, state_dim=2)
GRID, SIZE = 4, 112


# ---- the toy VQA generator: answers checked against the rendered pixels ----------------------------------------
def colours_in(pixels: np.ndarray) -> set[str]:
    """The block colours whose exact RGB appears in pixels [..., 3]."""
    flat = pixels.reshape(-1, 3)
    return {name for name, rgb in COLOURS.items() if (flat == np.array(rgb, np.uint8)).all(axis=1).any()}


def cell_of(question: str) -> tuple[int, int]:
    """The (row, column) 0-based a colour question names."""
    corners = {"top-left": (0, 0), "top-right": (0, 3), "bottom-left": (3, 0), "bottom-right": (3, 3)}
    for name, cell in corners.items():
        if f"the {name} cell" in question:
            return cell
    row, column = re.search(r"row (\d), column (\d)", question).groups()
    return int(row) - 1, int(column) - 1


def test_toy_vqa_answers_are_correct_by_construction():
    scenes, records = make_toy_vqa(60, seed=7, per_scene=3)
    assert len(scenes) == 60 and len(records) == 180
    answers = {kind: set() for kind in ("count", "colour", "exists")}
    for record in records:
        image = scenes[record["scene"]]["top"]
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        kind, question, answer = record["kind"], record["question"], record["answer"]
        answers[kind].add(answer)
        if kind == "count":
            assert question == "how many blocks are there?"
            assert int(answer) == len(colours_in(image))
        elif kind == "colour":
            row, column = cell_of(question)
            cell = SIZE // GRID
            found = colours_in(image[row * cell : (row + 1) * cell, column * cell : (column + 1) * cell])
            assert found == (set() if answer == "none" else {answer}), (question, answer, found)
        else:
            colour = re.fullmatch(r"is there a (\w+) block\?", question).group(1)
            assert answer == ("yes" if colour in colours_in(image) else "no"), (question, answer)
    # every answer kind is exercised: the checks above are not vacuous
    assert answers["count"] == {"1", "2", "3", "4"}
    assert "none" in answers["colour"] and len(answers["colour"] - {"none"}) >= 3
    assert answers["exists"] == {"yes", "no"}


def test_toy_vqa_kinds_and_occupied_share():
    """Training sets may ask one kind and name occupied cells more often; 0.5 (held-out sets) draws as before."""
    _, occupied = make_toy_vqa(40, seed=11, per_scene=1, kinds=("colour",), occupied_share=1.0)
    _, empty = make_toy_vqa(40, seed=11, per_scene=1, kinds=("colour",), occupied_share=0.0)
    assert {r["kind"] for r in occupied} == {"colour"} and len(occupied) == 40
    assert all(r["answer"] != "none" for r in occupied)
    assert all(r["answer"] == "none" for r in empty)  # scenes hold at most 4 blocks on 16 cells: a cell is free
    _, default = make_toy_vqa(40, seed=11, per_scene=3)
    _, half = make_toy_vqa(40, seed=11, per_scene=3, kinds=("count", "colour", "exists"), occupied_share=0.5)
    assert default == half
    shares = [r["answer"] != "none" for r in default if r["kind"] == "colour"]
    assert 0.2 < sum(shares) / len(shares) < 0.8
    with pytest.raises(ValueError, match="question kinds"):
        make_toy_vqa(2, seed=1, kinds=("color",))
    with pytest.raises(ValueError, match="occupied_share"):
        make_toy_vqa(2, seed=1, occupied_share=1.5)


# ---- the dataset ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vqa_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_vqa")
    scenes, records = make_toy_vqa(12, seed=3, per_scene=3)
    write_vqa_dataset(root, scenes, records, "toy_vqa", overwrite=True)
    return root, scenes, records


def test_vqa_dataset_round_trips(vqa_root):
    root, scenes, records = vqa_root
    dataset = VQADataset(VQADataset.Config(root=str(root)), platform=TOY)
    assert len(dataset) == len(records) and dataset.camera_keys == ["top"] and dataset.name == "toy_vqa"
    for index, record in enumerate(records):
        sample = dataset[index]
        validate_vl_sample(sample, camera_keys=["top"])
        assert is_vl_sample(sample)
        np.testing.assert_array_equal(sample["images"]["top"], scenes[record["scene"]]["top"])
        assert (sample["prompt"], sample["answer"]) == (record["question"], record["answer"])
    assert not list(root.rglob("*.pkl")) and not list(root.rglob("*.pt"))
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    try:
        with pytest.raises(ConfigError, match="version 99; expected 'vlablocks-vqa' version 1"):
            VQADataset(VQADataset.Config(root=str(root)), platform=TOY)
    finally:
        (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        write_vqa_dataset(root, scenes, records, "toy_vqa")


def test_vl_sample_contract():
    image = np.zeros((8, 8, 3), np.uint8)
    good = {"images": {"top": image}, "prompt": "how many blocks are there?", "answer": "2", "dataset_name": "v"}
    validate_vl_sample(good, camera_keys=["top"])
    with pytest.raises(SampleError, match=r"missing key\(s\) \['answer'\]"):
        validate_vl_sample({k: v for k, v in good.items() if k != "answer"})
    with pytest.raises(SampleError, match="has an 'answer' and no 'action'"):
        validate_vl_sample({**good, "action": np.zeros((4, 2), np.float32)})
    with pytest.raises(SampleError, match="'answer' must be a non-empty string"):
        validate_vl_sample({**good, "answer": " "})
    assert normalize_answer("  Red. ") == "red"


# ---- mixtures --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixture(tmp_path_factory, vqa_root):
    toy = tmp_path_factory.mktemp("toy_robot")
    write_toy_dataset(toy, episodes=3, seed=0, overwrite=True)
    robot = {"name": "lerobot", "root": str(toy), "dataset_name": "toy", "camera_keys": ["observation.images.top"]}
    options = {"name": "mixture", "datasets": [robot, {"name": "vqa", "root": str(vqa_root[0])}], "weights": [7, 3]}
    return build_component(DATASETS, options, platform=TOY, seed=0)


def test_mixture_ratio_over_10000_draws_is_within_2_percent(mixture):
    picks = np.array([mixture.pick((0, i))[0] for i in range(10_000)])
    assert abs((picks == 1).mean() - 0.3) < 0.02, (picks == 1).mean()
    assert np.allclose(mixture.probabilities, [0.7, 0.3])
    kinds = [is_vl_sample(mixture[(0, i)]) for i in range(40)]
    assert kinds == [bool(p) for p in picks[:40]]
    for i in range(40):
        sample = mixture[(0, i)]
        if is_vl_sample(sample):
            validate_vl_sample(sample, camera_keys=["top"])
        else:
            validate_sample(sample, camera_keys=["top"], state_dim=2, action_shape=(4, 2))
    assert sorted(compute_norm_stats(mixture)) == ["toy"]  # the VL dataset has no stats


# ---- the processor and QwenOFT's losses -------------------------------------------------------------------------
def vl_samples(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    answers = ["red", "none", "3", "yes"]
    return [
        {
            "images": {"image": rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)},
            "prompt": f"question {i}: what colour is the block in row {i + 1}, column 2?",
            "answer": answers[i % len(answers)],
            "dataset_name": "vqa",
        }
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def oft():
    torch.manual_seed(0)
    robot = synthetic_examples(PlatformConfig(**PLATFORM), 4, seed=1)
    experiment = parse_experiment(
        {"platform": PLATFORM, "framework": {"name": "QwenOFT", "action_model": {"hidden_dim": 64}}}
    )
    return build_policy(experiment, synthetic_norm_stats(robot), camera_keys=["image"]), robot


def test_processor_marks_vl_samples_and_labels_only_their_answers(oft):
    policy, robot = oft
    batch = policy.processor([robot[0], *vl_samples(2), robot[1]])
    assert batch.is_robot.tolist() == [True, False, False, True]
    assert torch.equal(batch.action_is_pad[1:3], torch.ones(2, 4, dtype=torch.bool))
    assert not batch.action_is_pad[[0, 3]].any()
    assert torch.equal(batch.actions[1:3], torch.zeros(2, 4, 3)) and torch.equal(batch.state[1:3], torch.zeros(2, 2))
    labels = batch.vlm.labels
    assert (labels[[0, 3]] == IGNORE_INDEX).all()
    tokenizer = policy.model.vlm.tokenizer
    for row, answer in ((1, "red"), (2, "none")):
        assert tokenizer.decode(labels[row][labels[row] != IGNORE_INDEX]) == answer + "<|im_end|>"
    inference = policy.processor(vl_samples(2), targets=False)
    assert inference.vlm.labels is None and inference.is_robot.tolist() == [False, False]
    query = policy.model.query_token_ids[-1]
    assert (inference.vlm.input_ids[:, -1] == query).all()  # the prompt ends at the suffix: the answer is withheld


def grads(module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters()]


def test_vl_batch_reaches_only_the_answer_loss(oft):
    policy, robot = oft
    framework = policy.model
    framework.train()
    framework.zero_grad(set_to_none=True)
    out = framework(policy.processor(vl_samples(3)))
    out["loss"].backward()
    head = [*grads(framework.action_model), *grads(framework.proprio)]
    assert head and all(g is not None and torch.count_nonzero(g) == 0 for g in head)
    assert out["log"]["action_loss"].item() == 0.0 and out["loss"].item() == out["log"]["answer_loss"].item() > 0
    vlm_grads = [g for g in grads(framework.vlm) if g is not None]
    assert any(torch.count_nonzero(g) > 0 for g in vlm_grads)


def test_robot_rows_reach_only_the_action_loss(oft):
    policy, robot = oft
    framework, processor = policy.model, policy.processor
    framework.train()
    robot_only = framework(processor(robot[:2]))
    vl_only = framework(processor(vl_samples(2)))
    mixed = framework(processor([robot[0], *vl_samples(2), robot[1]]))
    # each term of the mixed batch is the one its own kind of samples gives alone: no cross-talk
    torch.testing.assert_close(mixed["log"]["action_loss"], robot_only["loss"].detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed["log"]["answer_loss"], vl_only["log"]["answer_loss"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed["loss"].detach(), mixed["log"]["action_loss"] + mixed["log"]["answer_loss"])
    # a robot-only batch: the plain action loss, no answer term at all
    assert "log" not in robot_only
    head_only = framework.action_model.compute_loss(
        framework.condition(processor(robot[:2])), *_targets(processor, robot[:2])
    )["loss"]
    assert robot_only["loss"].item() == head_only.item()
    # moving the robot targets changes only the action loss; a different answer changes only the answer loss
    shifted = [{**s, "action": s["action"] + 1.0} for s in robot[:2]]
    other = [{**s, "answer": "blue"} for s in vl_samples(2)]
    moved = framework(processor([shifted[0], *other, shifted[1]]))
    assert abs(float(moved["log"]["action_loss"]) - float(mixed["log"]["action_loss"])) > 1e-3
    assert abs(float(moved["log"]["answer_loss"]) - float(mixed["log"]["answer_loss"])) > 1e-3
    again = framework(processor([shifted[0], *vl_samples(2), shifted[1]]))
    torch.testing.assert_close(again["log"]["answer_loss"], mixed["log"]["answer_loss"], atol=1e-5, rtol=1e-5)


def _targets(processor, samples):
    batch = processor(samples)
    return batch.actions, batch.action_is_pad, batch.state


def test_frameworks_without_vl_support_are_refused_in_one_line(oft, mixture):
    policy, _ = oft
    assert check_cotraining(policy.model, mixture) is True
    assert check_cotraining(policy.model, mixture.components[0]) is False

    class NoVL(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match=r"NoVL lacks the capability VisionLanguageCoTraining .* have it: QwenOFT;"):
        check_cotraining(NoVL(), mixture)


def test_training_logs_the_vl_share_of_every_step(mixture, tmp_path):
    from vlablocks.core.training.batches import micro_batches
    from vlablocks.core.training.train import train

    framework = {"name": "QwenOFT", "vlm": {"image_size": 56}, "action_model": {"hidden_dim": 32, "num_blocks": 1}}
    trainer = {"max_steps": 6, "batch_size": 8, "save_every": 100, "log_every": 1, "torch_threads": 1}
    platform = {"name": "toy", "action_horizon": 4, "action_dim": 2, "state_dim": 2}
    experiment = parse_experiment(
        {"run_dir": str(tmp_path / "run"), "platform": platform, "framework": framework, "trainer": trainer}
    )
    train(experiment, dataset=mixture)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 7))
    # the logged share is each step's own: the batches the trainer drew (same sampler, same seed) hold exactly it
    batches = micro_batches(mixture, 8, experiment.seed)
    expected = [np.mean([is_vl_sample(s) for s in next(batches)]) for _ in range(6)]
    assert [m["vl_share"] for m in lines] == pytest.approx(expected) and 0 < np.mean(expected) < 1
    assert json.loads((tmp_path / "run" / "norm_stats.json").read_text()).keys() == {"toy"}


# ---- the VQA evaluation ---------------------------------------------------------------------------------------
def test_vqa_eval_decodes_what_the_model_learned(oft, tmp_path):
    """Overfit two questions through the training path, then greedy decoding must return their answers."""
    policy, robot = oft
    scenes = [{"image": np.full((56, 56, 3), c, np.uint8)} for c in (30, 220)]
    records = [
        {"scene": 0, "question": "is there a red block?", "answer": "yes", "kind": "exists"},
        {"scene": 1, "question": "how many blocks are there?", "answer": "3", "kind": "count"},
    ]
    write_vqa_dataset(tmp_path, scenes, records, "vqa")
    dataset = VQADataset(VQADataset.Config(root=str(tmp_path)), platform=PlatformConfig(**PLATFORM))
    assert vqa_accuracy(policy, dataset)["total"] == 2
    torch.manual_seed(0)
    framework = policy.model
    optimizer = torch.optim.AdamW(framework.parameters(), lr=3e-3)
    batch = policy.processor([dataset[0], dataset[1], robot[0]])
    framework.train()
    for _ in range(60):
        optimizer.zero_grad()
        framework(batch)["loss"].backward()
        optimizer.step()
    assert answer_questions(policy, [dataset[0], dataset[1]]) == ["yes", "3"]
    result = vqa_accuracy(policy, dataset)
    assert result["accuracy"] == 1.0 and result["per_kind"] == {"count": 1.0, "exists": 1.0}
    assert result["predictions"] == ["yes", "3"]
