"""QwenLayerwiseFM3D: geometry in the VLM input, gradients into the encoder, and the spatial ablation configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from vlablocks.core.config import PlatformConfig, load_config, parse_experiment
from vlablocks.core.framework.qwen_layerwise_fm_3d import QwenLayerwiseFM3D
from vlablocks.core.framework.standalone import run_standalone
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.geometry.preprocess import default_intrinsics
from vlablocks.core.policy.policy import Policy, build_policy
from vlablocks.core.training.train import train
from vlablocks.tools.sweep.sweep import build_variants
from vlablocks.tools.toy.toy import ToyTabletopEnv
from vlablocks.tools.toy.toy_dataset import write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs/frameworks/qwen_layerwise_fm_3d.yaml"
ABLATIONS = sorted((ROOT / "configs/experiments/ablations").glob("spatial_*.yaml"))
PLATFORM = {"name": "test", "action_horizon": 4, "action_dim": 2, "state_dim": 2}
SMALL = {
    "action_model": {"num_layers": 2, "hidden_dim": 32, "num_heads": 2, "num_inference_steps": 2},
    "geometric_encoder": {"image_size": 56, "output_dim": 32, "info_sharing_layers": 1},
}


def examples_with_depth(batch_size: int = 2, views: int = 2) -> list[dict]:
    examples = synthetic_examples(PlatformConfig(**PLATFORM), batch_size, views)
    rng = np.random.default_rng(0)
    for example in examples:
        images = example["images"]
        example["depth"] = {
            cam: rng.uniform(0.5, 1.5, image.shape[:2]).astype(np.float32) for cam, image in images.items()
        }
        example["intrinsics"] = {cam: default_intrinsics(*image.shape[:2], 60.0) for cam, image in images.items()}
    return examples


def build(examples: list[dict], **framework) -> Policy:
    """A QwenLayerwiseFM3D policy (its model: `.model`)."""
    torch.manual_seed(0)
    options = {"name": "QwenLayerwiseFM3D", **{k: dict(v) for k, v in SMALL.items()}}
    for key, value in framework.items():
        options[key] = {**options[key], **value} if isinstance(value, dict) and key in options else value
    experiment = parse_experiment({"platform": PLATFORM, "framework": options})
    return build_policy(experiment, norm_stats=synthetic_norm_stats(examples), camera_keys=list(examples[0]["images"]))


def train_steps(policy: Policy, examples: list[dict], steps: int) -> list[str]:
    """Names of the parameters with a non-zero gradient after `steps` Adam steps."""
    framework: QwenLayerwiseFM3D = policy.model
    optimizer = torch.optim.Adam(framework.parameters(), lr=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        framework(policy.processor(examples))["loss"].backward()
        optimizer.step()
    return [n for n, p in framework.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]


@pytest.mark.parametrize("fusion", ["mean_broadcast", "tokenwise", "cross_attention"])
def test_gradients_reach_the_geometric_encoder(fusion):
    examples = examples_with_depth()
    policy = build(examples, fusion={"name": fusion})
    # Step 1 opens the head's zero-init gates, step 2 the fusion's zero-init output; step 3 reaches the encoder.
    with_grad = train_steps(policy, examples, 3)
    for part in ("geometric_encoder.backbone.", "geometric_encoder.info_sharing.", "geometric_encoder.depth_embed."):
        assert any(n.startswith(part) for n in with_grad), f"{fusion}: no gradient reached {part}"
    assert any(n.startswith("fusion.") for n in with_grad)


def test_the_geometric_branch_changes_what_the_llm_reads():
    examples = examples_with_depth()
    policy = build(examples)
    framework = policy.model
    torch.nn.init.normal_(framework.fusion.fuse.proj.weight, std=0.1)
    batch = policy.processor(examples)
    assert batch.geometry is not None and batch.geometry.points is not None  # the processor prepared the depth
    assert batch.geometry.pixels.shape[:2] == batch.geometry.view_mask.shape == (2, 2)
    with torch.no_grad():
        _, fused = framework.encode_prefix(batch)
        plain = framework.vlm(batch.vlm)
    vision = fused.vision_mask
    assert (fused.layers[0][vision] - plain.hidden_states[0][vision]).abs().max() > 1e-3
    torch.testing.assert_close(fused.layers[0][~vision], plain.hidden_states[0][~vision])  # text untouched


def test_no_geometric_branch_builds_no_geometric_parameters():
    examples = synthetic_examples(PlatformConfig(**PLATFORM), 2)
    with_geometry_policy = build(examples)
    without_policy = build(examples, use_geometric_branch=False)
    with_geometry, without = with_geometry_policy.model, without_policy.model
    assert without.geometric_encoder is None and without.fusion is None
    names = [n for n, _ in without.named_parameters()]
    assert names and not any(n.startswith(("geometric_encoder.", "fusion.")) for n in names)
    geometric = sum(p.numel() for n, p in with_geometry.named_parameters() if n.startswith(("geometric_", "fusion.")))
    total = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert geometric > 0 and total(with_geometry) - total(without) == geometric
    assert with_geometry_policy.processor.config.geometry == with_geometry.geometric_encoder.preprocess_options()
    assert without_policy.processor.config.geometry is None and without_policy.processor(examples).geometry is None


def test_depth_is_optional_per_batch():
    examples = synthetic_examples(PlatformConfig(**PLATFORM), 2, 2)  # no depth, no intrinsics
    policy = build(examples)
    assert policy.processor(examples).geometry.points is None
    with_grad = train_steps(policy, examples, 3)
    assert any(n.startswith("geometric_encoder.backbone.") for n in with_grad)
    assert not any(n.startswith("geometric_encoder.depth_embed.") for n in with_grad)
    actions = policy.predict(examples)["actions"]
    assert actions.shape == (2, 4, 2) and np.isfinite(actions).all()


def test_standalone_smoke_runner(capsys):
    assert run_standalone("QwenLayerwiseFM3D", ["--views", "2"]) == 0
    assert capsys.readouterr().out.startswith("QwenLayerwiseFM3D: params")


# ---- the ablation configs ------------------------------------------------------------------------------

EXPECTED = {  # variant -> (use_geometric_branch, use_concat_cross_context, fusion or None)
    "spatial_xattn_no_geometry": (False, False, None),
    "spatial_concat_no_geometry": (False, True, None),
    "spatial_concat_geo_mean_broadcast": (True, True, "mean_broadcast"),
    "spatial_concat_geo_tokenwise": (True, True, "tokenwise"),
    "spatial_concat_geo_cross_attention": (True, True, "cross_attention"),
}


def test_ablation_configs_are_small_diffs_over_one_base():
    assert sorted(p.stem for p in ABLATIONS) == sorted(EXPECTED)
    variants = build_variants(str(BASE), [str(p) for p in ABLATIONS], None, [])
    for variant in variants:
        framework = variant.experiment.framework
        geometry, concat, fusion = EXPECTED[variant.name]
        assert framework["use_geometric_branch"] is geometry
        assert framework["action_model"]["use_concat_cross_context"] is concat
        if fusion:
            assert framework["fusion"]["name"] == fusion
    for path in ABLATIONS:
        text = path.read_text()
        variant = path.stem.removeprefix("spatial_")
        assert f"_base_: [../../frameworks/qwen_layerwise_fm_3d.yaml, ../spatial_variants/{variant}.yaml]" in text
        assert len([line for line in text.splitlines() if line.strip() and not line.startswith("#")]) <= 10


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy") / "toy"
    write_toy_dataset(root, 2, seed=0, config=ToyTabletopEnv.Config(image_size=56))
    return root


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_every_ablation_config_trains_a_step_on_toy_data(path, toy_root, tmp_path):
    overrides = [
        f"dataset.root={toy_root}",
        f"run_dir={tmp_path / 'run'}",
        "trainer.max_steps=1",
        "trainer.batch_size=2",
        "trainer.warmup_steps=0",
        "framework.action_model.hidden_dim=32",
        "framework.geometric_encoder.image_size=56",
        "framework.geometric_encoder.output_dim=32",
    ]
    result = train(load_config(path, overrides))
    assert len(result["losses"]) == 1 and np.isfinite(result["losses"][0])
    with safe_open(str(Path(result["checkpoint"]) / "model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    geometry, _, fusion = EXPECTED[path.stem]
    assert any(k.startswith("geometric_encoder.depth_embed.") for k in keys) is geometry  # toy data has depth
    assert any(k.startswith("fusion.") for k in keys) is geometry
    if fusion == "cross_attention":
        assert "fusion.gate.weight" in keys
