"""Standalone smoke test shared by every framework file (`python vlablocks/framework/<file>.py`).

Builds the framework from a tiny offline default (or `--config-yaml F`), applies dotlist overrides,
runs processor -> forward + backward on a synthetic batch and the processor -> sample_actions -> postprocess chain, checks the loss is finite and the
shapes are right, and prints one summary line.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from vlablocks.core.config import ExperimentConfig, load_config, merge_overrides, parse_experiment, resolve
from vlablocks.core.flags import FlagParser
from vlablocks.core.framework.base import build_framework
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.processor.build import build_processor


def smoke_experiment(name: str, config_yaml: str | None, overrides: list[str]) -> ExperimentConfig:
    """The given config, or a tiny default for framework `name`, with overrides applied and validated."""
    if config_yaml:
        return load_config(config_yaml, overrides)
    return parse_experiment(resolve(merge_overrides({"framework": {"name": name}}, overrides)))


def smoke_test(experiment: ExperimentConfig, batch_size: int = 2, num_views: int = 1, seed: int = 0) -> dict:
    """forward + backward + a prediction on a synthetic batch; raises AssertionError on a broken contract."""
    torch.manual_seed(seed)
    platform = experiment.platform
    examples = synthetic_examples(platform, batch_size, num_views, seed=seed)
    cameras = list(examples[0]["images"])  # the smoke batch's cameras, whatever the config's dataset has
    framework = build_framework(experiment)
    processor = build_processor(experiment, framework, synthetic_norm_stats(examples), camera_keys=cameras)
    processor.fit(examples)
    start = time.perf_counter()
    loss = framework(processor(examples))["loss"]
    loss.backward()
    with torch.no_grad():  # what Policy.predict does (core/policy/policy.py; the framework layer sits below it)
        batch = processor(examples, targets=False)
        predicted = processor.postprocess(
            framework.eval().sample_actions(batch, torch.Generator().manual_seed(0)), batch
        )
    elapsed = time.perf_counter() - start
    expected = (batch_size, platform.action_horizon, platform.action_dim)
    assert torch.isfinite(loss), f"loss is not finite: {loss.item()}"
    assert predicted["actions"].shape == expected, f"actions: expected {expected}, got {predicted['actions'].shape}"
    assert np.isfinite(predicted["actions"]).all(), "predicted actions are not finite"
    grads = [p.grad for p in framework.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads), "missing or non-finite gradients"
    params = sum(p.numel() for p in framework.parameters())
    return {"params": params, "loss": loss.item(), "actions": predicted["actions"].shape, "seconds": elapsed}


def run_standalone(name: str, argv: list[str] | None = None) -> int:
    parser = FlagParser(description=f"Smoke-test the {name} framework on a synthetic batch.")
    parser.add_argument("--config-yaml", help="experiment YAML (default: a tiny offline config)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--views", type=int, default=1)
    args, overrides = parser.parse_known_args(argv)
    try:
        experiment = smoke_experiment(name, args.config_yaml, overrides)
    except (ValueError, KeyError) as exc:  # config errors: one line naming the key and the fix
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = smoke_test(experiment, args.batch_size, args.views)
    applied = f" overrides: {' '.join(overrides)}" if overrides else ""
    print(
        f"{experiment.framework['name']}: params {result['params']:,} loss {result['loss']:.4f} "
        f"actions {tuple(result['actions'])} time {result['seconds']:.2f}s{applied}"
    )
    return 0
