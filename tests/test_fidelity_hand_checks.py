"""Hand-computed checks of the loss values and transforms docs/fidelity.md lists as the papers' (issue 41): the L1
head's loss, the RL entropy bonus, FAST's DCT and quantisation, alg1's L_geo / L_dyn / L_reg, and OFT's FiLM on the
vision tokens. Every expected number is computed here from the equation, in plain Python, never by the code under
test; each test's docstring states the equation it checks."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vlablocks.core.action_model.base import Conditioning
from vlablocks.core.action_model.l1_regression import L1RegressionHead
from vlablocks.core.auxiliary.base import AuxiliaryInputs, FusionCapture
from vlablocks.core.batch import GeometryInputs
from vlablocks.core.config import PlatformConfig, parse_experiment
from vlablocks.core.framework.film import InstructionFiLM
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import build_policy
from vlablocks.core.processor.fast_tokenizer import FASTTokenizer
from vlablocks.core.vlm.vision import vision_tokens
from vlablocks.methods.rl.grpo import clipped_policy_loss
from vlablocks.methods.spatial.world_losses import (
    FusionRegularizer,
    GeometryDynamics,
    GeometryReconstruction,
    WorldLoss,
)

# ---- OpenVLA-OFT: the L1 head's loss --------------------------------------------------------------------


def test_l1_loss_is_the_mean_absolute_error_over_real_steps_and_dimensions():
    """L1 = (1 / |valid|) sum_{(b, t, d) valid} |a_hat[b, t, d] - a[b, t, d]|, valid = an unpadded step and a real
    dimension (OpenVLA-OFT's L1 regression objective, with padding excluded). The head's output layer is set to
    the constant prediction a_hat[b, t] = (0.5, -1.0), so the expected value needs no network."""
    head = L1RegressionHead(
        L1RegressionHead.Config(hidden_dim=8, num_blocks=1), action_horizon=3, action_dim=2, state_dim=0, cond_dim=4
    )
    with torch.no_grad():
        head.mlp.fc_out.weight.zero_()
        head.mlp.fc_out.bias.copy_(torch.tensor([0.5, -1.0]))
    nan = float("nan")
    actions = torch.tensor(
        [
            [[1.0, 0.0], [0.0, -1.0], [nan, 9.0]],  # sample 0: step 2 padded (anything there, even NaN)
            [[-0.5, 100.0], [1.5, 100.0], [0.0, 100.0]],  # sample 1: dimension 1 is not a real dimension
        ]
    )
    action_is_pad = torch.tensor([[False, False, True], [False, False, False]])
    dim_mask = torch.tensor([[True, True], [True, False]])
    conditioning = Conditioning(tokens=torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0)))
    loss = head.compute_loss(conditioning, actions, action_is_pad, action_dim_mask=dim_mask)["loss"]
    # sample 0, steps 0-1: |0.5 - 1| + |-1 - 0| + |0.5 - 0| + |-1 + 1|; sample 1, dim 0, steps 0-2: 1 + 1 + 0.5
    errors = [0.5, 1.0, 0.5, 0.0, 1.0, 1.0, 0.5]
    assert float(loss.detach()) == pytest.approx(
        sum(errors) / len(errors), rel=1e-6
    )  # 4.5 / 7; over all 12 it would differ
    # without padding and masks: the plain mean of |a_hat - a| over every scalar
    plain = torch.tensor([[[1.0, 0.0], [0.0, -1.0], [2.0, -3.0]]] * 2)
    unmasked = head.compute_loss(conditioning, plain, torch.zeros(2, 3, dtype=torch.bool))["loss"]
    assert float(unmasked.detach()) == pytest.approx((0.5 + 1.0 + 0.5 + 0.0 + 1.5 + 2.0) / 6, rel=1e-6)


def test_proprio_query_outputs_adds_the_projected_state_to_every_query_state():
    """QwenOFT `proprio: query_outputs` (the default): tokens[b, q] = h_L[b, pos(q)] + W_s s_b + c, h_L the LLM's
    last hidden state at query q's position (found here from the input ids). W_s is set to read state dimension
    0 into every channel and c = 0.5, so W_s s_b + c = s_b[0] + 0.5."""
    platform = {"name": "test", "action_horizon": 4, "action_dim": 3, "state_dim": 2}
    experiment = parse_experiment({"platform": platform, "framework": {"name": "QwenOFT"}})
    examples = synthetic_examples(PlatformConfig(**platform), 2, seed=1)
    torch.manual_seed(0)
    policy = build_policy(experiment, synthetic_norm_stats(examples)).eval()
    model, batch = policy.model, policy.processor(examples, targets=False)
    with torch.no_grad():
        model.proprio.weight.zero_()
        model.proprio.weight[:, 0] = 1.0
        model.proprio.bias.fill_(0.5)
        out = model.encode(batch)
        tokens = model.queries(out, batch).tokens  # [B, Q, H]
    assert tokens.shape[1] == 4  # one query per chunk step
    for b in range(2):
        shift = float(batch.state[b, 0]) + 0.5
        for q, token_id in enumerate(model.query_token_ids):
            position = int((batch.vlm.input_ids[b] == token_id).nonzero()[0, 0])
            torch.testing.assert_close(tokens[b, q], out.last_hidden_state[b, position] + shift)


@pytest.mark.parametrize(
    "name, horizon, action_dim, state_dim", [("libero", 8, 7, 8), ("aloha", 25, 14, 14), ("bridge", 5, 7, 7)]
)
def test_platform_presets_have_openvla_ofts_chunk_and_dimensions(name, horizon, action_dim, state_dim):
    """OpenVLA-OFT's chunk length T, action dimension D and proprio dimension S per robot: LIBERO 8 / 7 / 8, ALOHA
    25 / 14 / 14, Bridge 5 / 7 / 7 (the numbers are the paper's, typed here)."""
    import yaml

    path = Path(__file__).resolve().parents[1] / "configs" / "platforms" / f"{name}.yaml"
    platform = yaml.safe_load(path.read_text())["platform"]
    assert (platform["action_horizon"], platform["action_dim"], platform["state_dim"]) == (
        horizon,
        action_dim,
        state_dim,
    )


# ---- SimpleVLA-RL: the entropy bonus --------------------------------------------------------------------------


def test_entropy_bonus_subtracts_its_coefficient_times_the_token_mean_entropy():
    """L = (1 / |valid|) sum_{valid c} [ -min(rho_c A, clip(rho_c, 1 - eps_low, 1 + eps_high) A) - beta_H H_c ]
    (SimpleVLA-RL / veRL: pg_loss - entropy_coeff * entropy, token mean). At rho = 1 every term is -A - beta_H H_c,
    so the bonus lowers the loss by beta_H * mean_valid H, and dL/dH_c = -beta_H / |valid| at valid choices."""
    log_probs = torch.log(torch.tensor([[0.5, 0.25, 0.1], [0.2, 0.3, 0.4]]))
    advantages = torch.tensor([1.0, -0.5])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    entropy = torch.tensor([[0.2, 0.4, 0.6], [1.0, 2.0, 3.0]], requires_grad=True)
    coef = 0.01
    result = clipped_policy_loss(log_probs, log_probs, advantages, mask, 0.2, 0.28, entropy, coef)
    # valid choices: (0, 0), (0, 1) with A = 1 and H = 0.2, 0.4; (1, 0), (1, 2) with A = -0.5 and H = 1.0, 3.0
    terms = [-1.0 - coef * 0.2, -1.0 - coef * 0.4, 0.5 - coef * 1.0, 0.5 - coef * 3.0]
    assert float(result.loss.detach()) == pytest.approx(sum(terms) / 4, rel=1e-6)
    assert result.entropy == pytest.approx((0.2 + 0.4 + 1.0 + 3.0) / 4, rel=1e-6)  # logged: the token mean
    without = clipped_policy_loss(log_probs, log_probs, advantages, mask, 0.2, 0.28, entropy, 0.0)
    assert float((result.loss - without.loss).detach()) == pytest.approx(-coef * 4.6 / 4, rel=1e-5)  # the bonus's share
    (gradient,) = torch.autograd.grad(result.loss, entropy)
    expected = [[-coef / 4, -coef / 4, 0.0], [-coef / 4, 0.0, -coef / 4]]  # masked choices get none
    torch.testing.assert_close(gradient, torch.tensor(expected))


# ---- pi0-FAST: the DCT and its quantisation --------------------------------------------------------------------


def dct_ii_ortho(x: list[float]) -> list[float]:
    """X_k = sqrt(2 / T) c_k sum_n x_n cos(pi k (2n + 1) / (2T)), c_0 = 1 / sqrt(2), c_k = 1 otherwise."""
    size = len(x)
    return [
        math.sqrt(2 / size)
        * (1 / math.sqrt(2) if k == 0 else 1.0)
        * sum(x[n] * math.cos(math.pi * k * (2 * n + 1) / (2 * size)) for n in range(size))
        for k in range(size)
    ]


def dct_iii_ortho(coefficients: list[float]) -> list[float]:
    """The inverse: x_n = sqrt(2 / T) sum_k c_k X_k cos(pi k (2n + 1) / (2T))."""
    size = len(coefficients)
    return [
        math.sqrt(2 / size)
        * sum(
            (1 / math.sqrt(2) if k == 0 else 1.0) * coefficients[k] * math.cos(math.pi * k * (2 * n + 1) / (2 * size))
            for k in range(size)
        )
        for n in range(size)
    ]


CHUNK = [[0.15, 0.36], [0.16, 0.09], [0.7, -0.56], [0.72, 0.95]]  # [T = 4, D = 2]; no coefficient near a rounding tie


def test_fast_quantises_the_orthonormal_dct_of_each_dimension_over_time_times_the_scale():
    """q[k, d] = round(scale * X_k(a[:, d])) with X the orthonormal DCT-II over time (pi0-FAST), here at
    pi0-FAST's scale 10 and at 20 (vlablocks' default)."""
    chunk = np.array(CHUNK)
    for scale in (10.0, 20.0):
        tokenizer = FASTTokenizer(FASTTokenizer.Config(scale=scale), action_horizon=4, action_dim=2)
        quantized = tokenizer.quantize(chunk[None])[0]  # [T, D]
        for dim in range(2):
            scaled = [scale * value for value in dct_ii_ortho([row[dim] for row in CHUNK])]
            assert all(abs(v - math.floor(v) - 0.5) > 0.05 for v in scaled)  # no rounding tie in this example
            assert quantized[:, dim].tolist() == [round(v) for v in scaled]


def test_fast_tokens_are_frequency_major_and_decode_through_the_inverse_dct():
    """Tokens without BPE merges are one quantised coefficient each, flattened frequency-major: the first D tokens
    are every dimension's k = 0 coefficient, so decoding them alone (the rest taken as 0) gives the constant chunk
    a[t, d] = q[0, d] / (scale sqrt(T)); decoding them all gives a[:, d] = IDCT(q[:, d] / scale)."""
    scale = 10.0
    chunks = np.random.default_rng(0).uniform(-1, 1, size=(64, 4, 2))
    chunks[0] = CHUNK
    tokenizer = FASTTokenizer(FASTTokenizer.Config(scale=scale, bpe_merges=False), action_horizon=4, action_dim=2).fit(
        chunks
    )
    quantized = [[round(scale * v) for v in dct_ii_ortho([row[d] for row in CHUNK])] for d in range(2)]  # [D][T]
    ids = tokenizer.encode(np.array(CHUNK))
    assert len(ids) == 4 * 2  # one token per coefficient
    full = tokenizer.decode(ids)
    assert full.ok
    for dim in range(2):
        expected = dct_iii_ortho([q / scale for q in quantized[dim]])
        np.testing.assert_allclose(full.actions[:, dim], expected, atol=1e-6)
    lowest = tokenizer.decode(ids[:2])  # the first D = 2 tokens only
    for dim in range(2):
        np.testing.assert_allclose(lowest.actions[:, dim], [quantized[dim][0] / (scale * 2.0)] * 4, atol=1e-6)


# ---- alg1: L_geo, L_dyn, L_reg on tiny tensors ---------------------------------------------------------------


def gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def mlp_by_hand(x: list[float], w1, b1, w2, b2) -> list[float]:
    """Linear -> GELU (exact) -> Linear, in plain Python."""
    hidden = [gelu(sum(w * v for w, v in zip(row, x)) + b) for row, b in zip(w1, b1)]
    return [sum(w * h for w, h in zip(row, hidden)) + b for row, b in zip(w2, b2)]


W1 = [[0.5, -1.0, 0.25, 0.0], [1.5, 0.25, -0.5, 1.0]]  # [hidden 2, in]: the first columns are used for H = 2
B1 = [0.1, -0.2]
W2 = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [-1.0, 2.0]]  # [4 outputs, hidden 2]
B2 = [0.0, 0.1, 0.2, 0.3]


def set_head(head: torch.nn.Sequential, in_dim: int) -> None:
    with torch.no_grad():
        head[0].weight.copy_(torch.tensor([row[:in_dim] for row in W1]))
        head[0].bias.copy_(torch.tensor(B1))
        head[2].weight.copy_(torch.tensor(W2))
        head[2].bias.copy_(torch.tensor(B2))


def patch_means(points: torch.Tensor, sample: int) -> list[list[float]]:
    """y[n] for the 2 x 2 merged patches of a 4 x 4-pixel view, row-major: the mean of each 2 x 2 pixel block of
    P[sample, view 0] over its 4 channels (x, y, z, validity), in plain Python."""
    pixels = points[sample, 0].tolist()  # [4 channels][4 rows][4 cols]
    return [
        [sum(pixels[ch][i][j] for i in (2 * r, 2 * r + 1) for j in (2 * c, 2 * c + 1)) / 4 for ch in range(4)]
        for r in range(2)
        for c in range(2)
    ]


def alg1_inputs():
    """Two samples, one 4 x 4-pixel view each, seen by the VLM as 2 x 2 merged patches (N = 8 tokens, H = 2) and by
    the geometric encoder as a 2 x 2 cell grid; a chunk of T = 2 steps of D = 1, sample 0's last step padded; the
    next frame exists for sample 0 only."""
    generator = torch.Generator().manual_seed(3)
    points = torch.randn(2, 1, 4, 4, 4, generator=generator)
    next_points = torch.randn(2, 1, 4, 4, 4, generator=generator)
    fused = torch.randn(8, 2, generator=generator)
    vision = torch.randn(8, 2, generator=generator)
    vision_mask = torch.tensor([[False, True, True, True, True, False]] * 2)  # 4 image tokens per prompt
    info = vision_tokens(torch.tensor([[1, 4, 4], [1, 4, 4]]), [1, 1], merge_size=2, vision_mask=vision_mask)
    geometry = GeometryInputs(
        pixels=torch.zeros(2, 1, 3, 4, 4),
        view_mask=torch.ones(2, 1, dtype=torch.bool),
        points=points,
        next_points=next_points,
        next_valid=torch.tensor([True, False]),
    )
    batch = SimpleNamespace(
        geometry=geometry,
        actions=torch.tensor([[[0.7], [5.0]], [[-0.3], [0.4]]]),
        action_is_pad=torch.tensor([[False, True], [False, False]]),
    )
    capture = FusionCapture(vision=vision, fused=fused, info=info, grid_hw=(2, 2))
    return AuxiliaryInputs(vlm_output=None, batch=batch, fusion=capture)


VLM, PLATFORM = SimpleNamespace(hidden_size=2), SimpleNamespace(action_horizon=2, action_dim=1)


def test_alg1_geometry_loss_by_hand():
    """L_geo = 1 / (4 N) sum_n || g(f_n) - y_t[n] ||^2, y_t[n] the mean of P_t over the pixels under patch n
    (cells pooled from pixels, then aligned to the patch grid), g = Linear -> GELU -> Linear."""
    inputs = alg1_inputs()
    loss = GeometryReconstruction(WorldLoss.Config(weight=1.0, hidden_dim=2), vlm=VLM, platform=PLATFORM)
    set_head(loss.head, 2)
    fused = inputs.fusion.fused.tolist()
    targets = patch_means(inputs.batch.geometry.points, 0) + patch_means(inputs.batch.geometry.points, 1)
    total = 0.0
    for f, y in zip(fused, targets):
        prediction = mlp_by_hand(f, [row[:2] for row in W1], B1, W2, B2)
        total += sum((p - t) ** 2 for p, t in zip(prediction, y))
    assert float(loss(inputs).detach()) == pytest.approx(total / (4 * 8), rel=1e-5)


def test_alg1_dynamics_loss_by_hand():
    """L_dyn = 1 / (4 sum_n m_n) sum_n m_n || d([f_n, a_b(n)]) - y_{t+k}[n] ||^2, a_b the sample's chunk [T * D]
    with padded steps zeroed, m_n = 1 where frame t + k is in the episode (sample 0 here), y_{t+k} from the next
    frame's points."""
    inputs = alg1_inputs()
    loss = GeometryDynamics(WorldLoss.Config(weight=1.0, hidden_dim=2), vlm=VLM, platform=PLATFORM)
    set_head(loss.head, 4)
    fused = inputs.fusion.fused.tolist()
    targets = patch_means(inputs.batch.geometry.next_points, 0)  # sample 0's tokens: n = 0 .. 3
    chunk = [0.7, 0.0]  # sample 0's actions, the padded step (5.0) zeroed
    total = 0.0
    for f, y in zip(fused[:4], targets):
        prediction = mlp_by_hand(f + chunk, W1, B1, W2, B2)
        total += sum((p - t) ** 2 for p, t in zip(prediction, y))
    assert float(loss(inputs).detach()) == pytest.approx(total / (4 * 4), rel=1e-5)


def test_alg1_regularizer_by_hand():
    """L_reg = 1 / (H N) sum_n || f_n - v_n ||^2 (the fused tokens stay near the VLM's own vision tokens)."""
    inputs = alg1_inputs()
    loss = FusionRegularizer(FusionRegularizer.Config(weight=1.0), vlm=VLM, platform=PLATFORM)
    fused, vision = inputs.fusion.fused.tolist(), inputs.fusion.vision.tolist()
    total = sum((a - b) ** 2 for f, v in zip(fused, vision) for a, b in zip(f, v))
    assert float(loss(inputs).detach()) == pytest.approx(total / (2 * 8), rel=1e-6)


# ---- OpenVLA-OFT: FiLM on the vision tokens (film: vision_tokens, the default place) -------------------------


def test_film_on_the_vision_tokens_by_hand():
    """x_n -> x_n * (1 + gamma_b(n)) + beta_b(n), [gamma_b, beta_b] = W e_b + c, e_b the mean input embedding of
    sample b's real (unpadded), non-vision tokens (OpenVLA-OFT's language-conditioned FiLM)."""
    film = InstructionFiLM(2)
    weight = [[0.5, 0.0], [0.0, -0.5], [1.0, 1.0], [0.0, 2.0]]  # rows: gamma_0, gamma_1, beta_0, beta_1
    bias = [0.1, 0.2, -0.3, 0.0]
    with torch.no_grad():
        film.to_scale_shift.weight.copy_(torch.tensor(weight))
        film.to_scale_shift.bias.copy_(torch.tensor(bias))
    text = [[[1.0, 2.0], [50.0, 50.0], [60.0, 60.0], [3.0, -4.0]], [[70.0, 70.0], [2.0, 0.0], [0.0, 6.0], [80.0, 80.0]]]
    info = SimpleNamespace(
        text_embeds=torch.tensor(text),
        attention_mask=torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]]),  # sample 1 left-padded
        vision_mask=torch.tensor([[False, True, True, False], [False, False, False, True]]),
        batch_index=torch.tensor([0, 0, 1]),
    )
    image = [[1.0, -1.0], [2.0, 0.5], [-3.0, 4.0]]
    out = film(torch.tensor(image), info)
    pooled = [[(1.0 + 3.0) / 2, (2.0 - 4.0) / 2], [(2.0 + 0.0) / 2, (0.0 + 6.0) / 2]]  # positions 0, 3 and 1, 2
    expected = []
    for x, sample in zip(image, (0, 0, 1)):
        gamma_beta = [sum(w * e for w, e in zip(row, pooled[sample])) + b for row, b in zip(weight, bias)]
        expected.append([x[i] * (1 + gamma_beta[i]) + gamma_beta[2 + i] for i in range(2)])
    torch.testing.assert_close(out, torch.tensor(expected))
