"""Built where it runs (issue 38): a policy's parameters are created on the device it is built for, with no copy in
host memory first; training builds on the accelerator's device except under ZeRO-3 (DeepSpeed partitions)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from vlablocks.core.config import PlatformConfig, load_config
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import build_policy
from vlablocks.core.training.components import build_device


def test_build_policy_creates_every_parameter_on_the_requested_device():
    experiment = load_config("configs/experiments/toy/qwen_oft.yaml")
    examples = synthetic_examples(PlatformConfig(**vars(experiment.platform)), 2, image_size=56)
    stats = synthetic_norm_stats(examples)
    on_meta = build_policy(experiment, stats, device="meta")  # no storage at all: nothing was built on the host
    assert {p.device.type for p in on_meta.model.parameters()} == {"meta"}
    on_host = build_policy(experiment, stats)
    assert {p.device.type for p in on_host.model.parameters()} == {"cpu"}
    assert sum(p.numel() for p in on_meta.model.parameters()) == sum(p.numel() for p in on_host.model.parameters())


def test_training_builds_on_the_accelerators_device_unless_zero3_partitions():
    def accelerator(stage):
        plugin = None if stage is None else SimpleNamespace(zero_stage=stage)
        return SimpleNamespace(device=torch.device("cuda", 1), state=SimpleNamespace(deepspeed_plugin=plugin))

    assert build_device(accelerator(None)) == torch.device("cuda", 1)
    assert build_device(accelerator(2)) == torch.device("cuda", 1)
    assert build_device(accelerator(3)) is None
