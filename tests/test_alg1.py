"""alg1: the phased schedule (step-exact), the next frame's depth through dataset and processor, and the
auxiliary losses (zero gradient at weight 0, each falls when trained alone on toy heights data)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vlablocks.core.build import build
from vlablocks.core.config import PlatformConfig, parse_experiment
from vlablocks.core.dataloader.normalization import compute_norm_stats
from vlablocks.core.policy.policy import Policy, build_policy
from vlablocks.core.registry import DATASETS
from vlablocks.core.training.loss_schedule import PhaseSchedule, scheduled_loss
from vlablocks.methods.spatial.world_losses import (
    FusionRegularizer,
    GeometryDynamics,
    GeometryReconstruction,
    WorldLoss,
    cell_geometry,
)
from vlablocks.tools.toy.toy import ToyTabletopEnv
from vlablocks.tools.toy.toy_dataset import write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
PLATFORM = {"name": "toy", "action_horizon": 4, "action_dim": 2, "state_dim": 2}
SMALL = {
    "vlm": {"name": "qwen2_5_vl", "arch": "tiny", "image_size": 56},
    "action_model": {"name": "layerwise_flow_matching", "num_layers": 2, "hidden_dim": 32, "num_heads": 2},
    "geometric_encoder": {"name": "dinov2_multiview", "image_size": 56, "output_dim": 32, "info_sharing_layers": 1},
}
NAMES = ("dyn", "geo", "reg")


def alg1(**weights: float) -> dict:
    """The framework options turning alg1's losses on: alg1(geo=0.5) -> auxiliary_losses.alg1_geo.weight 0.5."""
    losses = {f"alg1_{n}": {"weight": w, **({} if n == "reg" else {"hidden_dim": 32})} for n, w in weights.items()}
    return {"auxiliary_losses": losses}


def test_schedule_is_step_exact_at_every_phase_boundary():
    schedule = PhaseSchedule(phase_a_steps=3, ramp_steps=4)
    # hand-computed: steps 1-3 phase A (0), 4-6 the ramp (1/4, 2/4, 3/4), from step 7 = N + M on the full weight
    expected = {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.25, 5: 0.5, 6: 0.75, 7: 1.0, 8: 1.0, 100: 1.0}
    assert {s: schedule.action_weight(s) for s in expected} == expected
    assert [schedule.phase(s) for s in (3, 4, 6, 7)] == ["A", "B", "B", "C"]
    no_ramp = PhaseSchedule(phase_a_steps=2, ramp_steps=0)
    assert [no_ramp.action_weight(s) for s in (1, 2, 3)] == [0.0, 0.0, 1.0]
    assert PhaseSchedule(0, 2).action_weight(1) == 0.5 and not PhaseSchedule().active
    with pytest.raises(ValueError, match=">= 0"):
        PhaseSchedule(-1, 0)
    with pytest.raises(ValueError, match="count from 1"):
        schedule.action_weight(0)


def test_action_first_order_ramps_the_auxiliary_losses_in_instead():
    """The StarVLA-3D draft's order: the action loss at full weight throughout, the auxiliary part off for N steps
    and ramped in over M; hand-computed on a made-up forward (loss 5 = action 2 + auxiliary 3)."""
    schedule = PhaseSchedule(phase_a_steps=2, ramp_steps=4, order="action_first")
    outputs = {"loss": torch.tensor(5.0), "action_loss": torch.tensor(2.0)}
    # steps 1-2: 2 + 0 * 3; ramp 3-5: 2 + 1/4, 2/4, 3/4 of 3; from step 6 = N + M: 2 + 3
    expected = {1: 2.0, 2: 2.0, 3: 2.75, 4: 3.5, 5: 4.25, 6: 5.0, 50: 5.0}
    assert {s: float(scheduled_loss(outputs, schedule, s)) for s in expected} == pytest.approx(expected)
    assert [schedule.action_weight(s) for s in (1, 4, 9)] == [1.0, 1.0, 1.0]
    assert [schedule.auxiliary_weight(s) for s in (1, 4, 9)] == [0.0, 0.5, 1.0]
    geometry_first = PhaseSchedule(phase_a_steps=2, ramp_steps=4)
    assert float(scheduled_loss(outputs, geometry_first, 4)) == pytest.approx(0.5 * 2.0 + 3.0)
    with pytest.raises(ValueError, match="order must be one of geometry_first, action_first"):
        PhaseSchedule(1, 1, order="aux_first")


@pytest.fixture(scope="module")
def heights_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy3d") / "data"
    return write_toy_dataset(out, episodes=3, seed=0, config=ToyTabletopEnv.Config(variant="heights"))


@pytest.fixture(scope="module")
def samples(heights_data) -> list[dict]:
    options = {
        "name": "lerobot",
        "root": str(heights_data),
        "camera_keys": ["observation.images.top"],
        "depth_keys": ["observation.depth.top"],
        "intrinsics_keys": ["observation.intrinsics.top"],
        "next_frame_offset": 1,
        "dataset_name": "toy",
    }
    dataset = build(DATASETS, options, platform=PlatformConfig(**PLATFORM), seed=0)
    return [dataset[i] for i in range(len(dataset))]


def test_dataset_gives_the_next_frames_depth_and_marks_the_episode_end(samples):
    for here, there in zip(samples, samples[1:]):
        if here["next"]["valid"]:
            np.testing.assert_array_equal(here["next"]["depth"]["top"], there["depth"]["top"])
        else:  # the last frame of its episode: its own depth, flagged
            np.testing.assert_array_equal(here["next"]["depth"]["top"], here["depth"]["top"])
    assert sum(not s["next"]["valid"] for s in samples) == 3  # one per episode
    assert all(s["next"]["intrinsics"]["top"].shape == (3, 3) for s in samples)


def policy_for(samples: list[dict], **options) -> Policy:
    """A small QwenLayerwiseFM3D policy (its model: `.model`) with norm stats of `samples`."""
    torch.manual_seed(0)
    experiment = parse_experiment(
        {"platform": PLATFORM, "framework": {"name": "QwenLayerwiseFM3D", **SMALL, **options}}
    )
    stats = compute_norm_stats([_InMemory(samples)])
    return build_policy(experiment, norm_stats=stats, camera_keys=["top"])


class _InMemory:
    """The low-dim view norm stats read, over in-memory samples."""

    name, norm_mode = "toy", "q99"

    def __init__(self, samples: list[dict]) -> None:
        self.samples = samples

    def norm_masks(self) -> dict:
        return {}

    def low_dim_batches(self, batch_size: int):
        yield {
            "action": np.concatenate([s["action"] for s in self.samples]).astype(np.float64),
            "state": np.stack([s["state"] for s in self.samples]).astype(np.float64),
        }


def test_processor_prepares_next_points_only_for_training(samples):
    policy = policy_for(samples, **alg1(dyn=1.0))
    batch = policy.processor(samples[:4])
    geometry = batch.geometry
    assert geometry.next_points.shape == geometry.points.shape == (4, 1, 4, 56, 56)
    assert geometry.next_valid.tolist() == [s["next"]["valid"] for s in samples[:4]]
    assert policy.processor(samples[:4], targets=False).geometry.next_points is None  # inference never sees it


def test_cell_geometry_is_the_mean_of_each_cells_points():
    points = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4, 4)
    cells = cell_geometry(points, (2, 2))
    assert cells.shape == (1, 2, 2, 2, 4)
    assert cells[0, 1, 1, 0, 2] == points[0, 1, 2, 2:4, 0:2].mean()


def test_phase_weights_reach_the_loss_step_exact(samples):
    """The model reports loss = action_loss + aux; trainer.loss_schedule weights the action part by the step."""
    policy = policy_for(samples, **alg1(geo=0.5))
    framework = policy.model
    batch = policy.processor(samples[:4])
    schedule = PhaseSchedule(phase_a_steps=2, ramp_steps=2)
    torch.manual_seed(1)
    out = framework(batch)
    assert float(out["action_loss"].detach()) == pytest.approx(float(out["log"]["action_loss"]))
    for step, weight in {1: 0.0, 2: 0.0, 3: 0.5, 4: 1.0, 5: 1.0}.items():
        expected = weight * float(out["log"]["action_loss"]) + 0.5 * float(out["log"]["alg1_geo_loss"])
        assert float(scheduled_loss(out, schedule, step).detach()) == pytest.approx(expected, rel=1e-6)
    assert scheduled_loss(out, PhaseSchedule(), 1) is out["loss"]  # no schedule: the model's loss as it is
    no_aux = policy_for(samples).model(batch)  # no auxiliary losses: nothing to schedule
    with pytest.raises(ValueError, match="reports no `action_loss`"):
        scheduled_loss(no_aux, schedule, 1)


def test_the_schedule_left_the_model_for_the_trainer(samples, tmp_path):
    with pytest.raises(ValueError, match="sagr_phase_a_steps moved to trainer.loss_schedule.phase_a_steps"):
        policy_for(samples, sagr_phase_a_steps=2)
    # a checkpoint written before the move (its framework section still has the keys) loads without them
    from vlablocks.core.manifest import write_manifest
    from vlablocks.core.policy.policy import Policy

    policy = policy_for(samples, **alg1(geo=0.5))
    policy.save_pretrained(tmp_path / "ckpt")
    config = tmp_path / "ckpt" / "config.yaml"
    old_section = config.read_text().replace("framework:\n", "framework:\n  sagr_phase_a_steps: 300\n", 1)
    config.write_text(old_section)
    write_manifest(tmp_path / "ckpt")  # as an old checkpoint's own manifest lists it
    loaded = Policy.from_pretrained(tmp_path / "ckpt")
    assert type(loaded.model) is type(policy.model)


def test_a_checkpoint_written_before_auxiliary_losses_loads_with_its_world_loss_heads(samples, tmp_path):
    """Before `auxiliary_losses`, alg1's options were framework fields (loss_w_geo, world_hidden_dim) and the
    heads' weights sat under world_losses.*: such a checkpoint loads into the composed losses, weights equal."""
    from safetensors.torch import load_file, save_file

    from vlablocks.core.manifest import write_manifest

    policy = policy_for(samples, **alg1(geo=0.5))
    directory = tmp_path / "ckpt"
    policy.save_pretrained(directory)
    config = (directory / "config.yaml").read_text()
    start = config.index("  auxiliary_losses:")
    end = config.index("\n  insulate_vlm", start)
    config = config[:start] + "  loss_w_geo: 0.5\n  loss_w_dyn: 0.0\n  world_hidden_dim: 32" + config[end:]
    (directory / "config.yaml").write_text(config)
    state = load_file(str(directory / "model.safetensors"))
    old = {k.replace("auxiliary_losses.alg1_geo.head.", "world_losses.geometry_head."): v for k, v in state.items()}
    assert any(k.startswith("world_losses.geometry_head.") for k in old)
    save_file(old, str(directory / "model.safetensors"))
    write_manifest(directory)
    loaded = Policy.from_pretrained(directory).model
    assert loaded.config.auxiliary_losses["alg1_geo"] == {"weight": 0.5, "hidden_dim": 32}
    assert list(loaded.auxiliary_losses) == ["alg1_geo"]  # alg1_dyn kept its width at weight 0: not built
    for name, value in policy.model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"loss_w_geo moved to framework.auxiliary_losses.alg1_geo.weight"):
        policy_for(samples, loss_w_geo=0.5)  # a config of today is told where the key went


@pytest.mark.parametrize("name", NAMES)
def test_a_loss_of_weight_zero_adds_exactly_zero_gradient(samples, name):
    policy = policy_for(samples, **alg1(**{n: 0.0 if n == name else 1.0 for n in NAMES}))
    framework = policy.model
    torch.nn.init.normal_(framework.fusion.fuse.proj.weight, std=0.05)  # a non-identity fusion: L_reg is not 0
    out = framework(policy.processor(samples[:4]))
    out["loss"] = scheduled_loss(out, PhaseSchedule(phase_a_steps=5), 1)  # phase A: only the auxiliary losses
    assert f"alg1_{name}_loss" not in out and f"alg1_{name}_loss" not in out["log"]
    assert f"alg1_{name}" not in framework.auxiliary_losses  # weight 0 builds nothing: nothing to train or save
    assert not any(f"alg1_{name}" in key for key in framework.state_dict())
    others = sum(out[f"alg1_{n}_loss"] for n in NAMES if n != name)
    params = [p for p in framework.parameters() if p.requires_grad]
    total = torch.autograd.grad(out["loss"], params, allow_unused=True, retain_graph=True)
    reference = torch.autograd.grad(others, params, allow_unused=True)
    for param, a, b in zip(params, total, reference):  # None: no path to the loss, i.e. a zero gradient
        zero = torch.zeros_like(param)
        assert torch.equal(zero if a is None else a, zero if b is None else b)
    # and the loss functions themselves: weight 0 times a computed loss has an all-zero gradient
    vlm, platform = SimpleNamespace(hidden_size=8), SimpleNamespace(action_horizon=2, action_dim=2)
    geo = GeometryReconstruction(WorldLoss.Config(weight=1.0, hidden_dim=8), vlm=vlm, platform=platform)
    dyn = GeometryDynamics(WorldLoss.Config(weight=1.0, hidden_dim=8), vlm=vlm, platform=platform)
    assert FusionRegularizer(FusionRegularizer.Config(weight=1.0), vlm=vlm, platform=platform).weight == 1.0
    fused = torch.randn(5, 8, requires_grad=True)
    zero = 0.0 * geo.reconstruction(fused, torch.randn(5, 4)) + 0.0 * (fused - torch.randn(5, 8)).pow(2).mean()
    zero = zero + 0.0 * dyn.dynamics(
        fused, torch.randn(2, 4), torch.tensor([0, 0, 1, 1, 1]), torch.randn(5, 4), torch.ones(5, dtype=torch.bool)
    )
    assert torch.count_nonzero(torch.autograd.grad(zero, fused)[0]) == 0


@pytest.mark.parametrize("name", NAMES)
def test_each_auxiliary_loss_falls_when_trained_alone_on_toy_depth(samples, name):
    policy = policy_for(samples, **alg1(**{name: 1.0}))
    framework = policy.model
    if name == "reg":  # the fusion starts as the identity (L_reg = 0): start it away from it
        torch.nn.init.normal_(framework.fusion.fuse.proj.weight, std=0.05)
    batch = policy.processor(samples[:8])
    optimizer = torch.optim.Adam(framework.parameters(), lr=2e-3)
    history, phase_a = [], PhaseSchedule(phase_a_steps=1000)
    for step in range(1, 16):
        out = framework(batch)
        optimizer.zero_grad()
        scheduled_loss(out, phase_a, step).backward()
        if step == 1:  # phase A: the action head gets no gradient
            assert all(p.grad is None or not p.grad.any() for p in framework.action_model.parameters())
        optimizer.step()
        history.append(float(out["log"][f"alg1_{name}_loss"]))
    assert history[-1] < 0.5 * history[0], f"L_{name} did not fall: {history}"


def test_vlablocks_train_logs_the_scheduled_weights_step_by_step(heights_data, tmp_path):
    import json

    from vlablocks.core.config import load_config
    from vlablocks.core.training.train import train

    overrides = [
        f"dataset.root={heights_data}",
        f"run_dir={tmp_path / 'run'}",
        "trainer.max_steps=4",
        "trainer.batch_size=2",
        "trainer.num_workers=0",
        "trainer.warmup_steps=0",
        "trainer.loss_schedule.phase_a_steps=1",
        "trainer.loss_schedule.ramp_steps=2",
        "framework.action_model.hidden_dim=32",
        "framework.geometric_encoder.image_size=56",
        "framework.geometric_encoder.output_dim=32",
    ]
    train(load_config(ROOT / "configs/experiments/toy3d/spatial_concat_geo_tokenwise_alg1.yaml", overrides))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["weight_action"] for r in records] == [0.0, 0.5, 1.0, 1.0]
    assert [r["weight_auxiliary"] for r in records] == [1.0, 1.0, 1.0, 1.0]
    assert all(
        {"alg1_dyn_loss", "alg1_geo_loss", "alg1_reg_loss", "readout_loss", "action_loss"} <= set(r) for r in records
    )
