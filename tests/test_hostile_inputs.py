"""A sampled subset of the hostile-input run (vlablocks/bench/hostile.py): one message of each of its 20 classes."""

from __future__ import annotations

from vlablocks.bench.hostile import main, run


def test_every_hostile_class_is_refused_cleanly_and_the_next_request_served():
    result = run(per_class=1, seed=3)
    assert result["messages"] == 20
    assert result["counts"] == dict.fromkeys(
        ("crash", "hang", "non_finite", "long_error", "not_served_after", "bad_answered"), 0
    )
    for name, replies in result["per_class"].items():
        assert replies == ({"actions": 1} if name.endswith("(valid)") else {"error": 1}), name


def test_the_script_exits_0_when_nothing_went_wrong(capsys):
    assert main(["--per-class", "1", "--seed", "4"]) == 0
    assert '"crash": 0' in capsys.readouterr().out
