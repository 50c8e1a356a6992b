"""The binned action head: bins, its cross-entropy against a hand computation, sampling with exact log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from vlablocks.core.action_model.base import Conditioning
from vlablocks.core.action_model.binned import BinnedActionHead


def head(**options) -> BinnedActionHead:
    config = BinnedActionHead.Config(**{"num_bins": 8, "hidden_dim": 16, "num_blocks": 1, **options})
    torch.manual_seed(0)
    return BinnedActionHead(config, action_horizon=3, action_dim=2, state_dim=2, cond_dim=12)


def test_bins_tile_the_range_and_decode_to_their_centres():
    h = head()  # 8 bins on [-1, 1]: width 0.25
    actions = torch.tensor([-1.0, -0.99, -0.74, 0.0, 0.6, 0.999, 1.0, 3.0, -7.0])
    bins = h.to_bins(actions)
    assert bins.tolist() == [0, 0, 1, 4, 6, 7, 7, 7, 0]
    assert torch.allclose(h.to_actions(torch.tensor([0, 4, 7])), torch.tensor([-0.875, 0.125, 0.875]))
    inside = torch.linspace(-1, 0.999, 101)
    assert (h.to_actions(h.to_bins(inside)) - inside).abs().max() <= 0.125 + 1e-6


def test_cross_entropy_matches_a_hand_computation():
    h = head()
    with torch.no_grad():  # logits independent of the input: bin k of every scalar gets logit k / 2
        h.mlp.fc_out.weight.zero_()
        h.mlp.fc_out.bias.copy_((torch.arange(8) / 2).repeat(2))
    cond = Conditioning(tokens=torch.randn(1, 3, 12))
    actions = torch.tensor([[[-0.9, 0.9], [0.1, 0.1], [0.0, 0.0]]])  # bins (0, 7), (4, 4), (4, 4)
    pad = torch.tensor([[False, False, True]])  # the last step is padding: not in the loss
    log_z = math.log(sum(math.exp(k / 2) for k in range(8)))
    expected = sum(log_z - k / 2 for k in (0, 7, 4, 4)) / 4
    out = h.compute_loss(cond, actions, pad)
    assert float(out["loss"].detach()) == pytest.approx(expected, rel=1e-5)
    assert float(out["bin_accuracy"]) == pytest.approx(1 / 4)  # argmax is bin 7: right only for the 0.9
    assert torch.allclose(h(cond), torch.full((1, 3, 2), 0.875))  # greedy decodes the argmax bin's centre


def test_hl_gauss_labels_lower_the_loss_of_a_neighbouring_bin():
    cond = Conditioning(tokens=torch.randn(1, 3, 12))
    target = torch.full((1, 3, 2), 0.1)  # bin 4
    losses = {}
    for sigma in (0.0, 0.75):
        h = head(label_sigma=sigma)
        with torch.no_grad():
            h.mlp.fc_out.weight.zero_()
            h.mlp.fc_out.bias.copy_(torch.nn.functional.one_hot(torch.tensor(5), 8).float().mul(6).repeat(2))
        losses[sigma] = h.compute_loss(cond, target, torch.zeros(1, 3, dtype=torch.bool))["loss"].item()
    one_hot_loss = math.log(math.exp(6) + 7)  # -log q_4 when bin 5 holds logit 6 and the others 0
    assert losses[0.0] == pytest.approx(one_hot_loss, rel=1e-5)
    assert losses[0.75] < losses[0.0]  # part of the HL-Gauss label sits on bin 5


def test_sampled_log_probs_are_the_tempered_distribution_and_evaluate_recomputes_them():
    h = head()
    cond = Conditioning(tokens=torch.randn(4, 3, 12))
    generator = torch.Generator().manual_seed(0)
    drawn = h.sample(cond, None, temperature=1.6, generator=generator)
    assert drawn["bins"].shape == (4, 3, 2) and drawn["actions"].shape == (4, 3, 2)
    expected = (h.logits(cond) / 1.6).log_softmax(-1).gather(-1, drawn["bins"].unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(drawn["log_probs"], expected, atol=1e-6)
    log_probs, entropy = h.evaluate(cond, None, drawn["bins"], 1.6)
    assert torch.allclose(log_probs, drawn["log_probs"], atol=1e-6)
    assert (entropy > 0).all() and (entropy <= math.log(8) + 1e-5).all()
    again = h.sample(cond, None, 1.6, torch.Generator().manual_seed(0))
    assert torch.equal(again["bins"], drawn["bins"])  # seeded sampling repeats


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="num_bins >= 2"):
        head(num_bins=1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        head().sample(Conditioning(tokens=torch.randn(1, 3, 12)), None, 0.0)
