"""Built where it runs (issue 38): a policy's parameters are created on the device it is built for, with no copy in
host memory first; training builds on the accelerator's device, or under ZeRO-3 partitioned while it is built
(tests/test_zero3_init.py launches that on 2 ranks)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import SimpleNamespace

import torch

from vlablocks.core.config import PlatformConfig, load_config
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.partitioned import full_numel, full_shape, is_partitioned, whole
from vlablocks.core.policy.policy import build_policy
from vlablocks.core.training.zero_init import build_context, construction_config


def test_build_policy_creates_every_parameter_on_the_requested_device():
    experiment = load_config("configs/experiments/toy/qwen_oft.yaml")
    examples = synthetic_examples(PlatformConfig(**vars(experiment.platform)), 2, image_size=56)
    stats = synthetic_norm_stats(examples)
    # meta: no storage at all, so nothing was built on the host
    on_meta = build_policy(experiment, stats, build_in=torch.device("meta"))
    assert {p.device.type for p in on_meta.model.parameters()} == {"meta"}
    on_host = build_policy(experiment, stats)
    assert {p.device.type for p in on_host.model.parameters()} == {"cpu"}
    assert sum(p.numel() for p in on_meta.model.parameters()) == sum(p.numel() for p in on_host.model.parameters())


def test_training_builds_on_the_accelerators_device_unless_zero3_partitions():
    def accelerator(stage):
        plugin = None if stage is None else SimpleNamespace(zero_stage=stage)
        return SimpleNamespace(device=torch.device("cuda", 1), state=SimpleNamespace(deepspeed_plugin=plugin))

    assert build_context(accelerator(None)) == torch.device("cuda", 1)  # the default device while built
    assert build_context(accelerator(2)) == torch.device("cuda", 1)
    zero3 = build_context(accelerator(3))  # deepspeed.zero.Init (not entered here: it needs the process group)
    assert isinstance(zero3, AbstractContextManager) and not isinstance(zero3, torch.device)


def test_zero_init_config_drops_values_accelerate_fills_only_in_prepare():
    config = {
        "train_batch_size": 8,
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": "auto", "reduce_bucket_size": 5},
    }
    assert construction_config(config) == {
        "train_batch_size": 8,
        "bf16": {},
        "zero_optimization": {"stage": 3, "reduce_bucket_size": 5},
    }
    assert config["gradient_clipping"] == "auto"  # a copy: the plugin's own config is left as it is


def test_whole_is_a_plain_no_grad_block_for_unpartitioned_parameters():
    layer = torch.nn.Linear(3, 2)
    assert not is_partitioned(layer.weight)
    assert full_numel(layer.weight) == 6 and full_shape(layer.weight) == (2, 3)
    with whole(layer):
        assert not torch.is_grad_enabled()
        torch.nn.init.zeros_(layer.weight)
    assert torch.is_grad_enabled() and not layer.weight.any()
