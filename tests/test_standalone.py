"""Every framework file runs standalone as a smoke test, and honours config files and overrides."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vlablocks.core.framework.base import policy_names
from vlablocks.core.registry import FRAMEWORKS

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^(\w+): params ([\d,]+) loss ([\d.]+) actions \((\d+), (\d+), (\d+)\) time [\d.]+s")


def framework_files() -> list[Path]:
    """The policy frameworks' files (value models predict values, not actions: tests/test_value_models.py)."""
    return sorted(Path(sys.modules[FRAMEWORKS.get(name).__module__].__file__) for name in policy_names())


def run(path: Path, *args: str) -> re.Match:
    result = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    match = SUMMARY.match(result.stdout.strip().splitlines()[-1])
    assert match, result.stdout
    return match


@pytest.mark.parametrize("path", framework_files(), ids=lambda p: p.stem)
def test_framework_file_runs_standalone(path):
    match = run(path, "--platform.action_horizon=3", "--platform.action_dim=5")
    assert match.group(1) in FRAMEWORKS.names()
    assert (int(match.group(4)), int(match.group(5)), int(match.group(6))) == (2, 3, 5)


def test_override_is_applied():
    path = REPO / "vlablocks" / "core" / "framework" / "qwen_oft.py"
    default = run(path)
    smaller = run(path, "--framework.action_model.hidden_dim=64")
    assert int(smaller.group(2).replace(",", "")) < int(default.group(2).replace(",", ""))


def test_config_file_and_misspelled_override(tmp_path):
    path = REPO / "vlablocks" / "core" / "framework" / "qwen_oft.py"
    match = run(path, "--config_yaml", str(REPO / "configs/frameworks/qwen_oft.yaml"))
    assert (int(match.group(5)), int(match.group(6))) == (4, 2)  # the toy platform of that config
    result = subprocess.run(
        [sys.executable, str(path), "--framework.action_model.hiden_dim=64"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "did you mean framework.action_model.hidden_dim" in result.stderr
