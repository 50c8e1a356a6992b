"""Length-grouped batching (`trainer.group_by_length`, vlablocks/core/dataloader/sampler.py): less padding, every
index once per epoch, the same order from the same seed, exact resume, disjoint ranks, and the datasets' prompts
read without loading frames."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_training import examples, experiment

from vlablocks.core.build import build
from vlablocks.core.config import PlatformConfig, load_config
from vlablocks.core.config.trainer import TrainerConfig
from vlablocks.core.dataloader.base import RawDataset
from vlablocks.core.dataloader.lengths import padding_share, prompt_lengths
from vlablocks.core.dataloader.sampler import ResumableSampler, length_grouped
from vlablocks.core.registry import DATASETS
from vlablocks.core.training.batches import length_source
from vlablocks.core.training.train import train

REPO = Path(__file__).resolve().parents[1]
LENGTHS = np.random.default_rng(1).integers(5, 60, size=103)  # 103: epochs do not fall on micro-batch edges


def test_grouping_cuts_the_padding_of_a_hand_made_epoch():
    """Prompts of 1..8 tokens, micro-batches of 2. In the order 0..7 the pairs are (1, 8), (2, 7), (3, 6), (4, 5):
    every pair is padded to 8, 7, 6, 5 -> 2 x 26 = 52 tokens for 36 real ones, 16 / 52 padding. Grouped (one
    mega-batch of 4 micro-batches, sorted) the pairs are (8, 7), (6, 5), (4, 3), (2, 1) in some order: 2 x 20 = 40
    tokens, 4 / 40 padding."""
    lengths = np.array([1, 8, 2, 7, 3, 6, 4, 5])
    order = np.arange(8)
    assert padding_share(lengths[order].reshape(-1, 2).tolist()) == pytest.approx(16 / 52)
    grouped = length_grouped(order, lengths, micro_batch=2, mega_batches=4, lead=0, rng=np.random.default_rng(0))
    assert sorted(grouped) == list(range(8))
    pairs = lengths[grouped].reshape(-1, 2)
    assert sorted(map(tuple, pairs)) == [(2, 1), (4, 3), (6, 5), (8, 7)]
    assert padding_share(pairs.tolist()) == pytest.approx(4 / 40)


def sampler(grouped: bool = True, **options) -> ResumableSampler:
    """Over LENGTHS, micro-batches of 4, mega-batches of 5 micro-batches; `grouped` False: the plain order."""
    lengths = (lambda epoch: LENGTHS) if grouped else None
    defaults = {"micro_batch": 4, "seed": 0, "lengths": lengths, "mega_batches": 5}
    return ResumableSampler(len(LENGTHS), **{**defaults, **options})


def test_every_index_once_per_epoch_less_padding_and_the_same_order_from_the_same_seed():
    stream = list(islice(iter(sampler()), 3 * len(LENGTHS)))
    for epoch in range(3):
        assert sorted(stream[epoch * 103 : (epoch + 1) * 103]) == list(range(103))
    plain = list(islice(iter(sampler(grouped=False)), 3 * len(LENGTHS)))

    def share(indices: list[int]) -> float:
        return padding_share([LENGTHS[indices[i : i + 4]].tolist() for i in range(0, len(indices) - 3, 4)])

    assert share(stream) < 0.5 * share(plain), (share(stream), share(plain))
    assert stream == list(islice(iter(sampler()), 3 * len(LENGTHS)))
    assert stream != list(islice(iter(sampler(seed=1)), 3 * len(LENGTHS)))


def test_resuming_replays_the_stream_and_ranks_take_disjoint_micro_batches():
    full = list(islice(iter(sampler()), 200))
    assert list(islice(iter(sampler(start=7)), 200 - 28)) == full[28:]  # micro-step 7 = position 28
    ranks = [list(islice(iter(sampler(rank=r, world_size=2)), 4 * 25)) for r in range(2)]
    # Global micro-batch k is rank 0's micro-batch k, then rank 1's: together, the one-process stream.
    together = [i for k in range(25) for rank in ranks for i in rank[4 * k : 4 * k + 4]]
    assert together == full
    assert sorted(together[:103]) == list(range(103))  # the first epoch: every index once, across both ranks


def test_datasets_name_their_prompts_as_they_load_them(toy_dataset):
    """LeRobot (with prompt augmentation) and a mixture of it: `prompt(i, key)` equals `ds[(epoch, i)]["prompt"]`."""
    augmentation = [f"dataset.prompt_augmentation.path={REPO}/configs/experiments/prompts/toy.yaml"]
    config = load_config(REPO / "configs/datasets/toy_prompt_aug.yaml", [f"dataset.root={toy_dataset}", *augmentation])
    leaf = build(DATASETS, config.dataset, platform=config.platform, seed=0)
    mixture = build(DATASETS, {"name": "mixture", "datasets": [config.dataset]}, platform=config.platform, seed=0)
    for dataset in (leaf, mixture):
        for epoch, index in [(0, 0), (1, 0), (2, 17), (3, len(dataset) - 1)]:
            assert dataset.prompt(index, (epoch, index)) == dataset[(epoch, index)]["prompt"]
    lengths = prompt_lengths(leaf, len)
    assert lengths(0).shape == (len(leaf),) and not np.array_equal(lengths(0), lengths(1))  # augmented per epoch


def test_a_dataset_that_cannot_name_its_prompts_refuses_the_option_before_training():
    class FramesOnly(RawDataset):
        def __len__(self) -> int:
            return 4

    trainer = TrainerConfig(group_by_length=True)
    processor = SimpleNamespace(tokenize=SimpleNamespace(tokenizer=None))
    with pytest.raises(NotImplementedError, match="set trainer.group_by_length: false"):
        length_source(trainer, FramesOnly(PlatformConfig()), processor)
    assert length_source(TrainerConfig(), FramesOnly(PlatformConfig()), processor) is None  # off: not asked


def test_training_groups_its_batches_and_resumes_exactly(tmp_path):
    data = examples()
    prompts = ["pick up the red block and place it on the far left side of the green plate", "open", "push left"]
    for i, sample in enumerate(data):
        sample["prompt"] = prompts[i % 3]
    options = {"group_by_length": True, "group_by_length_mega_batches": 2, "lr_schedule": "constant"}
    whole = train(experiment(tmp_path / "whole", max_steps=3, **options), dataset=data)["losses"]
    train(experiment(tmp_path / "cut", max_steps=2, save_every=2, **options), dataset=data)
    resumed = train(experiment(tmp_path / "cut", max_steps=3, save_every=2, resume=True, **options), dataset=data)
    assert resumed["losses"] == whole
    plain = train(experiment(tmp_path / "plain", max_steps=3, lr_schedule="constant"), dataset=data)["losses"]
    assert plain[0] != whole[0]  # the option reaches the loop: other samples share the first batch
