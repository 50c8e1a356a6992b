"""The training row's FLOP count (vlablocks/tools/bench/flops.py): equal to PyTorch's own FLOP counter on the real
tiny QwenOFT (matrix products, forward and training), and the attention terms against hand computations."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.utils.flop_counter import FlopCounterMode

from vlablocks.core.framework.synthetic import synthetic_norm_stats
from vlablocks.core.policy.policy import build_policy
from vlablocks.tools.bench.flops import llm_flops, step_flops, vision_flops, window_sizes
from vlablocks.tools.bench.models import SEED, bench_examples
from vlablocks.tools.bench.settings import BenchSettings
from vlablocks.tools.bench.training import training_experiment


@pytest.fixture(scope="module")
def model_and_batch(tmp_path_factory):
    settings = BenchSettings()
    experiment = training_experiment(settings, Path(tmp_path_factory.mktemp("run")))
    examples = bench_examples(settings, 3, seed=SEED)
    examples[1]["prompt"] = "pick up the black bowl next to the cookie box and place it on the plate"  # padding
    policy = build_policy(experiment, synthetic_norm_stats(examples))
    return policy.model, policy.processor(examples)


def test_counted_matrix_products_equal_pytorchs_flop_counter(model_and_batch):
    """PyTorch's counter sees every matrix product and convolution as computed (padding included) but not the CPU
    attention kernel: our count without its attention terms, with padding, must equal it."""
    model, batch = model_and_batch
    counted = step_flops(model, batch, with_padding=True)
    assert counted.padded_tokens > counted.real_tokens  # the batch has padding, so `with_padding` is exercised
    attention = counted.vision_attention + counted.llm_attention
    with FlopCounterMode(display=False) as forward:
        model(batch)
    assert counted.forward - attention == forward.get_total_flops()
    with FlopCounterMode(display=False) as training:
        model(batch)["loss"].backward()
    model.zero_grad(set_to_none=True)
    assert counted.proprio == 2 * model.proprio.weight.numel() * batch.vlm.input_ids.shape[0]
    assert counted.training - 3 * attention == training.get_total_flops()
    real = step_flops(model, batch)
    assert real.llm < counted.llm and real.vision == counted.vision


def test_window_sizes_tile_the_merged_grid():
    # 12 x 8 patches, merge 2 -> 6 x 4 merged tokens; windows of 8 patches = 4 merged per side:
    # rows [0, 4) and [4, 6) x cols [0, 4) -> 16 and 8 merged tokens = 64 and 32 patches.
    assert window_sizes(12, 8, merge=2, window_patches=8) == [64, 32]
    assert window_sizes(8, 8, merge=2, window_patches=8) == [64]


def test_vision_and_llm_terms_against_hand_computations():
    vision = SimpleNamespace(
        model_type="qwen2_5_vl",
        hidden_size=4,
        intermediate_size=6,
        spatial_merge_size=2,
        fullatt_block_indexes=[1],
        window_size=112,
        patch_size=14,
        in_channels=3,
        temporal_patch_size=2,
        depth=2,
        out_hidden_size=5,
    )
    embed, blocks, attention = vision_flops(vision, [(1, 12, 8)])
    n, d = 96, 4
    assert embed == 2 * n * (3 * 2 * 14 * 14) * d
    assert blocks == 2 * 2 * n * (4 * d * d + 3 * d * 6) + 2 * (n // 4) * ((d * 4) ** 2 + d * 4 * 5)
    assert attention == 4 * d * (64**2 + 32**2) + 4 * d * n**2  # block 0 windowed, block 1 full
    text = SimpleNamespace(
        hidden_size=8, intermediate_size=16, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2
    )
    linear, causal = llm_flops(text, [5, 2])
    e = 8 // 4
    assert linear == 3 * 7 * 2 * (2 * 8 * 4 * e + 2 * 8 * 2 * e + 3 * 8 * 16)
    # position j (1-based) reads j keys: 4 h e j FLOPs; sum_j j = n (n + 1) / 2
    assert causal == 3 * sum(4 * 4 * e * j for n in (5, 2) for j in range(1, n + 1))
    with pytest.raises(ValueError, match="Qwen2.5-VL"):
        vision_flops(SimpleNamespace(**{**vars(vision), "model_type": "qwen2_vl"}), [(1, 8, 8)])
