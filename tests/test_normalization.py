"""Normalizer (all modes, masks, numpy and torch, per-row datasets, file round trip) and streaming stats vs numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlablocks.core.dataloader.normalization import MODES, Normalizer
from vlablocks.core.dataloader.stats import RunningStats

RNG = np.random.default_rng(0)
# Dimension 2 is a "gripper": binary, left alone by the mask; dimension 3 is constant.
DATA = np.concatenate(
    [RNG.normal(3.0, 2.0, (500, 2)), RNG.integers(0, 2, (500, 1)), np.full((500, 1), 5.0)], axis=1
).astype(np.float32)
MASK = [True, True, False, True]


def numpy_stats(x: np.ndarray, mask: list[bool]) -> dict:
    """Reference stats computed directly with numpy (not by the code under test)."""
    return {
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "q01": np.quantile(x, 0.01, axis=0).tolist(),
        "q99": np.quantile(x, 0.99, axis=0).tolist(),
        "mask": mask,
    }


def normalizer(mode: str, mask: list[bool] = MASK) -> Normalizer:
    return Normalizer({"robot": {"mode": mode, "action": numpy_stats(DATA, mask), "state": numpy_stats(DATA, mask)}})


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_numpy_and_torch(mode):
    norm = normalizer(mode)
    stats = numpy_stats(DATA, MASK)
    # q99 clips what lies outside [q01, q99]: the exact inverse holds inside that range.
    inside = np.all((DATA >= np.array(stats["q01"])) & (DATA <= np.array(stats["q99"])), axis=1)
    x = DATA[inside] if mode == "q99" else DATA
    y = norm.normalize(x, "action", "robot")
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(norm.unnormalize(y, "action", "robot"), x, rtol=1e-5, atol=1e-5)
    y_torch = norm.normalize(torch.from_numpy(x), "action", "robot")
    assert isinstance(y_torch, torch.Tensor) and y_torch.dtype == torch.float32
    np.testing.assert_allclose(y_torch.numpy(), y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(norm.unnormalize(y_torch, "action", "robot").numpy(), x, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y[:, 2], x[:, 2])  # masked-out dimension untouched


def test_mode_formulas_against_hand_computed_values():
    s = numpy_stats(DATA, [True] * 4)
    x = DATA[:5, :2]
    q01, q99 = np.array(s["q01"][:2]), np.array(s["q99"][:2])
    expected = {
        "q99": np.clip(2 * (x - q01) / (q99 - q01) - 1, -1, 1),
        "min_max": 2 * (x - np.array(s["min"][:2])) / (np.array(s["max"][:2]) - np.array(s["min"][:2])) - 1,
        "mean_std": (x - np.array(s["mean"][:2])) / np.array(s["std"][:2]),
        "identity": x,
    }
    for mode, want in expected.items():
        norm = normalizer(mode, [True] * 4)
        np.testing.assert_allclose(norm.normalize(DATA[:5], "state", "robot")[:, :2], want, rtol=1e-5, atol=1e-6)


def test_q99_clips_to_unit_range_and_constant_dims_stay_finite():
    norm = normalizer("q99", [True] * 4)
    y = norm.normalize(DATA * 10, "action", "robot")
    assert y[:, :3].min() == -1.0 and y[:, :3].max() == 1.0
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(DATA[:3], "action", "robot"))[:, 3], 5.0)


def test_torch_keeps_device_dtype_and_leading_dims():
    norm = normalizer("mean_std")
    x = torch.from_numpy(DATA[:6]).to(torch.float64).reshape(2, 3, 4)
    y = norm.normalize(x, "action", "robot")
    assert y.shape == (2, 3, 4) and y.dtype == torch.float64


def test_per_row_dataset_names_select_each_rows_stats():
    a = numpy_stats(DATA, [True] * 4)
    b = numpy_stats(DATA * 3 + 1, [True] * 4)
    norm = Normalizer({"a": {"mode": "mean_std", "action": a}, "b": {"mode": "min_max", "action": b}})
    batch = np.stack([DATA[:4], DATA[4:8]])  # [B=2, T=4, D=4]
    y = norm.normalize(batch, "action", ["a", "b"])
    np.testing.assert_allclose(y[0], norm.normalize(DATA[:4], "action", "a"), rtol=1e-6)
    np.testing.assert_allclose(y[1], norm.normalize(DATA[4:8], "action", "b"), rtol=1e-6)
    np.testing.assert_allclose(norm.unnormalize(y, "action", ["a", "b"]), batch, rtol=1e-5, atol=1e-5)


def test_dimension_mismatch_names_expected_and_got():
    norm = normalizer("q99")
    with pytest.raises(ValueError, match=r"expected dim 4 \(from the stats file\), got data of dim 7"):
        norm.normalize(np.zeros((3, 7), np.float32), "action", "robot")
    with pytest.raises(ValueError, match=r"expected dim 7, got 4"):
        norm.check_dims("robot", action_dim=7)


def test_unknown_dataset_and_malformed_stats_are_named():
    with pytest.raises(KeyError, match=r"no norm stats for dataset 'other'; the stats file has \['robot'\]"):
        normalizer("q99").normalize(DATA, "action", "other")
    with pytest.raises(ValueError, match=r"mode: expected one of"):
        Normalizer({"x": {"mode": "zscore", "action": numpy_stats(DATA, MASK)}})
    bad = numpy_stats(DATA, MASK)
    bad["q99"] = bad["q99"][:3]
    with pytest.raises(ValueError, match=r"norm stats\['x'\].action: fields disagree on the dimension"):
        Normalizer({"x": {"mode": "q99", "action": bad}})


def test_save_load_round_trip_is_plain_json(tmp_path):
    norm = normalizer("q99")
    path = tmp_path / "norm_stats.json"
    norm.save(path)
    assert json.loads(path.read_text())["robot"]["action"]["mask"] == MASK
    loaded = Normalizer.load(path)
    np.testing.assert_array_equal(loaded.normalize(DATA, "action", "robot"), norm.normalize(DATA, "action", "robot"))


def test_running_stats_match_numpy_exactly_under_the_reservoir():
    stats = RunningStats(reservoir_size=1000)
    for chunk in np.array_split(DATA, 7):  # uneven batches exercise the merge
        stats.update(chunk)
    result = stats.result()
    want = numpy_stats(DATA.astype(np.float64), MASK)
    for key in ("min", "max", "mean", "std", "q01", "q99"):
        np.testing.assert_allclose(result[key], want[key], rtol=1e-9, atol=1e-9, err_msg=key)
    assert result["count"] == len(DATA)


def test_running_stats_quantiles_from_a_reservoir_stay_close():
    data = np.random.default_rng(1).normal(0, 1, (50_000, 2))
    stats = RunningStats(reservoir_size=5000, seed=0)
    for chunk in np.array_split(data, 40):
        stats.update(chunk)
    result = stats.result()
    np.testing.assert_allclose(result["mean"], data.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result["std"], data.std(0), rtol=1e-9)
    # Rank error sd = sqrt(0.01 * 0.99 / 5000) = 0.0014; near q01 of N(0, 1) that is ~0.05 in value.
    np.testing.assert_allclose(result["q01"], np.quantile(data, 0.01, axis=0), atol=0.15)
    np.testing.assert_allclose(result["q99"], np.quantile(data, 0.99, axis=0), atol=0.15)
    assert stats.reservoir.shape == (5000, 2)  # memory stays bounded


def test_running_stats_rejects_a_changing_dimension():
    stats = RunningStats()
    stats.update(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="expected dim 3, got 4"):
        stats.update(np.zeros((2, 4)))
