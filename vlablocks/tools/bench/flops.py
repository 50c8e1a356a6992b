"""Model FLOPs of a QwenOFT (L1 head) training step, counted from the model config, for the training row's MFU.

A matrix product of an [n, a] input with an [a, b] weight is 2 n a b FLOPs (a multiply and an add). Forward, per
image of n = t h w patches (Qwen2.5-VL's vision tower, hidden d_v, MLP width i_v, merge m, patch p, temporal patch
t_p, channels c):

    patch embedding   2 n (c t_p p^2) d_v
    each block        2 n (4 d_v^2 + 3 d_v i_v)                 (q, k, v, out; gated MLP: gate, up, down)
                      + 4 d_v sum_w n_w^2                        (scores Q K^T and weighted sum A V; n_w the patches
                                                                  of each attention window, one window = one frame
                                                                  in the `fullatt_block_indexes` blocks)
    merger            2 (n / m^2) ((d_v m^2)^2 + d_v m^2 d_out)

per sequence of L real tokens through the LLM (hidden d, MLP width i, h query heads and g key-value heads of size e):

    each layer        2 L (2 d h e + 2 d g e + 3 d i)            (q, out; k, v; gate, up, down)
                      + 2 h e L (L + 1)                          (causal: position j reads j keys, 4 h e j FLOPs)

and the L1 head: 2 x its Linear weights x B T rows (it runs its MLP once per chunk step); any other Linear outside
the VLM and the head (the proprio projection) once per sample. Training = forward +
backward = 3 x forward, less the input gradient of the layers that read the data (the patch embedding reads pixels,
the proprio projection the state; their backward is the weight gradient alone): 3 F - F_patch_embedding - F_proprio.
Not counted: norms, activations, rotary embeddings, the loss (element-wise, a few % at most on the tiny model
and far less at 3B). Padding tokens are not counted: MFU counts useful work, and the row reports the padded share.

MFU = counted FLOPs per second / the chip's dense bf16 peak (`PEAK_FLOPS` by device name), or on a CPU / an unknown
chip the throughput of large matrix products measured on the same threads (`matmul_peak`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

# Dense (no sparsity) bf16 matrix-product peaks of the SXM parts, from the vendors' data sheets, FLOP/s.
PEAK_FLOPS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362.1e12}


@dataclass(frozen=True)
class StepFlops:
    """Forward FLOPs of one batch by part; `training` = 3 x forward - the layers reading the data (no input gradient)."""

    patch_embedding: float
    vision: float  # vision blocks and merger, matrix products with weights
    vision_attention: float
    llm: float
    llm_attention: float
    head: float
    proprio: float  # Linear layers outside the VLM and the head (the state projection)
    real_tokens: int  # LLM tokens without padding
    padded_tokens: int  # LLM tokens as computed (rows x longest row)

    @property
    def forward(self) -> float:
        parts = (self.patch_embedding, self.vision, self.vision_attention, self.llm, self.llm_attention, self.head)
        return sum(parts) + self.proprio

    @property
    def training(self) -> float:
        return 3 * self.forward - self.patch_embedding - self.proprio  # their inputs (pixels, state) need no gradient


def window_sizes(grid_h: int, grid_w: int, merge: int, window_patches: int) -> list[int]:
    """Patches in each attention window of a grid_h x grid_w patch grid: windows of `window_patches` per side,
    tiled over the merged grid (edge windows smaller), as Qwen2.5-VL's vision tower cuts them."""
    side = max(window_patches // merge, 1)  # window side in merged tokens
    rows, cols = grid_h // merge, grid_w // merge
    sizes = []
    for top in range(0, rows, side):
        for left in range(0, cols, side):
            sizes.append(min(side, rows - top) * merge * min(side, cols - left) * merge)
    return sizes


def vision_flops(vision_config, grid_thw: list[tuple[int, int, int]]) -> tuple[float, float, float]:
    """-> (patch embedding, blocks + merger, attention) forward FLOPs over the batch's images."""
    c = vision_config
    if c.model_type != "qwen2_5_vl" and not c.model_type.startswith("qwen2_5_vl"):
        raise ValueError(f"FLOPs are counted for Qwen2.5-VL's vision tower, got {c.model_type!r}")
    d, i, m = c.hidden_size, c.intermediate_size, c.spatial_merge_size
    full_blocks = set(c.fullatt_block_indexes)
    window_patches = c.window_size // c.patch_size
    patch_embedding = blocks = attention = 0.0
    for t, h, w in grid_thw:
        n = t * h * w
        patch_embedding += 2 * n * (c.in_channels * c.temporal_patch_size * c.patch_size**2) * d
        blocks += c.depth * 2 * n * (4 * d * d + 3 * d * i)
        windows = window_sizes(h, w, m, window_patches) * t  # each frame apart, as the full blocks see it
        for block in range(c.depth):
            attention += 4 * d * (t * (h * w) ** 2 if block in full_blocks else sum(k * k for k in windows))
        blocks += 2 * (n // m**2) * ((d * m * m) ** 2 + d * m * m * c.out_hidden_size)
    return patch_embedding, blocks, attention


def llm_flops(text_config, lengths: list[int]) -> tuple[float, float]:
    """-> (matrix products with weights, causal attention) forward FLOPs of sequences of `lengths` real tokens."""
    c = text_config
    d, i, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    heads, groups = c.num_attention_heads, c.num_key_value_heads
    size = getattr(c, "head_dim", None) or d // heads
    per_token = 2 * (2 * d * heads * size + 2 * d * groups * size + 3 * d * i)
    linear = layers * per_token * sum(lengths)
    attention = layers * sum(2 * heads * size * n * (n + 1) for n in lengths)
    return float(linear), float(attention)


def linear_weights(module: torch.nn.Module) -> int:
    return sum(layer.weight.numel() for layer in module.modules() if isinstance(layer, torch.nn.Linear))


def step_flops(framework, batch, with_padding: bool = False) -> StepFlops:
    """The counted forward FLOPs of `framework` (QwenOFT with an MLP head) on `batch` (a processor `Batch`).

    with_padding: count the LLM's padding tokens too (what the kernels compute) instead of the real tokens only."""
    config = framework.vlm.model.config
    grids = [tuple(int(v) for v in row) for row in batch.vlm.image_grid_thw.tolist()]
    patch_embedding, vision, vision_attention = vision_flops(config.vision_config, grids)
    mask = batch.vlm.attention_mask
    real = [int(n) for n in mask.sum(dim=1).tolist()]
    lengths = [mask.shape[1]] * mask.shape[0] if with_padding else real
    llm, llm_attention = llm_flops(config.text_config, lengths)
    samples = mask.shape[0]
    head = 2.0 * linear_weights(framework.action_model) * samples * framework.action_model.action_horizon
    others = linear_weights(framework) - linear_weights(framework.vlm) - linear_weights(framework.action_model)
    proprio = 2.0 * others * samples  # once per sample
    parts = (patch_embedding, vision, vision_attention, llm, llm_attention, head, proprio)
    return StepFlops(*parts, real_tokens=sum(real), padded_tokens=int(mask.numel()))


def matmul_peak(device: str, dtype: torch.dtype, size: int = 1024, seconds: float = 0.5) -> float:
    """Measured FLOP/s of size x size matrix products on `device` (the threads this process runs with)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * count / (time.perf_counter() - start)


def peak_flops(device: str) -> tuple[float, str]:
    """(peak FLOP/s, where it comes from): the data sheet's dense bf16 peak for a known GPU, else measured."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, value in PEAK_FLOPS.items():
            if key in name:
                return value, f"{name} dense bf16 peak {value / 1e12:.0f} TFLOP/s (data sheet)"
        measured = matmul_peak(device, torch.bfloat16, size=8192)
        return measured, f"{name} measured bf16 8192^2 matmul {measured / 1e12:.0f} TFLOP/s"
    measured = matmul_peak(device, torch.float32)
    return measured, f"measured fp32 1024^2 matmul on this CPU {measured / 1e9:.1f} GFLOP/s"
