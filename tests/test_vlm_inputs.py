"""The VLM's inputs: the processor's tokenize step (prompts, image-token expansion, uint8 patches) and the
VLM's pixel normalization, checked against transformers' own Qwen-VL processor and the vision-token layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from vlm_helpers import FAMILIES, build, encode, random_views

from vlablocks.core.processor.pipeline import VLMTokenize
from vlablocks.core.vlm.inputs import resize_views, to_pil_views


@pytest.mark.parametrize(
    "example, message",
    [
        (
            {"views": ["picture.png"], "prompt": "go"},
            "['images'][0]: expected a PIL image or a uint8 HxWx3 array, got str",
        ),
        ({"views": [np.zeros((32, 32, 3), np.float32)], "prompt": "go"}, "got float32 array of shape (32, 32, 3)"),
        ({"views": [np.zeros((3, 32, 32), np.uint8)], "prompt": "go"}, "got uint8 array of shape (3, 32, 32)"),
        (
            {"views": [torch.zeros(32, 32, 4, dtype=torch.uint8)], "prompt": "go"},
            "got uint8 array of shape (32, 32, 4)",
        ),
        (
            {"views": np.zeros((32, 32, 3), np.uint8), "prompt": "go"},
            "['images']: expected a list of views, got a single",
        ),
        ({"views": "picture.png", "prompt": "go"}, "['images']: expected a list of views, got str"),
        ({"views": [], "prompt": "go"}, "['images']: a sample needs at least one view, got 0"),
        (
            {"views": [np.zeros((32, 32, 3), np.uint8)], "prompt": "  "},
            "['prompt']: expected a non-empty instruction string, got '  '",
        ),
        (
            {"views": [np.zeros((32, 32, 3), np.uint8)]},
            "['prompt']: expected a non-empty instruction string, got None",
        ),
        (
            {"views": [np.zeros((32, 32, 3), np.uint8)], "prompt": 7},
            "['prompt']: expected a non-empty instruction string, got 7",
        ),
    ],
)
def test_bad_examples_are_named(example, message, qwen25):
    """The tokenize step (vlm.inputs.to_pil_views and the prompt check) names the sample and the key.

    A sample without cameras, and an empty batch, are the processor's to reject: tests/test_processor.py.
    """
    good = {"views": [np.zeros((32, 32, 3), np.uint8)], "prompt": "go"}
    with pytest.raises(ValueError) as info:
        encode(qwen25, [good, example])
    assert str(info.value).startswith("sample[1]") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_to_pil_views_names_the_place_it_is_given():
    with pytest.raises(ValueError, match=r"^obs\['front'\]\[1\]: expected a PIL image"):
        to_pil_views([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)], "obs['front']")
    views = to_pil_views(np.zeros((3, 8, 6, 3), np.uint8), "x")
    assert len(views) == 3 and all(isinstance(v, Image.Image) and v.size == (6, 8) for v in views)


def test_stacked_uint8_views_and_tensors_are_accepted(qwen25):
    rng = np.random.default_rng(1)
    stacked = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    as_list = encode(qwen25, [{"views": list(stacked), "prompt": "go"}])
    as_array = encode(qwen25, [{"views": stacked, "prompt": "go"}])
    as_tensor = encode(qwen25, [{"views": torch.from_numpy(stacked), "prompt": "go"}])
    assert as_list.views_per_sample.tolist() == as_array.views_per_sample.tolist() == [2]
    assert as_tensor.views_per_sample.tolist() == [2]
    assert torch.equal(as_list.pixel_patches, as_array.pixel_patches)
    assert torch.equal(as_list.pixel_patches, as_tensor.pixel_patches)
    assert as_list.pixel_patches.dtype == torch.uint8
    assert as_list.labels is None  # no answers, no labels


@pytest.mark.parametrize("name", FAMILIES)
def test_vision_layout_follows_the_processor_patch_order(name):
    """Each view is painted with one grey level per merged block; decoding pixel_values must give grid_rc."""
    vlm = build(name, image_size=[64, 128] if name == "qwen3_vl" else [56, 112])
    height, width = vlm.view_size
    block = vlm.patch_size * vlm.merge_size
    rows, cols = height // block, width // block
    assert (rows, cols) == (2, 4)
    levels = 10 + 20 * np.arange(rows * cols).reshape(rows, cols)
    painted = np.kron(levels, np.ones((block, block))).astype(np.uint8)
    view = np.repeat(painted[:, :, None], 3, axis=2)
    examples = [{"views": [view, view], "prompt": "point at it"}, {"views": [view], "prompt": "again"}]
    seen = {}

    def capture(embeds, info):
        seen["info"] = info
        return embeds

    batch = encode(vlm, examples)
    out = vlm(batch, vision_hook=capture)
    info = seen["info"]
    mean = vlm.processor.image_processor.image_mean[0]
    std = vlm.processor.image_processor.image_std[0]
    patch_pixels = vlm.patch_size**2 * 2  # channel 0, both temporal copies
    channel0 = vlm.pixel_values(batch.pixel_patches)[:, :patch_pixels].reshape(-1, vlm.merge_size**2 * patch_pixels)
    grey = ((channel0.mean(1) * std + mean) * 255).round()
    block_index = ((grey - 10) / 20).round().long()
    assert torch.equal(block_index, info.grid_rc[:, 0] * cols + info.grid_rc[:, 1])
    expected_rc = [[r, c] for r in range(rows) for c in range(cols)]
    assert info.grid_rc.tolist() == expected_rc * 3
    assert info.view_grid_hw.tolist() == [[2, 4]] * 3
    assert info.batch_index.tolist() == [0] * 16 + [1] * 8
    assert info.view_index.tolist() == [0] * 8 + [1] * 8 + [0] * 8
    expected_positions = torch.tensor([((r + 0.5) / rows, (c + 0.5) / cols) for r, c in expected_rc] * 3)
    torch.testing.assert_close(info.positions, expected_positions)
    torch.testing.assert_close(out.vision_positions[out.vision_mask], expected_positions)
    assert info.text_embeds.shape == (*out.input_ids.shape, vlm.hidden_size)
    assert torch.equal(info.attention_mask, out.attention_mask) and torch.equal(info.vision_mask, out.vision_mask)


@pytest.mark.parametrize("name", FAMILIES)
def test_tokenize_and_pixels_equal_the_transformers_processor(name):
    """The processor's own tokenize step + the VLM's uint8 -> float pixels give exactly what transformers'
    Qwen-VL processor gives for the same prompts and (resized) views: ids, masks, grids and pixel values."""
    vlm = build(name, image_size=[64, 128] if name == "qwen3_vl" else 112)
    rng = np.random.default_rng(0)
    examples = [
        {"views": random_views(rng, [(100, 90), (60, 70)]), "prompt": "pick the red block"},
        {"views": random_views(rng, [(50, 50)]), "prompt": "open the drawer"},
    ]
    step = VLMTokenize(vlm.processor, vlm.view_size, vlm.patch_size)
    ours = step(examples)
    texts = [step.prompt(len(e["views"]), e["prompt"], i) for i, e in enumerate(examples)]
    views = [
        v for e in examples for v in resize_views(to_pil_views(e["views"], "views"), vlm.view_size, vlm.patch_size)
    ]
    reference = vlm.processor(
        text=texts, images=views, padding=True, padding_side="left", return_tensors="pt", do_resize=False
    )
    for key in ("input_ids", "attention_mask", "image_grid_thw"):
        assert torch.equal(getattr(ours, key), reference[key]), key
    assert torch.equal(vlm.token_types(ours.input_ids), reference["mm_token_type_ids"])
    assert ours.pixel_patches.dtype == torch.uint8
    assert torch.equal(vlm.pixel_values(ours.pixel_patches), reference["pixel_values"])
