"""Config loading: bases, override spellings, validation errors with suggestions, CLI behaviour."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from vlablocks.core.config import (
    ConfigError,
    ExperimentConfig,
    PlatformConfig,
    load_config,
    load_yaml,
    parse_experiment,
    parse_overrides,
    to_dataclass,
    validate,
)
from vlablocks.core.config.trainer import TrainerConfig


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    steps: int = 10
    tags: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = dataclasses.field(default_factory=Inner)
    optional: int | None = None


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--a.b=1"], ["a.b=1"]),
        (["--a.b", "1"], ["a.b=1"]),
        (["a.b=1"], ["a.b=1"]),
        (["--a.b", "1", "c=2", "--d=x=y"], ["a.b=1", "c=2", "d=x=y"]),
    ],
)
def test_override_spellings(args, expected):
    assert parse_overrides(args) == expected


def test_override_without_value_is_an_error():
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["--a.b"])


def test_validate_fills_defaults_and_converts_int_to_float():
    result = validate({"inner": {"lr": 1}}, Outer)
    assert result == {"name": "x", "inner": {"lr": 1.0, "steps": 10, "tags": []}, "optional": None}
    assert isinstance(result["inner"]["lr"], float)


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown key inner.lrr — did you mean inner.lr\?"):
        validate({"inner": {"lrr": 1}}, Outer)


def test_wrong_type_names_key_expected_and_got():
    with pytest.raises(ConfigError, match=r"inner.steps: expected int, got str \('ten'\)"):
        validate({"inner": {"steps": "ten"}}, Outer)
    with pytest.raises(ConfigError, match=r"inner.tags: expected list\[str\], got list"):
        validate({"inner": {"tags": [1, 2]}}, Outer)


def test_to_dataclass_builds_nested_frozen_dataclasses():
    built = to_dataclass(Outer, {"inner": {"steps": 3}})
    assert built.inner.steps == 3 and isinstance(built.inner, Inner)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.name = "y"


def test_base_inheritance_resolved_relative_to_file(tmp_path):
    (tmp_path / "base.yaml").write_text("trainer:\n  max_steps: 5\n  batch_size: 4\nseed: 1\n")
    variants = tmp_path / "ablations"
    variants.mkdir()
    (variants / "v1.yaml").write_text("_base_: ../base.yaml\ntrainer:\n  batch_size: 16\n")
    merged = load_yaml(variants / "v1.yaml")
    assert merged == {"trainer": {"max_steps": 5, "batch_size": 16}, "seed": 1}
    config = load_config(variants / "v1.yaml", ["--trainer.max_steps", "9", "seed=3"])
    assert config.trainer.max_steps == 9 and config.trainer.batch_size == 16 and config.seed == 3


def test_circular_base_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="circular _base_"):
        load_yaml(tmp_path / "a.yaml")


def test_interpolation_resolved(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "platform:\n  action_horizon: 5\ntrainer:\n  save_every: ${platform.action_horizon}\n"
    )
    assert load_config(tmp_path / "c.yaml").trainer.save_every == 5


def test_the_experiment_is_one_frozen_typed_object(tmp_path):
    (tmp_path / "e.yaml").write_text("platform:\n  action_dim: 3\ntrainer:\n  max_steps: 4\n")
    experiment = load_config(tmp_path / "e.yaml", ["framework.name=QwenOFT"])
    assert isinstance(experiment, ExperimentConfig)
    assert isinstance(experiment.platform, PlatformConfig) and experiment.platform.action_dim == 3
    assert isinstance(experiment.trainer, TrainerConfig) and experiment.trainer.max_steps == 4
    assert experiment.framework["action_model"]["name"] == "l1_regression"  # the component's defaults filled in
    with pytest.raises(dataclasses.FrozenInstanceError):
        experiment.seed = 1
    assert parse_experiment(experiment.to_dict()) == experiment


def test_the_registry_is_a_leaf():
    """registry.py imports nothing of the config or build code (building sits one level up, in build.py)."""
    import ast

    import vlablocks.core.registry

    tree = ast.parse(Path(vlablocks.core.registry.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not [name for name in imported if name and name.startswith("vlablocks")], imported


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlablocks.cli.main", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def simple_yaml(tmp_path) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text("run_dir: /tmp/x\ntrainer:\n  max_steps: 3\n")
    return path


def test_cli_config_applies_override(simple_yaml):
    result = cli("config", "--config_yaml", str(simple_yaml), "--trainer.max_steps=7")
    assert result.returncode == 0, result.stderr
    assert "max_steps: 7" in result.stdout


def test_cli_config_misspelled_key_exits_2_with_one_line(simple_yaml):
    result = cli("config", "--config_yaml", str(simple_yaml), "--trainer.max_stepz=7")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "did you mean trainer.max_steps" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_list_shows_every_kind():
    result = cli("list")
    assert result.returncode == 0, result.stderr
    for kind in ("frameworks", "vlms", "action_models", "datasets", "eval_envs"):
        assert f"\n{kind} (" in f"\n{result.stdout}"
