"""DeepSpeed ZeRO-2/3 and DDP on 2 CPU ranks match one plain process; batch sizes come only from `trainer:`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from launch_helpers import ACCELERATE_CONFIGS, ROOT, accelerate_launch, cpu_env, zero_worker_args

from vlablocks.core.config.trainer import TrainerConfig
from vlablocks.core.training.distributed import (
    apply_derived_values,
    deepspeed_batch_config,
    prepare_distributed_environment,
)

STEPS, GLOBAL_BATCH, CLIP = 10, 8, 0.3
DERIVED = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size", "gradient_clipping")


def _run(prefix: list[str], out, batch_size: int, accum: int = 1, clip: float = CLIP) -> dict:
    args = zero_worker_args(out, STEPS, batch_size, accum, clip)
    proc = subprocess.run(prefix + args, cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def _max_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) == STEPS
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """One plain process (no launcher, no DeepSpeed), the whole global batch per step."""
    out = tmp_path_factory.mktemp("ref") / "losses.json"
    return _run([sys.executable], out, batch_size=GLOBAL_BATCH)


@pytest.mark.parametrize(
    "config, batch_size, accum, distributed_type, optimizer",
    [
        ("zero2.yaml", 2, 2, "DEEPSPEED", "DeepSpeedZeroOptimizer"),
        ("zero3.yaml", 2, 2, "DEEPSPEED", "DeepSpeedZeroOptimizer_Stage3"),
        ("ddp.yaml", 4, 1, "MULTI_CPU", "AdamW"),
    ],
    ids=["zero2-2ranks-accum2", "zero3-2ranks-accum2", "ddp-2ranks"],
)
def test_two_cpu_ranks_match_one_process(tmp_path, reference, config, batch_size, accum, distributed_type, optimizer):
    """2 ranks x micro-batch x accumulation = the reference's one batch of 8: the same 10 losses (fp32, 1e-4)."""
    result = _run(accelerate_launch(config, 2), tmp_path / "losses.json", batch_size, accum)

    assert result["num_processes"] == 2 and result["distributed_type"] == distributed_type
    assert result["optimizer"] == optimizer
    assert result["state_dict_numel"] == reference["state_dict_numel"] == 16 * 32 + 32 + 32 + 1  # full MLP, gathered
    if distributed_type == "DEEPSPEED":
        ds = result["deepspeed"]
        assert ds["zero_optimization"]["stage"] == {"zero2.yaml": 2, "zero3.yaml": 3}[config]
        assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (batch_size, accum)
        assert ds["train_batch_size"] == GLOBAL_BATCH and ds["gradient_clipping"] == CLIP
    assert reference["num_processes"] == 1 and reference["distributed_type"] == "NO"
    assert _max_diff(result["losses"], reference["losses"]) <= 1e-4


def test_clipping_reaches_deepspeed(tmp_path, reference):
    """DeepSpeed ignores accelerator.clip_grad_norm_; only the config value clips. Unclipped runs differ."""
    unclipped = _run([sys.executable], tmp_path / "unclipped.json", batch_size=GLOBAL_BATCH, clip=0.0)
    assert _max_diff(unclipped["losses"], reference["losses"]) > 1e-3


def test_deepspeed_batch_config_derives_from_trainer():
    trainer = TrainerConfig(batch_size=4, gradient_accumulation_steps=3, max_grad_norm=None)
    assert deepspeed_batch_config(trainer, world_size=2) == {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 3,
        "train_batch_size": 24,
        "gradient_clipping": 0.0,
    }
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        deepspeed_batch_config(trainer, world_size=0)


def test_hard_coded_value_is_kept_only_if_it_agrees():
    derived = deepspeed_batch_config(TrainerConfig(batch_size=4, max_grad_norm=1.0), world_size=2)
    filled = apply_derived_values({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": 4}, dict(derived))
    assert filled["train_batch_size"] == 8 and filled["gradient_clipping"] == 1.0
    with pytest.raises(ValueError, match=r"train_micro_batch_size_per_gpu=3 but the trainer section implies 4"):
        apply_derived_values({"train_micro_batch_size_per_gpu": 3}, derived)


def test_launcher_accumulation_that_disagrees_is_an_error(monkeypatch):
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=4 but trainer.gradient_accumulation_steps=2"):
        prepare_distributed_environment(TrainerConfig(gradient_accumulation_steps=2))


@pytest.mark.parametrize("config, stage", [("zero2.yaml", 2), ("zero3.yaml", 3)])
def test_shipped_configs_leave_batch_sizes_to_the_trainer(config, stage):
    accelerate_cfg = yaml.safe_load((ACCELERATE_CONFIGS / config).read_text())
    ds_section = accelerate_cfg["deepspeed_config"]
    # accelerate exports these as env vars that override the Accelerator's arguments: they must not be here.
    assert not {"gradient_accumulation_steps", "gradient_clipping", "zero_stage"} & set(ds_section)
    assert "mixed_precision" not in accelerate_cfg
    ds = json.loads((ROOT / ds_section["deepspeed_config_file"]).read_text())
    assert ds["zero_optimization"]["stage"] == stage
    assert {key: ds[key] for key in DERIVED} == {key: "auto" for key in DERIVED}
