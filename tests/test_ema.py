"""EMA of the weights: the update against a hand computation, saved with checkpoints, exact on resume, served."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_training import examples, experiment

from vlablocks.core.framework.ema import EMA, EMA_FILE, STEP_KEY
from vlablocks.core.policy.policy import Policy
from vlablocks.core.training.train import train


def test_update_matches_a_hand_computation():
    model = torch.nn.Linear(1, 1, bias=False)
    frozen = torch.nn.Parameter(torch.ones(1), requires_grad=False)
    model.register_parameter("frozen", frozen)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.5)
    assert set(ema.shadow) == {"weight"}  # frozen parameters are not averaged
    expected = 1.0
    for t, value in enumerate([3.0, 5.0, -1.0, 2.0], start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        d = min(0.5, (1 + t) / (10 + t))  # t = 1: 2/11; t = 2: 3/12; t = 3: 4/13; t = 4: 5/14
        expected = d * expected + (1 - d) * value
        assert ema.shadow["weight"].item() == pytest.approx(expected, rel=1e-6)
    # by hand: 2/11 * 1 + 9/11 * 3 = 29/11; then 3/12 * 29/11 + 9/12 * 5 = 0.659.. + 3.75
    assert ema.step == 4 and expected == pytest.approx(((((29 / 11) * 0.25 + 3.75) * 4 / 13 - 9 / 13) * 5 + 18) / 14)
    with pytest.raises(ValueError, match=r"ema_decay must be in \(0, 1\)"):
        EMA(model, decay=1.0)


def test_ema_is_saved_resumed_exactly_and_served_by_choice(tmp_path):
    data = examples()
    options = {"save_every": 2, "ema_decay": 0.9, "lr_schedule": "constant"}  # max_steps leaves the schedule alone
    straight = train(experiment(tmp_path / "a", max_steps=4, **options), dataset=data)
    train(experiment(tmp_path / "b", max_steps=2, **options), dataset=data)
    resumed = train(experiment(tmp_path / "b", max_steps=4, resume=True, **options), dataset=data)
    a, b = load_file(str(straight["checkpoint"] / EMA_FILE)), load_file(str(resumed["checkpoint"] / EMA_FILE))
    assert a.keys() == b.keys() and int(a[STEP_KEY][0]) == 4
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)

    latest = Policy.from_pretrained(straight["checkpoint"])
    averaged = Policy.from_pretrained(straight["checkpoint"], weights="ema")
    parameters = dict(averaged.model.named_parameters())
    for key, value in a.items():
        if key != STEP_KEY:
            torch.testing.assert_close(parameters[key].detach(), value, rtol=0, atol=0)
    differs = [k for k, v in latest.model.named_parameters() if k in a and not torch.equal(v.detach(), a[k])]
    assert differs  # the average is not the last weights
    sample = data[:2]
    assert not np.allclose(latest.predict(sample)["actions"], averaged.predict(sample)["actions"])
    with pytest.raises(ValueError, match="weights must be 'model' or 'ema'"):
        Policy.from_pretrained(straight["checkpoint"], weights="best")


def test_serving_ema_from_a_run_without_it_names_the_fix(tmp_path):
    result = train(experiment(tmp_path / "plain", max_steps=1), dataset=examples())
    with pytest.raises(FileNotFoundError, match="trained without trainer.ema_decay"):
        Policy.from_pretrained(result["checkpoint"], weights="ema")
