"""The lerobot dataset's checks, `vlablocks stats` against numpy, mixtures, and the seeded DataLoader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.stats import chisquare

from vlablocks.cli.main import main as cli
from vlablocks.core.build import build as build_component
from vlablocks.core.config import ConfigError, PlatformConfig, load_config
from vlablocks.core.dataloader.loader import build_dataloader
from vlablocks.core.dataloader.normalization import Normalizer
from vlablocks.core.dataloader.sample import validate_sample
from vlablocks.core.registry import DATASETS
from vlablocks.tools.toy.toy_dataset import write_toy_dataset

REPO = Path(__file__).resolve().parent.parent
TOY_CONFIG = REPO / "configs/datasets/toy.yaml"


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    """Tiny toy dataset written once per session (shared with tests/test_toy_data.py)."""
    root = tmp_path_factory.getbasetemp() / "toy_data"
    if not (root / "meta" / "info.json").is_file():
        write_toy_dataset(root, episodes=6, seed=0)
    return root


def experiment(root: Path, *overrides: str, config: Path = TOY_CONFIG) -> tuple[dict, PlatformConfig]:
    cfg = load_config(config, [f"dataset.root={root}", *overrides])
    return cfg, cfg.platform


def build(root: Path, *overrides: str, config: Path = TOY_CONFIG):
    cfg, platform = experiment(root, *overrides, config=config)
    return build_component(DATASETS, cfg.dataset, platform=platform, seed=cfg.seed)


def parquet_columns(root: Path) -> dict[str, np.ndarray]:
    """Actions and states read straight from the parquet files, independently of the code under test."""
    table = pq.read_table(sorted((root / "data").rglob("*.parquet")), columns=["action", "observation.state"])
    return {
        "action": np.stack(table.column("action").to_numpy(zero_copy_only=False)).astype(np.float64),
        "state": np.stack(table.column("observation.state").to_numpy(zero_copy_only=False)).astype(np.float64),
    }


def test_missing_camera_key_fails_at_build_listing_the_available_keys(toy_root):
    with pytest.raises(ConfigError) as error:
        build(toy_root, "dataset.camera_keys=[observation.images.front]")
    message = str(error.value)
    assert "has no camera key 'observation.images.front'" in message
    assert "available: ['observation.images.top', 'observation.images.wrist']" in message


def test_platform_dims_that_do_not_match_the_data_fail_at_build(toy_root):
    with pytest.raises(
        ConfigError,
        match=r"'action' .* has shape \[2\], platform 'libero' has action_dim 7 \(expected \[7\], got \[2\]\)",
    ):
        build(toy_root, "platform.name=libero", "platform.action_dim=7", "platform.state_dim=2")
    with pytest.raises(ConfigError, match=r"state_key: 'observation.state' .* \(expected \[8\], got \[2\]\)"):
        build(toy_root, "platform.state_dim=8")
    with pytest.raises(ConfigError, match=r"depth_keys: expected one per camera key \(1\), got 2"):
        build(toy_root, "dataset.depth_keys=[observation.depth.top,observation.depth.wrist]")


def test_a_root_that_is_not_a_dataset_says_how_to_make_one(tmp_path):
    with pytest.raises(ConfigError, match=r"is not a LeRobot dataset .*`vlablocks make-toy-data --out DIR`"):
        build(tmp_path / "nothing")


def test_stats_command_matches_numpy_and_drives_the_normalizer(toy_root, tmp_path):
    out = tmp_path / "norm_stats.json"
    args = ["stats", "--config_yaml", str(TOY_CONFIG), f"--dataset.root={toy_root}", "--out", str(out)]
    assert cli([*args, "--dataset.action_norm_mask=[true,false]"]) == 0
    stats = json.loads(out.read_text())["toy"]
    assert stats["mode"] == "q99" and stats["action"]["mask"] == [True, False]
    for key, values in parquet_columns(toy_root).items():
        assert stats[key]["count"] == len(values)
        for name, reference in (
            ("min", values.min(0)),
            ("max", values.max(0)),
            ("mean", values.mean(0)),
            ("std", values.std(0)),
            ("q01", np.quantile(values, 0.01, axis=0)),
            ("q99", np.quantile(values, 0.99, axis=0)),
        ):
            np.testing.assert_allclose(stats[key][name], reference, rtol=1e-6, atol=1e-7, err_msg=f"{key}.{name}")
    sample = build(toy_root)[0]
    normalizer = Normalizer.load(out)
    normalized = normalizer.normalize(sample["action"], "action", sample["dataset_name"])
    np.testing.assert_array_equal(normalized[:, 1], sample["action"][:, 1])  # masked dimension untouched
    assert np.all(np.abs(normalized[:, 0]) <= 1.0)


def test_stats_of_another_dimension_fail_on_the_data_with_expected_and_got(toy_root, tmp_path):
    wrong = {"toy": {"mode": "q99", "action": {f: [0.0] * 7 for f in ("min", "max", "mean", "std", "q01", "q99")}}}
    wrong["toy"]["action"]["mask"] = [True] * 7
    (tmp_path / "norm_stats.json").write_text(json.dumps(wrong))
    sample = build(toy_root)[0]
    with pytest.raises(ValueError, match=r"expected dim 7 \(from the stats file\), got data of dim 2"):
        Normalizer.load(tmp_path / "norm_stats.json").normalize(sample["action"], "action", "toy")


def mixture_options(root: Path, weights: list[float] | None) -> dict:
    cfg, _ = experiment(root)
    components = [{**cfg.dataset, "dataset_name": name} for name in ("toy_a", "toy_b", "toy_c")]
    return {"name": "mixture", "datasets": components, "weights": weights, "samples_per_epoch": 4000}


def test_mixture_frequencies_match_weights_and_samples_keep_their_name(toy_root):
    _, platform = experiment(toy_root)
    weights = [5.0, 3.0, 2.0]
    mixture = build_component(DATASETS, mixture_options(toy_root, weights), platform=platform, seed=0)
    picks = [mixture.pick((0, i)) for i in range(len(mixture))]
    counts = np.bincount([component for component, _ in picks], minlength=3)
    expected = np.array(weights) / sum(weights) * len(picks)
    assert chisquare(counts, expected).pvalue > 1e-3, counts
    assert all(0 <= index < len(mixture.components[c]) for c, index in picks)
    for i in range(6):
        sample = mixture[i]
        chunk = (platform.action_horizon, platform.action_dim)
        validate_sample(sample, camera_keys=mixture.camera_keys, state_dim=platform.state_dim, action_shape=chunk)
        assert sample["dataset_name"] == ["toy_a", "toy_b", "toy_c"][picks[i][0]]
    assert [leaf.name for leaf in mixture.leaves()] == ["toy_a", "toy_b", "toy_c"]
    assert mixture.pick((1, 0)) != mixture.pick((0, 0)) or mixture.pick((1, 1)) != mixture.pick((0, 1))


def test_mixture_config_errors_are_named(toy_root):
    _, platform = experiment(toy_root)
    with pytest.raises(ConfigError, match=r"expected 3 weights \(one per dataset\), got 2"):
        build_component(DATASETS, mixture_options(toy_root, [1.0, 2.0]), platform=platform)
    options = mixture_options(toy_root, None)
    options["datasets"][1]["dataset_name"] = "toy_a"
    with pytest.raises(ConfigError, match=r"names \['toy_a'\] repeat"):
        build_component(DATASETS, options, platform=platform)
    options["datasets"][1] = {"name": "lerobot", "root": str(toy_root), "camera_keyz": []}
    with pytest.raises(ConfigError, match=r"dataset.datasets\[1\]: .*unknown key .*camera_keyz"):
        build_component(DATASETS, options, platform=platform)
    options["datasets"][1] = {
        **options["datasets"][0],
        "camera_keys": ["observation.images.wrist"],
        "dataset_name": "w",
    }
    with pytest.raises(
        ConfigError, match=r"camera keys differ between datasets \(\[\['top'\], \['wrist'\], \['top'\]\]\)"
    ):
        build_component(DATASETS, options, platform=platform)


def sample_stream(loader, samples: int) -> list[tuple]:
    """The first `samples` samples of an endless loader, each as (prompt, action bytes, image bytes)."""
    rows: list[tuple] = []
    for batch in loader:
        rows += [(s["prompt"], s["action"].tobytes(), s["images"]["top"].tobytes()) for s in batch]
        if len(rows) >= samples:
            return rows[:samples]
    raise AssertionError("the loader ended")


def test_dataloader_is_seeded_and_identical_with_workers(toy_root):
    prompts = f"dataset.prompt_augmentation.path={REPO / 'configs/experiments/prompts/toy.yaml'}"
    dataset = build(toy_root, prompts, config=REPO / "configs/datasets/toy_prompt_aug.yaml")
    loader = build_dataloader(dataset, batch_size=4, seed=3, num_workers=0)
    batch = next(iter(loader))
    assert isinstance(batch, list) and len(batch) == 4 and isinstance(batch[0], dict)
    size = len(dataset)
    reference = sample_stream(loader, 2 * size)  # two epochs
    assert sample_stream(build_dataloader(dataset, batch_size=4, seed=3, num_workers=2), 2 * size) == reference
    assert sample_stream(build_dataloader(dataset, batch_size=4, seed=4), 8) != reference[:8]
    assert sample_stream(build_dataloader(dataset, batch_size=4, seed=3, start_micro_step=5), 8) == reference[20:28]
    first, second = reference[:size], reference[size:]
    assert sorted(row[1:] for row in first) == sorted(row[1:] for row in second)  # each epoch: every frame once
    assert first != second and sorted(first) != sorted(second)  # a fresh order and fresh prompt draws
    langs = [lang for lang, _, _ in reference]
    assert any(lang.startswith(("head for", "navigate", "drive", "find")) for lang in langs)  # augmented
    assert any(not lang.startswith(("head for", "navigate", "drive", "find")) for lang in langs)
    # The sampler's (epoch, index) keys give a fresh draw of prompts each epoch, in any worker.
    assert [dataset[(0, i)]["prompt"] for i in range(12)] != [dataset[(1, i)]["prompt"] for i in range(12)]
    assert [dataset[(0, i)]["prompt"] for i in range(12)] == [dataset[i]["prompt"] for i in range(12)]


def test_episode_subset(toy_root):
    with pytest.raises(ConfigError, match=r"dataset.episodes: \[6, 9\] not in 'toy', which has episodes 0..5"):
        build(toy_root, "dataset.episodes=[1,6,9]")
    full = build(toy_root)
    subset = build(toy_root, "dataset.episodes=[1,4]")
    assert len(subset) == len(full.episode_indices(1)) + len(full.episode_indices(4))
    first = subset[subset.episode_indices(4)[0]]
    np.testing.assert_array_equal(first["state"], full[full.episode_indices(4)[0]]["state"])
    np.testing.assert_array_equal(first["action"], full[full.episode_indices(4)[0]]["action"])
