"""A sampled subset of the hostile-input run (vlablocks/tools/bench/hostile.py): one message of each of its 32
classes against `vlablocks serve`, plain and steered (`--text-latent F --latent-prompt given`)."""

from __future__ import annotations

from vlablocks.tools.bench import pipelining
from vlablocks.tools.bench.hostile import COUNTS, main, run


def test_every_hostile_class_is_refused_cleanly_and_the_next_request_served():
    results = run(per_class=1, seed=3)
    for server in ("plain", "steered"):
        result = results[server]
        assert result["messages"] == result["classes"] == 32, server
        assert result["counts"] == dict.fromkeys(COUNTS, 0), server
        assert result["log_growth_bytes"] < 20_000, server
        for name, replies in result["per_class"].items():
            valid = name.endswith("(valid)") or (name == "prompt without a latent" and server == "plain")
            assert replies == ({"actions": 1} if valid else {"error": 1}), (server, name)


def test_the_script_exits_0_when_nothing_went_wrong(capsys):
    assert main(["--per-class", "1", "--seed", "4", "--servers", "plain"]) == 0
    assert '"crash": 0' in capsys.readouterr().out


def test_pipelining_attack_memory_stays_under_the_bound_the_limits_imply():
    # 6 connections pipelining 4 MiB frames against a server admitting 2: with every attacker admitted the
    # same run grew the server by 55 MB, over this bound (2 x (2 + 2) x 4 MiB = 32 MiB).
    result = pipelining.run(max_connections=2, max_payload_mb=4.0, attackers=6, frames=10, seconds=3.0)
    assert result["server_alive"]
    assert result["connections_refused"] == 4
    assert result["frames_sent"] == 20  # the admitted connections were served to the end, not dropped
    assert 0 < result["rss_growth_mb"] <= result["bound_mb"] == 32.0
