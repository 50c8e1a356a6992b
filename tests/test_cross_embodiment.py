"""Cross-embodiment mixtures (issue 23): padded action dims carry no loss and no gradient in every head, the
processor pads and masks a D=2 / D=3 mixture, postprocess and the server trim each robot back to its own size."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from head_helpers import CONTINUOUS_HEADS, B, D, T, build, make_batch, make_conditioning, wake

from deployment.client import PolicyClient, ProtocolError
from vlablocks.cli.main import main as cli
from vlablocks.core.action_model.masking import hold_last_valid, masked_mean
from vlablocks.core.build import build as build_component
from vlablocks.core.config import ConfigError, PlatformConfig, load_config
from vlablocks.core.dataloader.base import RawDataset
from vlablocks.core.dataloader.embodiments import dataset_embodiments
from vlablocks.core.policy.policy import build_policy
from vlablocks.core.processor.config import FASTOptions, ProcessorConfig
from vlablocks.core.processor.pipeline import Processor
from vlablocks.core.registry import DATASETS
from vlablocks.core.serving.policy import load_policy
from vlablocks.core.serving.server import running_server
from vlablocks.tools.toy.toy_arm3 import LOWER_RATE, Z_START, arm3_episode

REPO = Path(__file__).resolve().parents[1]
# The module that produces each head's raw outputs, and how many outputs each action scalar has there.
OUTPUT_MODULE = {
    "l1_regression": "mlp",
    "binned": "mlp",
    "flow_matching": "output",
    "layerwise_flow_matching": "output",
    "shared_attention_flow_matching": "output",
    "diffusion": "noise_net",
}


def dim_mask() -> torch.Tensor:
    """[B, D]: samples 0 and 2 are a smaller robot (their last action dim is padding)."""
    mask = torch.ones(B, D, dtype=torch.bool)
    mask[0, -1] = mask[2, -1] = False
    return mask


def loss_of(head, actions, is_pad, state, mask, seed: int = 3) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return head.compute_loss(make_conditioning(head), actions, is_pad, state, generator=generator, action_dim_mask=mask)


# ---- every head: padded dims get no loss and exactly zero gradient ---------------------------------------
def test_every_registered_head_is_covered():
    assert set(OUTPUT_MODULE) == set(CONTINUOUS_HEADS)


@pytest.mark.parametrize("name", CONTINUOUS_HEADS)
def test_padded_target_values_do_not_change_the_loss(name):
    head = wake(build(name))
    actions, is_pad, state = make_batch()
    mask = dim_mask()
    perturbed = actions.clone()
    perturbed[~mask.unsqueeze(1).expand_as(actions)] = 7.5  # anything at the padded dims, even out of range
    base = loss_of(head, actions, is_pad, state, mask)["loss"]
    assert torch.equal(base, loss_of(head, perturbed, is_pad, state, mask)["loss"])
    # Without the mask the same perturbation does change the loss: the test can fail.
    assert not torch.equal(
        loss_of(head, actions, is_pad, state, None)["loss"], loss_of(head, perturbed, is_pad, state, None)["loss"]
    )


@pytest.mark.parametrize("name", CONTINUOUS_HEADS)
def test_padded_dims_get_exactly_zero_gradient_at_the_heads_outputs(name):
    head = wake(build(name))
    actions, is_pad, state = make_batch()
    mask = dim_mask()
    captured = {}

    def keep_grad(module, inputs, output):
        output.register_hook(lambda grad: captured.setdefault("grad", grad))

    getattr(head, OUTPUT_MODULE[name]).register_forward_hook(keep_grad)
    actions = actions.clone().requires_grad_(True)
    loss_of(head, actions, is_pad, state, mask)["loss"].backward()
    grad = captured["grad"]
    grad = grad.reshape(grad.shape[0], T, D, -1)  # [B x repeats, T, D, outputs per scalar]
    rows = mask.repeat_interleave(grad.shape[0] // B, dim=0)[:, None, :, None].expand_as(grad)
    assert grad[~rows].abs().max() == 0 and grad[rows].abs().sum() > 0
    if actions.grad is not None:  # heads whose targets are differentiable (binned quantizes them)
        real = mask.unsqueeze(1).expand_as(actions)
        assert actions.grad[~real].abs().max() == 0 and actions.grad[real].abs().sum() > 0


@pytest.mark.parametrize("name", CONTINUOUS_HEADS)
def test_an_all_real_mask_is_bit_identical_to_none(name):
    head = wake(build(name))
    actions, is_pad, state = make_batch()
    full = torch.ones(B, D, dtype=torch.bool)
    assert torch.equal(
        loss_of(head, actions, is_pad, state, None)["loss"], loss_of(head, actions, is_pad, state, full)["loss"]
    )


def test_binned_cross_entropy_and_accuracy_skip_padded_scalars():
    head = wake(build("binned"))
    actions, is_pad, state = make_batch()
    mask = torch.zeros(B, D, dtype=torch.bool)
    mask[:, 0] = True  # only dim 0 is real
    masked = loss_of(head, actions, is_pad, state, mask)
    log_probs = head.logits(make_conditioning(head), state).log_softmax(-1)[..., :1, :]  # dim 0 only
    bins = head.to_bins(actions.masked_fill(is_pad.unsqueeze(-1), 0.0))[..., :1]
    expected = masked_mean(-log_probs.gather(-1, bins.unsqueeze(-1)).squeeze(-1), is_pad)
    torch.testing.assert_close(masked["loss"], expected, rtol=0, atol=1e-6)
    assert not torch.isclose(loss_of(head, actions, is_pad, state, None)["loss"], expected)


def test_masking_helpers_zero_padded_dims_and_reject_2d_values_with_a_dim_mask():
    actions, is_pad, _ = make_batch()
    filled = hold_last_valid(actions, is_pad, dim_mask())
    assert (filled[0, :, -1] == 0).all() and (filled[2, :, -1] == 0).all()
    assert torch.equal(filled[1], hold_last_valid(actions, is_pad)[1])
    with pytest.raises(ValueError, match=r"needs values \[B, T, D\]"):
        masked_mean(torch.ones(B, T), is_pad, dim_mask())


# ---- the processor: a D=2 / D=3 mixture ------------------------------------------------------------------
def stats_entry(dim: int, scale: float) -> dict:
    lo, hi = [-scale] * dim, [scale] * dim
    return {
        "min": lo,
        "max": hi,
        "q01": lo,
        "q99": hi,
        "mean": [0.0] * dim,
        "std": [1.0] * dim,
        "mask": [True] * dim,
        "count": 10,
    }


STATS = {
    "toy": {"mode": "q99", "action": stats_entry(2, 2.0), "state": stats_entry(2, 1.0)},
    "toy_arm3": {"mode": "q99", "action": stats_entry(3, 4.0), "state": stats_entry(3, 1.0)},
}
EMBODIMENTS = {
    "toy": {"action_dim": 2, "state_dim": 2, "datasets": ["toy"]},
    "toy_arm3": {"action_dim": 3, "state_dim": 3, "datasets": ["toy_arm3"]},
}


def processor(embodiments: dict | None = EMBODIMENTS, **options) -> Processor:
    dims = (3, 3) if embodiments else (2, 2)
    config = ProcessorConfig(
        camera_keys=("top",),
        action_horizon=T,
        action_dim=dims[0],
        state_dim=dims[1],
        embodiment="toy",
        image_size=16,
        view_size=(16, 16),
        patch_size=8,
        vision_language=False,
        embodiments=embodiments,
        **options,
    )
    stats = STATS if embodiments else {"toy": STATS["toy"]}
    return Processor(config, None, stats)


def sample(embodiment: str, seed: int) -> dict:
    dim = EMBODIMENTS[embodiment]["action_dim"]
    rng = np.random.default_rng(seed)
    return {
        "images": {"top": np.zeros((16, 16, 3), np.uint8)},
        "prompt": "go",
        "state": rng.uniform(-1, 1, dim).astype(np.float32),
        "action": rng.uniform(-1, 1, (T, dim)).astype(np.float32),
        "action_is_pad": np.zeros(T, bool),
        "dataset_name": embodiment,
        "embodiment": embodiment,
    }


def test_a_two_embodiment_batch_is_padded_and_masked():
    samples = [sample("toy", 0), sample("toy_arm3", 1), sample("toy", 2)]
    batch = processor()(samples)
    assert batch.actions.shape == (3, T, 3) and batch.state.shape == (3, 3)
    assert batch.action_dim_mask.tolist() == [[True, True, False], [True, True, True], [True, True, False]]
    assert (batch.actions[[0, 2], :, 2] == 0).all() and (batch.state[[0, 2], 2] == 0).all()
    np.testing.assert_allclose(batch.actions[0, :, :2].numpy(), samples[0]["action"] / 2.0, atol=1e-6)  # toy q99: +-2
    np.testing.assert_allclose(batch.actions[1].numpy(), samples[1]["action"] / 4.0, atol=1e-6)  # arm3: +-4


def test_single_embodiment_batches_have_no_dim_mask():
    assert processor(None)([sample("toy", 0), sample("toy", 1)]).action_dim_mask is None
    assert processor()([sample("toy_arm3", 0), sample("toy_arm3", 1)]).action_dim_mask is None  # nothing padded


def test_postprocess_trims_each_sample_to_its_robot_and_unnormalizes():
    proc = processor()
    batch = proc([sample("toy", 0), sample("toy_arm3", 1)], targets=False)
    normalized = torch.full((2, T, 3), 0.5)
    out = proc.postprocess({"actions": normalized}, batch)
    assert [a.shape for a in out["actions"]] == [(T, 2), (T, 3)]  # a mixed batch: one array per sample
    np.testing.assert_allclose(out["actions"][0], 1.0)  # 0.5 x 2 (toy)
    np.testing.assert_allclose(out["actions"][1], 2.0)  # 0.5 x 4 (arm3)
    single = proc.postprocess({"actions": normalized[:1]}, proc([sample("toy", 0)], targets=False))
    assert single["actions"].shape == (1, T, 2)


def test_requests_resolve_their_embodiment_and_unknown_ones_are_named():
    proc = processor()
    request = {k: v for k, v in sample("toy_arm3", 0).items() if k not in ("action", "action_is_pad", "dataset_name")}
    assert proc([request], targets=False).dataset_names == ("toy_arm3",)
    with pytest.raises(ValueError, match=r"embodiment 'robot9'.*\['toy', 'toy_arm3'\]"):
        proc([{**request, "embodiment": "robot9"}], targets=False)
    with pytest.raises(ValueError, match="'state' has 3 dims; embodiment 'toy' has state_dim 2"):
        proc([{**request, "embodiment": "toy", "dataset_name": "toy"}], targets=False)
    assert proc.metadata["embodiments"] == EMBODIMENTS and "embodiments" not in processor(None).metadata


def test_fast_tokens_refuse_cross_embodiment_mixtures():
    with pytest.raises(ValueError, match="FAST action tokens cannot mix embodiments"):
        processor(fast=FASTOptions())


# ---- the data side: embodiments of a mixture, the synthetic second robot -----------------------------------
def leaf(name: str, embodiment: str, action_dim: int, state_dim: int) -> SimpleNamespace:
    return SimpleNamespace(name=name, embodiment=embodiment, action_dim=action_dim, state_dim=state_dim)


class Mixture(RawDataset):
    """A mixture dataset of stand-in leaves (no samples): what `dataset_embodiments` reads."""

    def __init__(self, *leaves: SimpleNamespace) -> None:
        self.parts = list(leaves)

    def leaves(self) -> list:
        return self.parts


def test_dataset_embodiments_of_a_mixture():
    platform = PlatformConfig(name="toy", action_horizon=T, action_dim=3, state_dim=3)
    mixture = Mixture(leaf("toy", "toy", 2, 2), leaf("toy_arm3", "toy_arm3", 3, 3))
    assert dataset_embodiments(mixture, platform) == EMBODIMENTS
    same = Mixture(leaf("a", "toy", 3, 3), leaf("b", "toy", 3, 3))
    assert dataset_embodiments(same, platform) is None
    clash = Mixture(leaf("a", "toy", 3, 3), leaf("b", "toy", 2, 3))
    with pytest.raises(ConfigError, match="embodiment 'toy' has datasets of two sizes"):
        dataset_embodiments(clash, platform)
    too_big = Mixture(leaf("a", "big", 4, 3))
    with pytest.raises(ConfigError, match="set platform.action_dim"):
        dataset_embodiments(too_big, platform)


def test_arm3_episode_adds_a_deterministic_height():
    frames = [{"observation.state": np.array([0.1, 0.2], np.float32), "action": np.array([0.01, 0.02], np.float32)}]
    frames = arm3_episode(frames * 3)
    heights = [f["observation.state"][2] for f in frames]
    np.testing.assert_allclose(
        heights, [Z_START, Z_START * (1 - LOWER_RATE), Z_START * (1 - LOWER_RATE) ** 2], rtol=1e-6
    )
    np.testing.assert_allclose([f["action"][2] for f in frames], -LOWER_RATE * np.array(heights), rtol=1e-6)
    assert frames[0]["action"].shape == (3,) and frames[0]["action"].dtype == np.float32


# ---- serving a 2-embodiment checkpoint --------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    overrides = ["framework.name=QwenOFT", "platform.action_dim=3", "platform.state_dim=3"]
    experiment = load_config(REPO / "configs/datasets/toy.yaml", overrides)
    policy = build_policy(experiment, STATS, camera_keys=["top"], embodiments=EMBODIMENTS)
    return policy.save_pretrained(tmp_path_factory.mktemp("ckpt") / "two_robots")


def request(embodiment: str | None, state_dim: int) -> dict:
    rng = np.random.default_rng(state_dim)
    obs = {
        "images": {"top": rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)},
        "state": rng.uniform(-1, 1, state_dim).astype(np.float32),
        "prompt": "move to the red block",
    }
    return obs if embodiment is None else {**obs, "embodiment": embodiment}


def test_serving_returns_each_robots_own_shape(checkpoint):
    policy = load_policy(checkpoint)
    assert policy.metadata["embodiments"] == EMBODIMENTS  # carried in the checkpoint
    horizon = policy.metadata["action_horizon"]
    with running_server(policy) as srv, PolicyClient("127.0.0.1", srv.port) as client:
        assert client.metadata["embodiments"] == EMBODIMENTS
        assert client.infer(request("toy", 2))["actions"].shape == (horizon, 2)
        assert client.infer(request("toy_arm3", 3))["actions"].shape == (horizon, 3)
        assert client.infer(request(None, 2))["actions"].shape == (horizon, 2)  # the default: the platform's robot
        with pytest.raises(ProtocolError, match=r"'embodiment' 'robot9' is not served.*\['toy', 'toy_arm3'\]"):
            client.infer(request("robot9", 2))
        with pytest.raises(ProtocolError, match="wrong_shape"):
            client.infer(request("toy_arm3", 2))  # arm3's state is [3]


# ---- real datasets: make-toy-data --embodiment toy_arm3, a mixture of both robots, `vlablocks stats` -------------
@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("robots")
    for name, embodiment in (("toy", "toy"), ("toy_arm3", "toy_arm3")):
        args = ["make-toy-data", "--out", str(base / name), "--episodes", "2", "--image_size", "32"]
        assert cli([*args, "--embodiment", embodiment]) == 0
    return {"toy": base / "toy", "toy_arm3": base / "toy_arm3"}


def mixture_options(roots: dict[str, Path], toy_sizes: bool = True) -> dict:
    toy = {"name": "lerobot", "root": str(roots["toy"]), "dataset_name": "toy", "embodiment": "toy"}
    arm3 = {"name": "lerobot", "root": str(roots["toy_arm3"]), "dataset_name": "toy_arm3", "embodiment": "toy_arm3"}
    for options in (toy, arm3):
        options["camera_keys"] = ["observation.images.top"]
    if toy_sizes:
        toy.update(action_dim=2, state_dim=2)
    return {"name": "mixture", "datasets": [toy, arm3]}


def test_a_mixture_of_the_toy_robot_and_toy_arm3(roots):
    platform = PlatformConfig(name="toy", action_horizon=T, action_dim=3, state_dim=3)
    mixture = build_component(DATASETS, mixture_options(roots), platform=platform)
    assert dataset_embodiments(mixture, platform) == EMBODIMENTS
    toy, arm3 = (leaf[0] for leaf in mixture.leaves())
    assert toy["action"].shape == (T, 2) and toy["state"].shape == (2,) and toy["embodiment"] == "toy"
    assert arm3["action"].shape == (T, 3) and arm3["state"].shape == (3,) and arm3["embodiment"] == "toy_arm3"
    np.testing.assert_allclose(arm3["action"][0, 2], -LOWER_RATE * arm3["state"][2], rtol=1e-6)
    with pytest.raises(ConfigError, match="set this dataset's action_dim"):
        build_component(DATASETS, mixture_options(roots, toy_sizes=False), platform=platform)


def test_stats_command_prints_each_robots_sizes(roots, tmp_path, capsys):
    config = tmp_path / "mixture.yaml"
    platform = {"name": "toy", "action_horizon": T, "action_dim": 3, "state_dim": 3}
    config.write_text(json.dumps({"platform": platform, "dataset": mixture_options(roots)}))  # JSON is YAML
    assert cli(["stats", "--config_yaml", str(config), "--out", str(tmp_path / "stats.json")]) == 0
    printed = capsys.readouterr().out
    assert "toy_arm3: mode q99, action dim 3" in printed and "embodiment toy_arm3" in printed
    assert "cross-embodiment: padded to platform 'toy' D=3 S=3" in printed and "toy: D=2 S=2" in printed
    assert sorted(json.loads((tmp_path / "stats.json").read_text())) == ["toy", "toy_arm3"]
