"""`vlablocks plan`: parameter counts from a meta-device build, model states against DeepSpeed's estimators,
activations against the bytes autograd really keeps, and the micro-batch that fits."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

from vlablocks.cli.main import main
from vlablocks.core.config import PlatformConfig, load_config, parse_experiment
from vlablocks.core.training.activation_estimate import SequenceShape, activation_bytes
from vlablocks.core.training.memory_plan import GIB, check_cluster, estimate, largest_fitting_batch, model_states
from vlablocks.core.training.param_count import ModuleCount, ParameterCounts, count_parameters, meta_framework

ROOT = Path(__file__).resolve().parents[1]
QWEN_OFT_3B = ROOT / "examples" / "libero" / "qwen_oft_libero.yaml"  # Qwen2.5-VL-3B + L1 head, base_vlm + arch 3b


@pytest.fixture(scope="module")
def oft_3b():
    experiment = load_config(QWEN_OFT_3B)
    framework = meta_framework(experiment)
    return experiment, framework, count_parameters(framework)


def test_3b_count_equals_the_instantiated_meta_model(oft_3b):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from vlablocks.core.vlm.qwen2_5_vl import QWEN2_5_VL_ARCHS

    experiment, framework, counts = oft_3b
    assert experiment.framework["vlm"]["base_vlm"]  # planned from its arch: the weights are not here
    assert all(p.device.type == "meta" for p in framework.parameters())
    assert counts.total == sum(p.numel() for p in framework.parameters())  # each tied parameter once
    # Independently: transformers' own Qwen2.5-VL-3B from the published hyperparameters, on meta.
    with torch.device("meta"):
        hf = Qwen2_5_VLForConditionalGeneration._from_config(Qwen2_5_VLConfig(**QWEN2_5_VL_ARCHS["3b"]))
    by_module = {m.name: m.trainable + m.frozen for m in counts.modules}
    assert by_module["vlm.visual"] + by_module["vlm.language_model"] == sum(p.numel() for p in hf.parameters())
    assert by_module["vlm.visual"] == sum(p.numel() for p in hf.model.visual.parameters())
    assert 3.7e9 < counts.total < 3.8e9 and counts.frozen == 0  # Qwen2.5-VL-3B: 3.75 B
    assert counts.largest_layer == 151936 * 2048  # the (tied) token embedding


def _deepspeed_printed_gpu_gib(estimator, *args, **kwargs) -> float:
    """DeepSpeed's `..._all_cold` prints a table; the per-GPU figure of the no-offload row, in GiB."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        estimator(*args, **kwargs)
    rows = [
        line for line in out.getvalue().splitlines() if "offload_optimizer=none" in line and "param=cpu" not in line
    ]
    return float(re.findall(r"\|\s*([\d.]+)GB", rows[-1])[0])  # zero_init=0: the last such row


@pytest.mark.parametrize("gpus, per_node", [(8, 8), (32, 8)])
def test_zero3_states_match_deepspeeds_estimator_within_5_percent(oft_3b, gpus, per_node):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    _, _, counts = oft_3b
    layout = {"num_gpus_per_node": per_node, "num_nodes": gpus // per_node}
    ours3 = sum(model_states(counts, 3, False, gpus, p=2)) / GIB
    theirs3 = _deepspeed_printed_gpu_gib(
        estimate_zero3_model_states_mem_needs_all_cold, counts.total, counts.largest_layer, **layout
    )
    assert abs(ours3 - theirs3) <= 0.05 * theirs3, (ours3, theirs3)
    ours2 = sum(model_states(counts, 2, False, gpus, p=2)) / GIB
    theirs2 = _deepspeed_printed_gpu_gib(estimate_zero2_model_states_mem_needs_all_cold, counts.total, **layout)
    assert abs(ours2 - theirs2) <= 0.05 * theirs2, (ours2, theirs2)
    assert ours3 < ours2  # sharding the weights pays at 3B


def test_counting_convention_is_deepspeeds_on_a_real_model():
    """DeepSpeed's model_to_params (by storage; it cannot count on meta, where every pointer is 0) agrees."""
    from deepspeed.runtime.zero.stage3 import model_to_params

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 50, bias=False))
    model[2].weight = model[0].weight  # tied, as Qwen2.5-VL-3B's embedding and LM head
    counts = count_parameters(model)
    assert (counts.total, counts.largest_layer) == model_to_params(model) == (50 * 8 + 8 * 8 + 8, 400)


def test_frozen_parameters_need_no_gradients_or_optimizer_states():
    experiment = load_config(ROOT / "configs/frameworks/qwen_oft.yaml", ["trainer.freeze_modules=[visual]"])
    counts = count_parameters(meta_framework(experiment))
    visual = next(m for m in counts.modules if m.name == "vlm.visual")
    assert visual.trainable == 0 and visual.frozen > 0 and counts.frozen == visual.frozen
    weights, gradients, optimizer = model_states(counts, 3, False, 4, p=2)
    assert optimizer == 12 * counts.trainable // 4 and weights == 2 * counts.total // 4 + 2 * counts.largest_layer
    everything = ParameterCounts((ModuleCount("all", counts.total, 0),), counts.largest_layer)
    assert sum(model_states(everything, 3, False, 4, p=2)) > weights + gradients + optimizer


def test_activation_estimate_matches_what_autograd_keeps():
    """The tiny QwenOFT backbone, fp32: bytes of the (non-parameter) tensors saved for backward vs the formula."""
    from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
    from vlablocks.core.policy.policy import build_policy

    torch.manual_seed(0)
    platform = {"name": "t", "action_horizon": 4, "action_dim": 3, "state_dim": 2}
    vlm = {"name": "qwen2_5_vl", "image_size": 112, "tiny_num_layers": 3, "tiny_vision_depth": 2}
    head = {"name": "l1_regression", "hidden_dim": 32, "num_blocks": 1}
    experiment = parse_experiment(
        {"platform": platform, "framework": {"name": "QwenOFT", "vlm": vlm, "action_model": head}}
    )
    data = synthetic_examples(PlatformConfig(**platform), 3, num_views=2, image_size=112)
    policy = build_policy(experiment, synthetic_norm_stats(data), camera_keys=["image", "image_1"])
    framework, batch = policy.model, policy.processor(data)
    parameters = {p.untyped_storage().data_ptr() for p in framework.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        framework.vlm(batch.vlm, requested_token_ids=framework.query_token_ids)
    samples, length = batch.vlm.input_ids.shape
    vision_tokens = int((batch.vlm.input_ids == framework.vlm.image_token_id).sum()) // samples
    sequence = SequenceShape(length - vision_tokens, vision_tokens, batch.vlm.pixel_patches.shape[0] // samples)
    predicted = sum(activation_bytes(framework.vlm.model.config, sequence, samples, 4, False).values())
    measured = sum(saved.values())
    assert abs(predicted - measured) <= 0.05 * measured, (predicted, measured)
    checkpointed = sum(activation_bytes(framework.vlm.model.config, sequence, samples, 4, True).values())
    assert checkpointed < 0.7 * predicted


def test_largest_fitting_batch_is_the_boundary(oft_3b):
    assert largest_fitting_batch(lambda b: b <= 37) == 37
    assert largest_fitting_batch(lambda b: False) == 0
    assert largest_fitting_batch(lambda b: True, limit=100) == 100
    experiment, framework, counts = oft_3b
    from vlablocks.cli.commands.plan import sequence_shape

    sequence, views, size = sequence_shape(experiment, framework, prompt_tokens=48)
    assert (views, size, sequence.vision_tokens, sequence.vision_patches) == (2, (224, 224), 128, 512)
    assert sequence.text_tokens == 48 + 8  # the 8 action queries, one token each
    cluster = check_cluster(8, None)
    config = framework.vlm.model.config

    def fits(b: int) -> bool:
        return estimate(counts, config, sequence, 3, False, b, cluster).fits(80 * GIB)

    best = largest_fitting_batch(fits)
    assert best >= 1 and fits(best) and not fits(best + 1)


def test_plan_prints_the_table_for_the_3b_config(capsys):
    assert main(["plan", "--config_yaml", str(QWEN_OFT_3B), "--num_gpus", "32", "--zero", "3"]) == 0
    out = capsys.readouterr().out
    assert "32 GPUs = 4 node(s) x 8" in out and "ZeRO-3" in out and "ZeRO-2" not in out
    assert re.search(r"total\s+3,758,856,199\s+0", out)
    assert re.search(r"largest micro-batch that fits\s+\d+", out)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num_gpus", "0"], "--num-gpus: must be an integer >= 1"),
        (["--num_gpus", "12", "--gpus_per_node", "8"], "not a whole number of nodes"),
        (["--num_gpus", "8", "--framework.vlm.arch=tiny"], "add --framework.vlm.arch=3b"),
    ],
)
def test_bad_input_is_one_line_naming_the_fix(capsys, argv, message):
    assert main(["plan", "--config_yaml", str(QWEN_OFT_3B), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_without_deepspeed_trainable_weights_are_counted_in_fp32():
    """DDP / one GPU (stage 0): weights 2 (N - T) + 4 T (fp32 trainable under bf16 autocast), gradients 4 T,
    AdamW's moments 8 T; by hand for N = 1000 parameters of which T = 300 train."""
    counts = ParameterCounts((ModuleCount("vlm", trainable=300, frozen=700),), largest_layer=100)
    assert model_states(counts, 0, False, 8, 2) == (2 * 700 + 4 * 300, 4 * 300, 8 * 300)
    assert model_states(counts, 0, False, 1, 4) == (4 * 700 + 4 * 300, 4 * 300, 8 * 300)  # mixed_precision: no
