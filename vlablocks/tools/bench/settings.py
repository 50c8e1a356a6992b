"""What `vlablocks bench` measures with: sizes and repeat counts per profile, device and model size.

Profiles: `full` (the default: enough repeats for stable medians), `quick` (under 5 minutes on a 2-core
CPU) and `smoke` (tiny sizes, 1 repeat: proves every row still runs; its numbers mean nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from vlablocks.core.config import PlatformConfig, load_yaml

# The benchmark reads files that live next to the package in a source checkout, not in a wheel.
REPO = Path(__file__).resolve().parents[3]

Profile = Literal["full", "quick", "smoke"]
Device = Literal["cpu", "cuda"]
Arch = Literal["tiny", "3b"]


@dataclass(frozen=True)
class BenchSettings:
    profile: Profile = "full"
    device: Device = "cpu"
    arch: Arch = "tiny"
    threads: int = 0  # torch intra-op threads in this process; 0 keeps torch's default
    warmup: int = 3  # untimed calls per side before timing (latency rows)
    repeats: int = 15  # timed calls per side (latency rows)
    batch_size: int = 8  # training micro-batch
    train_warmup_steps: int = 2  # steps dropped from each training run
    train_steps: int = 10  # timed steps per training run
    train_runs: int = 6  # training runs per side, alternating (many short runs spread a load burst over both)
    fast_fit_steps: int = 200  # at most this many steps fitting QwenFAST to the benchmark chunk
    data_episodes: int = 50
    data_samples: int = 1024  # samples read per loader per round
    data_rounds: int = 3
    data_workers: int = 2
    data_batch_size: int = 16
    server_requests: int = 500
    server_warmup: int = 20
    processing_batch: int = 16  # the processing row: batch x views x pixels, as the issue that asked for it
    processing_views: int = 2
    processing_image: int = 224
    processing_workers: int = 1
    zero_hidden: int = 2_000_000  # the ZeRO worker's MLP width: 36 M parameters
    zero_steps: int = 3
    zero_runs: int = 2  # launches per side, alternating

    @property
    def image_size(self) -> int:
        """One view per sample; a 3B model sees the published 224 x 224."""
        return 224 if self.arch == "3b" else 112


PROFILES: dict[str, BenchSettings] = {
    "full": BenchSettings(),
    "quick": BenchSettings(
        profile="quick",
        warmup=2,
        repeats=7,
        train_steps=5,
        train_runs=4,
        data_episodes=10,
        data_samples=256,
        data_rounds=3,
        server_requests=200,
        server_warmup=10,
        zero_runs=1,
    ),
    "smoke": BenchSettings(
        profile="smoke",
        warmup=1,
        repeats=1,
        batch_size=2,
        train_warmup_steps=1,
        train_steps=2,
        train_runs=1,
        data_episodes=2,
        data_samples=32,
        data_rounds=1,
        data_workers=0,
        data_batch_size=8,
        processing_batch=2,
        processing_image=56,
        server_requests=10,
        server_warmup=2,
        zero_hidden=32,
        zero_steps=1,
        zero_runs=1,
    ),
}


def bench_settings(
    profile: Profile = "full", device: Device = "cpu", arch: Arch = "tiny", threads: int | None = None
) -> BenchSettings:
    """The profile's settings for a device and model size; a clear error for combinations that cannot run.

    threads None: 1 on CPU (tiny models gain nothing from more, and several OpenMP threads on a CPU shared
    with other jobs stall whenever one is descheduled: step times jump 10x in bursts), torch's default on CUDA.
    """
    if threads is None:
        threads = 1 if device == "cpu" else 0
    if threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's default), got {threads}")
    if profile not in PROFILES:
        raise ValueError(f"unknown bench profile {profile!r} (available: {', '.join(PROFILES)})")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda but torch sees no CUDA device; run on a GPU machine or use --device cpu")
    if arch == "3b" and device != "cuda":
        raise ValueError("--arch 3b needs --device cuda (two 3B models do not fit a CPU run); use --arch tiny on CPU")
    settings = replace(PROFILES[profile], device=device, arch=arch, threads=threads)
    if arch == "3b":  # train() builds each 3B model on the CPU first (minutes): one run per side
        settings = replace(settings, train_runs=1)
    return settings


def require_checkout(relative: str) -> Path:
    """A file of the source checkout the benchmark needs; a one-line error when it is missing."""
    path = REPO / relative
    if not path.exists():
        raise FileNotFoundError(
            f"vlablocks bench needs the source checkout: {path} is missing "
            "(clone the repository and `pip install -e .` there)"
        )
    return path


def bench_platform() -> PlatformConfig:
    """The LIBERO platform (8 x 7 chunks, 8-D state): FAST must emit tens of tokens for such a chunk."""
    return PlatformConfig(**load_yaml(require_checkout("configs/platforms/libero.yaml"))["platform"])
