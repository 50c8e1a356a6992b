"""Geometric encoder and the spatial alignment of geometry to the VLM's vision patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Dinov2Model
from vlm_helpers import encode

from vlablocks.core.build import build
from vlablocks.core.geometry.alignment import align_to_vision_tokens, overlap_matrix, resample_grid
from vlablocks.core.geometry.dinov2_encoder import standardize_points
from vlablocks.core.geometry.preprocess import default_intrinsics, pixel_batch, point_batch, unproject_depth
from vlablocks.core.geometry.tokens import GeometricTokens
from vlablocks.core.processor.steps import GeometryPreprocess
from vlablocks.core.registry import FUSIONS, GEOMETRIC_ENCODERS, VLMS

PATCH = 28  # Qwen2.5-VL: 14-pixel patches merged 2 x 2


@pytest.fixture(scope="module")
def wide_vlm():
    """Tiny Qwen2.5-VL seeing every view as 56 x 112 pixels: a non-square 2 x 4 merged-patch grid."""
    torch.manual_seed(0)
    return build(VLMS, {"name": "qwen2_5_vl", "image_size": [56, 112]})


def two_view_examples(seed: int = 0, size: tuple[int, int] = (60, 100)) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"views": [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(2)], "prompt": instruction}
        for instruction in ("reach the red block", "go to the blue square")
    ]


def hook_layout(vlm, examples):
    """The VisionHookInfo the VLM hands its vision hook (the real layout of this batch)."""
    captured = {}

    def hook(embeds, info):
        captured["info"], captured["embeds"] = info, embeds
        return embeds

    vlm(encode(vlm, examples), vision_hook=hook)
    return captured["info"], captured["embeds"]


def one_hot_geometry(grid_hw, sample, view, cell, channels=3, batch=2, views=2) -> GeometricTokens:
    tokens = torch.zeros(batch, views, *grid_hw, channels)
    tokens[sample, view, cell[0], cell[1], 0] = 1.0
    return GeometricTokens(tokens, torch.ones(batch, views, dtype=torch.bool))


def zero_geometry(grid_hw, channels=3) -> GeometricTokens:
    return GeometricTokens(torch.zeros(2, 2, *grid_hw, channels), torch.ones(2, 2, dtype=torch.bool))


def covering_patch(cell, grid_hw, view_hw):
    """The (row, col) of the 28-pixel vision patch whose pixel region contains the cell's pixel region."""
    (r, c), (gh, gw), (h, w) = cell, grid_hw, view_hw
    top, bottom, left, right = r * h / gh, (r + 1) * h / gh, c * w / gw, (c + 1) * w / gw
    row, col = int(top // PATCH), int(left // PATCH)
    assert bottom <= (row + 1) * PATCH and right <= (col + 1) * PATCH, "test grid must nest inside the patches"
    return row, col


# ---- alignment ---------------------------------------------------------------------------------


def test_overlap_matrix_weights_by_covered_fraction():
    np.testing.assert_allclose(overlap_matrix(2, 4), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    np.testing.assert_allclose(overlap_matrix(4, 2), [[1, 0], [1, 0], [0, 1], [0, 1]])
    # Thirds against fifths: [0, 1/3) is covered 3/5 by [0, 1/5) and 2/5 by [1/5, 2/5).
    np.testing.assert_allclose(overlap_matrix(3, 5)[0], [0.6, 0.4, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(overlap_matrix(3, 5).sum(1), np.ones(3), atol=1e-6)


def test_resample_grid_keeps_a_constant_and_moves_a_cell_to_its_region():
    constant = torch.full((5, 7, 2), 3.0)
    torch.testing.assert_close(resample_grid(constant, 3, 2), torch.full((3, 2, 2), 3.0))
    grid = torch.zeros(5, 7, 1)
    grid[4, 0] = 1.0  # bottom-left cell: rows [0.8, 1), cols [0, 1/7)
    out = resample_grid(grid, 3, 2)[..., 0]
    assert out[2, 0] > 0 and out.count_nonzero() == 1


@pytest.mark.parametrize("grid_hw", [(6, 8), (4, 12), (2, 4)])
@pytest.mark.parametrize("target", [(0, 1, (0, 0)), (1, 1, (5, 7)), (1, 0, (3, 2))])
def test_one_hot_cell_lands_on_the_covering_vision_patch(wide_vlm, grid_hw, target):
    sample, view, cell = target
    cell = (cell[0] % grid_hw[0], cell[1] % grid_hw[1])
    info, _ = hook_layout(wide_vlm, two_view_examples())
    assert info.view_grid_hw.tolist() == [[2, 4]] * 4  # 2 samples x 2 views, non-square merged grids
    aligned = align_to_vision_tokens(one_hot_geometry(grid_hw, sample, view, cell), info)[:, 0]
    row, col = covering_patch(cell, grid_hw, (56, 112))
    hit = (info.batch_index == sample) & (info.view_index == view) & (info.grid_rc[:, 0] == row)
    hit &= info.grid_rc[:, 1] == col
    assert hit.sum() == 1
    cells_per_patch = (grid_hw[0] / 2) * (grid_hw[1] / 4)
    assert aligned[hit].item() == pytest.approx(1.0 / cells_per_patch)
    assert aligned[~hit].abs().max() == 0  # no other patch, view or sample sees it


def test_tokenwise_fusion_puts_the_cell_into_the_llm_input_at_its_patch(wide_vlm):
    torch.manual_seed(0)
    fusion = build(FUSIONS, {"name": "tokenwise"}, vision_dim=wide_vlm.hidden_size, geometric_dim=3)
    torch.nn.init.normal_(fusion.fuse.proj.weight)  # a trained (non-zero) projection
    examples = two_view_examples()
    fused = {}
    for name, geometry in {"zero": zero_geometry((6, 8)), "hot": one_hot_geometry((6, 8), 1, 1, (4, 5))}.items():

        def hook(embeds, info, geometry=geometry, name=name):
            fused[name], fused["info"] = fusion(embeds, info, geometry), info
            return fused[name]

        out = wide_vlm(encode(wide_vlm, examples), vision_hook=hook)
        # The fused tokens are what the LLM reads at the image-token positions.
        torch.testing.assert_close(out.hidden_states[0][out.vision_mask], fused[name])
    info = fused["info"]
    changed = (fused["hot"] - fused["zero"]).abs().sum(-1) > 0
    row, col = covering_patch((4, 5), (6, 8), (56, 112))
    expected = (info.batch_index == 1) & (info.view_index == 1) & (info.grid_rc[:, 0] == row)
    expected &= info.grid_rc[:, 1] == col
    assert torch.equal(changed, expected)


# ---- depth ---------------------------------------------------------------------------------------


def test_unprojected_points_reproject_to_their_pixel_centres():
    depth = torch.linspace(0.5, 2.0, 6 * 8).reshape(6, 8)
    depth[2, 3] = 0.0  # invalid
    intrinsics = torch.tensor([[10.0, 0, 3.5], [0, 12.0, 2.0], [0, 0, 1]])
    points = unproject_depth(depth, intrinsics)
    valid = points[3] > 0
    assert not valid[2, 3] and valid.sum() == 47 and points[:3, 2, 3].abs().sum() == 0
    xyz = points[:3][:, valid]  # [3, n]
    pixels = (intrinsics @ xyz) / xyz[2]
    v, u = torch.nonzero(valid, as_tuple=True)
    torch.testing.assert_close(pixels[0], u.float() + 0.5)
    torch.testing.assert_close(pixels[1], v.float() + 0.5)
    torch.testing.assert_close(xyz[2], depth[valid])


def test_point_batch_uses_the_given_intrinsics_or_a_default_field_of_view():
    depth = np.full((20, 40), 2.0, np.float32)
    wide = np.array([[[10.0, 0, 20], [0, 10.0, 10], [0, 0, 1]]], np.float32)
    depths = [[depth], [depth], None]
    intrinsics = [list(wide), None, None]
    points = point_batch(depths, intrinsics, (20, 40), 1, fov_degrees=90.0)
    # Left-most pixel centre u = 0.5: x = (0.5 - 20) / f * z.
    assert points[0, 0, 0, 0, 0].item() == pytest.approx(-19.5 / 10.0 * 2.0)
    focal = default_intrinsics(20, 40, 90.0)[0, 0]
    assert focal == pytest.approx(20.0) and points[1, 0, 0, 0, 0].item() == pytest.approx(-19.5 / focal * 2.0)
    assert points[2].abs().sum() == 0  # no depth: all invalid
    assert point_batch(depths[2:], intrinsics[2:], (20, 40), 1, 60.0) is None
    # A view without depth (or without intrinsics) inside a sample that has depth.
    mixed = point_batch([[None, depth]], [[None, wide[0]]], (20, 40), 2, fov_degrees=90.0)
    assert mixed[0, 0].abs().sum() == 0
    torch.testing.assert_close(mixed[0, 1], points[0, 0])


def test_point_batch_names_a_depth_view_count_mismatch():
    depth = np.ones((8, 8), np.float32)
    with pytest.raises(ValueError, match=r"sample\[0\]: 2 depth maps and no intrinsics for 1 views"):
        point_batch([[depth, depth]], [None], (8, 8), 1, 60.0)
    with pytest.raises(ValueError, match=r"sample\[1\]: 1 depth maps and 2 intrinsics for 1 views"):
        point_batch([None, [depth]], [None, [np.eye(3)] * 2], (8, 8), 1, 60.0)
    with pytest.raises(ValueError, match=r"sample\[0\]\['depth'\] view 0: expected \[H, W\] metres"):
        point_batch([[depth[None]]], [None], (8, 8), 1, 60.0)


# ---- encoder ---------------------------------------------------------------------------------------


def build_encoder(seed: int = 0, **options):
    torch.manual_seed(seed)
    encoder = build(GEOMETRIC_ENCODERS, {"name": "dinov2_multiview", "image_size": [56, 84], **options})
    return encoder.eval()


def encode_geometry(encoder, examples: list[dict]) -> GeometricTokens:
    """examples (`views`, optional `depths` / `view_intrinsics` per view) -> the processor's geometry step -> tokens."""
    return encoder(GeometryPreprocess(**encoder.preprocess_options())(examples))


def with_depth(examples: list[dict], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for example in examples:
        shape = example["views"][0].shape[:2]
        depth = [rng.uniform(0.5, 2.0, shape).astype(np.float32) for _ in example["views"]]
        intrinsics = [default_intrinsics(*shape, 70.0) for _ in example["views"]]
        out.append({**example, "depths": depth, "view_intrinsics": intrinsics})
    return out


def test_encoder_shapes_on_a_non_square_grid():
    encoder = build_encoder()
    geometry = encode_geometry(encoder, two_view_examples())
    assert encoder.grid_hw == (4, 6)
    assert geometry.tokens.shape == (2, 2, 4, 6, 64) and geometry.view_mask.all()
    assert torch.isfinite(geometry.tokens).all()


def test_cross_view_attention_shares_information_between_views():
    encoder = build_encoder()
    examples = two_view_examples()
    changed = [dict(e, views=[e["views"][0], 255 - e["views"][1]]) for e in examples]
    with torch.no_grad():
        before, after = encode_geometry(encoder, examples).tokens, encode_geometry(encoder, changed).tokens
    assert (before[:, 0] - after[:, 0]).abs().max() > 1e-3  # view 0 reads view 1
    single = build_encoder(info_sharing_layers=0)  # no info sharing: views stay independent
    with torch.no_grad():
        torch.testing.assert_close(
            encode_geometry(single, examples).tokens[:, 0], encode_geometry(single, changed).tokens[:, 0]
        )


def test_padded_views_do_not_leak_into_a_sample():
    encoder = build_encoder()
    examples = two_view_examples()
    one_view = {"views": [examples[0]["views"][0]], "prompt": "reach"}
    with torch.no_grad():
        alone = encode_geometry(encoder, [one_view])
        mixed = encode_geometry(encoder, [one_view, examples[1]])
    assert mixed.view_mask.tolist() == [[True, False], [True, True]]
    torch.testing.assert_close(mixed.tokens[0, 0], alone.tokens[0, 0], atol=1e-5, rtol=1e-5)


def test_depth_branch_is_optional_per_sample_and_reads_depth_and_intrinsics():
    encoder = build_encoder()
    plain = two_view_examples()
    deep = with_depth(plain)
    with torch.no_grad():
        no_depth = encode_geometry(encoder, plain).tokens
        both = encode_geometry(encoder, deep).tokens
        mixed = encode_geometry(encoder, [deep[0], plain[1]]).tokens
        far = encode_geometry(encoder, [{**e, "depths": [d * 3 for d in e["depths"]]} for e in deep]).tokens
        halved = [{**e, "view_intrinsics": [m * [[0.5], [0.5], [1]] for m in e["view_intrinsics"]]} for e in deep]
        wide = encode_geometry(encoder, halved).tokens
    assert (both - no_depth).abs().max() > 1e-3
    torch.testing.assert_close(mixed[1], no_depth[1], atol=1e-5, rtol=1e-5)  # sample without depth: images only
    torch.testing.assert_close(mixed[0], both[0], atol=1e-5, rtol=1e-5)
    assert (far - both).abs().max() > 1e-3 and (wide - both).abs().max() > 1e-3
    no_branch = build_encoder(use_depth=False)
    assert not any("depth" in name for name, _ in no_branch.named_parameters())
    assert no_branch.preprocess_options()["use_depth"] is False
    assert GeometryPreprocess(**no_branch.preprocess_options())(deep).points is None  # depth is not even prepared


def test_standardized_points_match_a_hand_computation_over_the_valid_pixels_only():
    points = torch.zeros(1, 1, 4, 2, 2)
    points[0, 0, 2] = torch.tensor([[1.2, 1.5], [1.5, 99.0]])  # z; the 99 pixel is invalid
    points[0, 0, 3] = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = standardize_points(points)
    z = [1.2, 1.5, 1.5]  # mean 1.4, population std sqrt(0.02)
    expected = torch.tensor([[(z[0] - 1.4), (z[1] - 1.4)], [(z[2] - 1.4), 0.0]]) / np.sqrt(0.02)
    torch.testing.assert_close(out[0, 0, 2], expected.float(), atol=1e-5, rtol=1e-5)
    assert torch.equal(out[0, 0, 3], points[0, 0, 3])  # validity kept
    assert torch.equal(out[0, 0, :2], torch.zeros(2, 2, 2))  # constant x, y: std clamped, (p - mean) = 0
    # a scene shifted and scaled as a whole gives the same standardized points (per view, per channel)
    moved = points.clone()
    moved[:, :, :3] = moved[:, :, :3] * 2.0 + 0.7
    torch.testing.assert_close(standardize_points(moved)[0, 0, 2], out[0, 0, 2], atol=1e-5, rtol=1e-5)
    encoder = build_encoder(standardize_points=True)
    deep = with_depth(two_view_examples())
    with torch.no_grad():
        both = encode_geometry(encoder, deep).tokens
        scaled = encode_geometry(encoder, [{**e, "depths": [d * 3 for d in e["depths"]]} for e in deep]).tokens
    torch.testing.assert_close(scaled, both, atol=1e-4, rtol=1e-4)  # x, y, z all scale with depth: no change


def test_preprocess_options_drive_the_processor_geometry_step():
    encoder = build_encoder(default_fov_degrees=75.0)
    options = encoder.preprocess_options()
    assert options == {"size": [56, 84], "use_depth": True, "fov_degrees": 75.0}
    examples = with_depth(two_view_examples())
    inputs = GeometryPreprocess(**options)(examples)
    pixels, view_mask = pixel_batch([e["views"] for e in examples], (56, 84))
    points = point_batch(
        [e["depths"] for e in examples], [e["view_intrinsics"] for e in examples], (56, 84), 2, fov_degrees=75.0
    )
    assert inputs.pixels.shape == (2, 2, 3, 56, 84) and inputs.points.shape == (2, 2, 4, 56, 84)
    assert torch.equal(inputs.pixels, pixels) and torch.equal(inputs.view_mask, view_mask)
    assert torch.equal(inputs.points, points)
    with torch.no_grad():
        torch.testing.assert_close(encoder(inputs).tokens, encoder.encode(pixels, view_mask, points).tokens)
    # No sample with depth: no points, the encoder reads images only.
    assert GeometryPreprocess(**options)(two_view_examples()).points is None
    with pytest.raises(ValueError, match=r"sample\[1\]\['images'\]\[0\]: expected a PIL image"):
        GeometryPreprocess(**options)([examples[0], {"views": [np.zeros((8, 8), np.uint8)]}])


def test_encoder_builds_from_a_local_dinov2_dir(tmp_path):
    random_init = build_encoder(seed=1)
    random_init.backbone.save_pretrained(tmp_path / "dino")
    loaded = build_encoder(seed=2, base_model=str(tmp_path / "dino"))
    assert isinstance(loaded.backbone, Dinov2Model)
    loaded.load_state_dict(
        {k: v for k, v in random_init.state_dict().items() if not k.startswith("backbone.")}, strict=False
    )
    for name, value in random_init.backbone.state_dict().items():
        torch.testing.assert_close(loaded.backbone.state_dict()[name], value)
    with torch.no_grad():
        torch.testing.assert_close(
            encode_geometry(loaded, two_view_examples()).tokens,
            encode_geometry(random_init, two_view_examples()).tokens,
        )


def test_encoder_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"multiples of the DINOv2 patch size 14; e.g. \[56, 84\]"):
        build_encoder(image_size=[50, 80])
    with pytest.raises(FileNotFoundError, match="config.json and \\*.safetensors"):
        build_encoder(base_model=str(tmp_path))


# ---- fusions ---------------------------------------------------------------------------------------


def test_mean_broadcast_gives_every_patch_of_a_sample_the_same_geometry(wide_vlm):
    info, embeds = hook_layout(wide_vlm, two_view_examples())
    fusion = build(FUSIONS, {"name": "mean_broadcast"}, vision_dim=wide_vlm.hidden_size, geometric_dim=3)
    torch.nn.init.normal_(fusion.fuse.proj.weight)
    delta = fusion(embeds, info, one_hot_geometry((6, 8), 1, 1, (4, 5))) - fusion(embeds, info, zero_geometry((6, 8)))
    sample1 = delta[info.batch_index == 1]
    assert sample1.abs().max() > 1e-3
    torch.testing.assert_close(sample1, sample1[:1].expand_as(sample1), atol=1e-6, rtol=0)
    assert delta[info.batch_index == 0].abs().max() == 0


def cross_attention(vlm, **options):
    torch.manual_seed(0)
    fusion = build(FUSIONS, {"name": "cross_attention", **options}, vision_dim=vlm.hidden_size, geometric_dim=3)
    torch.nn.init.normal_(fusion.out.weight)
    return fusion


@pytest.mark.parametrize("attend_to", ["own_view", "all_views"])
def test_cross_attention_reaches_other_views_only_when_asked(wide_vlm, attend_to):
    info, embeds = hook_layout(wide_vlm, two_view_examples())
    fusion = cross_attention(wide_vlm, attend_to=attend_to, instruction_gate=False)
    base = GeometricTokens(torch.randn(2, 2, 4, 4, 3), torch.ones(2, 2, dtype=torch.bool))
    bumped = GeometricTokens(base.tokens.clone(), base.view_mask)
    bumped.tokens[:, 1] += 5.0
    delta = (fusion(embeds, info, bumped) - fusion(embeds, info, base)).abs().sum(-1)
    assert delta[info.view_index == 1].min() > 0
    view0 = delta[info.view_index == 0].max()
    assert view0 == 0 if attend_to == "own_view" else view0 > 0


def test_cross_attention_locality_prior_looks_under_each_patch(wide_vlm):
    info, embeds = hook_layout(wide_vlm, two_view_examples())
    fusion = cross_attention(wide_vlm, attend_to="own_view", instruction_gate=False, locality_init=50.0)
    base = zero_geometry((4, 8))
    hot = one_hot_geometry((4, 8), 0, 1, (2, 5))
    hot.tokens *= 10.0
    delta = (fusion(embeds, info, hot) - fusion(embeds, info, base)).abs().sum(-1)
    row, col = covering_patch((2, 5), (4, 8), (56, 112))
    strongest = int(delta.argmax())
    assert (info.batch_index[strongest], info.view_index[strongest]) == (0, 1)
    assert info.grid_rc[strongest].tolist() == [row, col]


def test_cross_attention_gate_lets_the_instruction_select_geometry(wide_vlm):
    examples = two_view_examples()
    examples[1]["views"] = examples[0]["views"]  # same views, different instructions
    info, embeds = hook_layout(wide_vlm, examples)
    geometry = GeometricTokens(torch.randn(1, 2, 4, 4, 3).expand(2, -1, -1, -1, -1), torch.ones(2, 2, dtype=torch.bool))
    ungated = cross_attention(wide_vlm, instruction_gate=False)
    out = ungated(embeds, info, geometry)
    torch.testing.assert_close(out[info.batch_index == 0], out[info.batch_index == 1])
    gated = cross_attention(wide_vlm, instruction_gate=True)
    torch.nn.init.normal_(gated.gate.weight, std=5.0)
    out = gated(embeds, info, geometry)
    assert (out[info.batch_index == 0] - out[info.batch_index == 1]).abs().max() > 1e-4


def test_fusion_rejects_geometry_of_the_wrong_width(wide_vlm):
    info, embeds = hook_layout(wide_vlm, two_view_examples())
    fusion = build(FUSIONS, {"name": "tokenwise"}, vision_dim=wide_vlm.hidden_size, geometric_dim=8)
    with pytest.raises(ValueError, match="width 3, the fusion was built for 8"):
        fusion(embeds, info, one_hot_geometry((4, 4), 0, 0, (0, 0)))


@pytest.mark.parametrize("name", ["mean_broadcast", "tokenwise", "cross_attention"])
def test_fusions_take_bf16_vision_tokens_with_and_without_autocast(wide_vlm, name):
    info, embeds = hook_layout(wide_vlm, two_view_examples())
    fusion = build(FUSIONS, {"name": name}, vision_dim=wide_vlm.hidden_size, geometric_dim=3)
    for module in fusion.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.1)  # open the zero-init outputs
    geometry = GeometricTokens(torch.randn(2, 2, 4, 4, 3), torch.ones(2, 2, dtype=torch.bool))
    reference = fusion(embeds, info, geometry)
    low = embeds.to(torch.bfloat16)
    outside = fusion(low, info, geometry)  # a bf16 VLM feeding a float32 fusion
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = fusion(low, info, geometry)
    assert (reference - embeds).abs().max() > 1e-2
    for out in (outside, inside):
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), reference, atol=0.05, rtol=0.05)
