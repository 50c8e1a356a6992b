"""`vlablocks sweep --submit slurm`: one job script per variant and seed; sbatch when it exists, else printed;
a generated script, run with stub srun / scontrol / accelerate, launches the variant's config on every node."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from vlablocks.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "frameworks" / "qwen_oft.yaml"


def _stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


@pytest.fixture
def variants(tmp_path) -> list[str]:
    files = []
    for name, lr in (("fast", 1e-3), ("slow", 1e-4)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"trainer": {"learning_rate": lr}}))
        files.append(str(path))
    return files


@pytest.fixture
def no_sbatch(monkeypatch):
    """This machine has no sbatch, whatever PATH holds."""
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None if name == "sbatch" else which(name))


def _sweep(tmp_path, variants, *extra: str) -> int:
    argv = ["sweep", "--base", str(BASE), "--variants", *variants, "--seeds", "0", "1", "--out", str(tmp_path / "out")]
    return main(argv + ["--submit", "slurm", "--slurm-nodes", "4", *extra, "--trainer.max_steps=7"])


def test_without_sbatch_the_scripts_are_written_and_printed(tmp_path, variants, no_sbatch, capsys):
    assert _sweep(tmp_path, variants, "--slurm-partition", "gpu", "--sbatch-option=--account=robots") == 0
    out = capsys.readouterr().out
    scripts = sorted((tmp_path / "out").glob("*/job.sbatch"))
    assert [s.parent.name for s in scripts] == ["fast_seed0", "fast_seed1", "slow_seed0", "slow_seed1"]
    for script in scripts:
        text = script.read_text()
        assert f"# ---- {script}" in out and text in out
        config = script.parent / "variant.yaml"
        assert f"--config-yaml {config}" in text
        assert "#SBATCH --nodes=4\n" in text and "#SBATCH --partition=gpu\n" in text
        assert "#SBATCH --account=robots\n" in text and "#SBATCH --gpus-per-node=8\n" in text
        experiment = yaml.safe_load(config.read_text())
        assert experiment["seed"] == int(script.parent.name[-1]) and experiment["trainer"]["max_steps"] == 7
        assert experiment["trainer"]["learning_rate"] == (1e-3 if "fast" in script.parent.name else 1e-4)
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_with_sbatch_every_script_is_submitted(tmp_path, variants, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    _stub(bin_dir, "sbatch", f'echo "$@" >> {calls}\necho $((4000 + $(wc -l < {calls})))";cluster1"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert _sweep(tmp_path, variants) == 0
    submitted = calls.read_text().splitlines()
    assert len(submitted) == 4 and all(line.startswith("--parsable ") for line in submitted)
    assert {Path(line.split()[1]).parent.name for line in submitted} == {
        "fast_seed0",
        "fast_seed1",
        "slow_seed0",
        "slow_seed1",
    }
    out = capsys.readouterr().out
    assert "job 4001" in out and "job 4004" in out and "4 job(s) submitted" in out and "#SBATCH" not in out


def test_a_refused_submission_is_one_line_naming_sbatch_s_reason(tmp_path, variants, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "sbatch", 'echo "sbatch: error: invalid partition specified: nope" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert _sweep(tmp_path, variants, "--slurm-partition", "nope") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid partition specified: nope" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--eval-env", "toy"], "rerun the same sweep without --submit"),
        (["--slurm-time", "two days"], "is not a SLURM time"),
        (["--slurm-nodes", "0"], "--slurm-nodes: must be an integer >= 1"),
        (["--accelerate-config", "configs/accelerate/zero9.yaml"], "zero9.yaml not found"),
    ],
)
def test_bad_submission_options_are_refused_before_anything_is_written(tmp_path, variants, capsys, extra, message):
    assert _sweep(tmp_path, variants, *extra) == 2
    assert message in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*/job.sbatch"))


def test_a_generated_script_launches_its_config_on_every_node(tmp_path, variants, no_sbatch):
    assert _sweep(tmp_path, variants, "--accelerate-config", "configs/accelerate/zero3.yaml") == 0
    script = tmp_path / "out" / "slow_seed1" / "job.sbatch"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # srun: run the command once per node, as SLURM would, with that node's SLURM_NODEID.
    _stub(bin_dir, "srun", 'while [[ "$1" == --* ]]; do shift; done\nfor n in 0 1 2 3; do SLURM_NODEID=$n "$@"; done\n')
    _stub(bin_dir, "scontrol", 'printf "node17\\nnode18\\nnode19\\nnode20\\n"\n')
    _stub(bin_dir, "accelerate", 'echo "$@"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_NNODES="4", SLURM_GPUS_ON_NODE="8")
    env.update(SLURM_JOB_NODELIST="node[17-20]", SLURM_JOB_ID="99")
    proc = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    launches = proc.stdout.strip().splitlines()
    assert len(launches) == 4
    for node, line in enumerate(launches):
        assert line.startswith("launch --config_file configs/accelerate/zero3.yaml --num_machines 4")
        assert f"--machine_rank {node} --num_processes 32 --main_process_ip node17 --main_process_port 20099" in line
        assert line.endswith(f"vlablocks/core/training/train.py --config-yaml {script.parent / 'variant.yaml'}")
