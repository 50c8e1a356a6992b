"""Freezing by regex, per-pattern learning-rate groups, schedule, and resumable batch order."""

from __future__ import annotations

import itertools

import pytest
from torch import nn

from vlablocks.core.config import PlatformConfig
from vlablocks.core.dataloader.base import RawDataset
from vlablocks.core.dataloader.sampler import ResumableSampler
from vlablocks.core.training.batches import micro_batches
from vlablocks.core.training.optim import freeze_modules, lr_lambda, parameter_groups, parameter_summary


class Policy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vlm = nn.ModuleDict({"visual": nn.Linear(4, 4), "language": nn.Linear(4, 4)})
        self.action_model = nn.Linear(4, 2)


def test_freeze_by_search_pattern_and_summary():
    model = Policy()
    counts = freeze_modules(model, [r"vlm\.visual"])
    assert counts == {r"vlm\.visual": 2}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"vlm.visual.weight", "vlm.visual.bias"}
    summary = parameter_summary(model)
    assert "vlm" in summary and "action_model" in summary
    vlm_row = next(line for line in summary.splitlines() if line.startswith("vlm"))
    assert vlm_row.split()[1:] == ["20", "20"]  # language 16+4 trainable, visual 16+4 frozen


def test_freeze_pattern_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"pattern 'vision_tower' matches no parameter"):
        freeze_modules(Policy(), ["vision_tower"])


def test_learning_rate_groups_exclude_frozen_and_use_base_for_the_rest():
    model = Policy()
    freeze_modules(model, ["visual"])
    groups = parameter_groups(model, {"base": 1e-4, "^action_model": 1e-3}, weight_decay=0.0)
    by_name = {g["name"]: g for g in groups}
    assert by_name["^action_model"]["lr"] == 1e-3 and len(by_name["^action_model"]["params"]) == 2
    assert by_name["base"]["lr"] == 1e-4 and len(by_name["base"]["params"]) == 2  # language only
    grouped = {id(p) for g in groups for p in g["params"]}
    assert id(model.vlm["visual"].weight) not in grouped


def test_parameter_matched_by_two_patterns_is_an_error():
    with pytest.raises(ValueError, match="matches several"):
        parameter_groups(Policy(), {"base": 1e-4, "action": 1e-3, "model": 1e-2}, 0.0)


def test_schedule_warmup_then_cosine_to_min():
    values = [lr_lambda(s, 2, 10, "cosine", 0.1) for s in range(11)]
    assert values[0] == pytest.approx(0.5) and values[1] == pytest.approx(1.0)
    assert values[2] == pytest.approx(1.0) and values[10] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[1:], values[2:]))
    assert lr_lambda(7, 2, 10, "constant", 0.1) == 1.0


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_resumed_sampler_replays_the_same_order():
    full = take(ResumableSampler(10, micro_batch=3, seed=5), 30)
    resumed = take(ResumableSampler(10, micro_batch=3, seed=5, start=4), 18)
    assert resumed == full[12:30]
    assert sorted(full[:10]) == list(range(10))  # one epoch is a permutation


def test_two_ranks_together_see_the_one_rank_global_batch():
    single = take(ResumableSampler(11, micro_batch=4, seed=1), 24)
    rank0 = take(ResumableSampler(11, micro_batch=2, seed=1, rank=0, world_size=2), 12)
    rank1 = take(ResumableSampler(11, micro_batch=2, seed=1, rank=1, world_size=2), 12)
    merged = [x for i in range(6) for x in rank0[2 * i : 2 * i + 2] + rank1[2 * i : 2 * i + 2]]
    assert merged == single


class KeyedDataset(RawDataset):
    """Returns the randomness key each sample is loaded with (prompt augmentation and mixtures seed on it)."""

    def __len__(self) -> int:
        return 5

    def load(self, index: int, key: tuple[int, ...]) -> dict:
        return {"index": index, "key": key}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_trainer_batches_key_sample_randomness_on_the_epoch(num_workers):
    dataset = KeyedDataset(PlatformConfig())
    batches = list(itertools.islice(micro_batches(dataset, 5, seed=3, num_workers=num_workers), 3))
    for epoch, batch in enumerate(batches):  # micro batch == dataset size: batch i is epoch i
        assert sorted(s["index"] for s in batch) == list(range(5))
        assert all(s["key"] == (epoch, s["index"]) for s in batch)
    resumed = next(micro_batches(dataset, 5, seed=3, start_micro_step=2, num_workers=num_workers))
    assert resumed == batches[2]
    plain = next(micro_batches(list(range(5)), 5, seed=3))  # a plain sequence still gets plain indices
    assert plain == [s["index"] for s in batches[0]]


def keys_of(samples: list[dict]) -> list[tuple[int, ...]]:
    return [s["key"] for s in samples]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_collate_fn_runs_on_each_micro_batch(num_workers):
    dataset = KeyedDataset(PlatformConfig())
    raw = list(itertools.islice(micro_batches(dataset, 3, seed=2), 2))
    collated = list(itertools.islice(micro_batches(dataset, 3, seed=2, num_workers=num_workers, collate_fn=keys_of), 2))
    assert collated == [keys_of(batch) for batch in raw]
