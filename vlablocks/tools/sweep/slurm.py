"""SLURM job scripts for sweeps (`vlablocks sweep --submit slurm`): one per variant and seed, submitted with
`sbatch` when it is on PATH, else printed.

Each script is a self-contained batch job: its #SBATCH header (nodes, GPUs per node, time, partition, log file
in the variant's run directory), then `srun` starting examples/cluster/launch_node.sh once per node, which
derives the ranks from SLURM's environment and runs `accelerate launch vlablocks/core/training/train.py
--config-yaml <out>/<variant>/variant.yaml` (docs/distributed.md, "Multi-node"). The variant YAMLs are the ones
a local sweep writes, so `vlablocks sweep` run later with the same arguments (and `--eval-env`) reads the
finished training back instead of retraining, and only evaluates.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
LAUNCH_NODE = "examples/cluster/launch_node.sh"
JOB_FILE = "job.sbatch"


@dataclass(frozen=True)
class SlurmOptions:
    nodes: int = 1
    gpus_per_node: int = 8
    time: str = "24:00:00"
    partition: str | None = None
    accelerate_config: str = "configs/accelerate/zero2.yaml"
    sbatch_options: tuple[str, ...] = ()  # more #SBATCH lines, e.g. "--account=robotics"

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise ValueError(
                f"--slurm-nodes and --slurm-gpus-per-node must be at least 1, got {self.nodes}, {self.gpus_per_node}"
            )
        if not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", self.time):
            raise ValueError(f"--slurm-time {self.time!r} is not a SLURM time; write e.g. 24:00:00 or 2-00:00:00")
        for option in self.sbatch_options:
            if not option.startswith("--") or "\n" in option:
                raise ValueError(f"--sbatch-option {option!r} must be one option like --account=NAME")
        if not (REPO_ROOT / self.accelerate_config).is_file():
            raise FileNotFoundError(
                f"accelerate config {self.accelerate_config} not found under {REPO_ROOT}; "
                "pass --accelerate-config configs/accelerate/zero2.yaml (or zero3.yaml, ddp.yaml)"
            )


def job_script(name: str, config_path: Path, run_dir: Path, options: SlurmOptions) -> str:
    """The batch script training one variant on `options.nodes` x `options.gpus_per_node` GPUs."""
    header = [
        f"--job-name={name}",
        f"--nodes={options.nodes}",
        "--ntasks-per-node=1",
        f"--gpus-per-node={options.gpus_per_node}",
        f"--time={options.time}",
        f"--output={run_dir.resolve() / 'slurm-%j.out'}",
        *([f"--partition={options.partition}"] if options.partition else []),
        *options.sbatch_options,
    ]
    command = ["bash", LAUNCH_NODE, "vlablocks/core/training/train.py", "--config-yaml", str(config_path.resolve())]
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {option}" for option in header),
        f"# Written by `vlablocks sweep --submit slurm`: variant {name}. Submit with: sbatch {JOB_FILE}",
        "set -euo pipefail",
        f"cd {shlex.quote(str(REPO_ROOT))}",
        f"export ACCELERATE_CONFIG={shlex.quote(options.accelerate_config)}",
        "export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false",
        "srun --kill-on-bad-exit=1 --ntasks-per-node=1 " + shlex.join(command),
    ]
    return "\n".join(lines) + "\n"


def write_job_scripts(variants: list, out_dir: Path, options: SlurmOptions) -> list[Path]:
    """<out>/<variant>/variant.yaml and job.sbatch for every variant (and seed) -> the scripts."""
    from vlablocks.tools.sweep.sweep import write_variant

    if not (REPO_ROOT / LAUNCH_NODE).is_file():
        raise FileNotFoundError(f"{REPO_ROOT / LAUNCH_NODE} is missing: submit from a vlablocks checkout")
    scripts = []
    for variant in variants:
        config_path = write_variant(variant, out_dir)
        script = config_path.parent / JOB_FILE
        script.write_text(job_script(variant.name, config_path, config_path.parent, options))
        scripts.append(script)
    return scripts


def submit_or_print(scripts: list[Path], sbatch: str | None = None) -> list[str]:
    """`sbatch --parsable` each script when sbatch exists (-> the job ids), else print the scripts (-> [])."""
    sbatch = sbatch or shutil.which("sbatch")
    if sbatch is None:
        for script in scripts:
            print(f"# ---- {script} (sbatch not found on PATH; on the cluster: sbatch {script})")
            print(script.read_text(), end="")
        return []
    job_ids = []
    for script in scripts:
        result = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True)
        if result.returncode != 0:
            reason = (result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}").splitlines()
            raise RuntimeError(f"sbatch refused {script}: {reason[0]} (submitted before it: {job_ids or 'none'})")
        job_id = result.stdout.strip().split(";")[0]  # --parsable: "<id>" or "<id>;<cluster>"
        job_ids.append(job_id)
        print(f"submitted {script.parent.name}: job {job_id} ({script})")
    return job_ids
