"""`vlablocks bench --smoke`: every row runs end to end, reports both sides, a consistent ratio and verdict.

The smoke profile (tiny sizes, 1 repeat) proves the suite still runs; its numbers are not figures.
Performance figures live in docs/benchmarks.md, measured by `vlablocks bench`, never in tests.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from vlablocks.tools.bench.result import Goal, Row, Side
from vlablocks.tools.bench.settings import bench_settings

ROWS = [
    "training",
    "checkpointing",
    "processing",
    "data",
    "inference",
    "compiled",
    "flow_matching",
    "pi05",
    "rollout",
    "server",
    "memory",
]
INVERTED = ("processing", "inference", "compiled", "flow_matching", "pi05")  # ratio = baseline / ours (speed-ups)
CLI = Path(sys.executable).with_name("vlablocks")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[dict, str, str]:
    """One smoke run through the installed console script, from outside the checkout."""
    cwd = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [str(CLI), "bench", "--smoke", "--threads", "1", "--out", "out"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=480,  # the compiled row compiles once (about a minute on one CPU thread)
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((cwd / "out" / "bench.json").read_text()), (cwd / "out" / "bench.md").read_text(), proc.stdout


def test_all_rows_with_both_sides_and_ratio(smoke_run):
    report, _, _ = smoke_run
    assert [row["key"] for row in report["rows"]] == ROWS
    assert report["meta"]["errors"] == {}
    assert report["meta"]["threads"] == 1
    for row in report["rows"]:
        for side in ("ours", "baseline"):
            values = row[side]["values"]
            assert values and all(math.isfinite(v) and v > 0 for v in values), (row["key"], side, values)
            assert row[side]["median"] == pytest.approx(statistics.median(values))
        ours, baseline = row["ours"]["median"], row["baseline"]["median"]
        expected = baseline / ours if row["key"] in INVERTED else ours / baseline
        assert row["ratio"] == pytest.approx(expected), row["key"]


def test_goals_and_verdicts_follow_the_numbers(smoke_run):
    report, markdown, stdout = smoke_run
    goals = {row["key"]: [(g["subject"], g["op"], g["value"]) for g in row["goals"]] for row in report["rows"]}
    assert goals == {
        "training": [("ratio", "<=", 1.05)],
        "checkpointing": [],  # a trade to report, no goal
        "processing": [("ratio", ">=", 1.1), ("training_process_data_ms", "<=", 1.0)],
        "data": [("ratio", ">=", 0.95)],
        "inference": [("ratio", ">=", 15.0)],  # the 25 ms OFT goal only applies to --device cuda --arch 3b
        "compiled": [],  # its 20 ms goal only applies to --device cuda --arch 3b
        "flow_matching": [("ratio", ">=", 4.0)],
        "pi05": [],
        "rollout": [("ratio", ">=", 8.0)],
        "server": [("ours", "<=", 1.5)],
        "memory": [],
    }
    for row in report["rows"]:
        for goal in row["goals"]:
            if goal["subject"] == "ratio":
                measured = row["ratio"]
            elif goal["subject"] in ("ours", "baseline"):
                measured = row[goal["subject"]]["median"]
            else:
                measured = row["checks"][goal["subject"]]
            met = measured <= goal["value"] if goal["op"] == "<=" else measured >= goal["value"]
            assert goal["met"] == met
            assert ("meets " if met else "MISSES ") + goal["text"] in row["verdict"]
    table = [line for line in markdown.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == len(ROWS)
    for line, row in zip(table, report["rows"]):
        assert row["verdict"] in line and f"{row['ratio']:.2f}" in line
    assert table[0] in stdout  # the command prints the table it writes


def test_each_side_does_the_same_work(smoke_run):
    """The fairness checks behind the ratios: same losses, same actions, FAST emits a trained policy's length."""
    checks = {row["key"]: row["checks"] for row in smoke_run[0]["rows"]}
    assert checks["training"]["loss_max_abs_diff"] <= 1e-5
    assert checks["training"]["gflop_per_sample"] > 0 and 0 < checks["training"]["mfu"] < 1  # of a measured peak
    assert checks["training"]["padding_grouped"] < checks["training"]["padding"]  # trainer.group_by_length's batches
    assert checks["checkpointing"]["loss_max_abs_diff"] <= 1e-5  # recomputing activations changes no arithmetic
    assert (checks["checkpointing"]["attention_entries_on"], checks["checkpointing"]["attention_entries_off"]) == (2, 1)
    assert 0 < checks["checkpointing"]["saved_mib_on"] < checks["checkpointing"]["saved_mib_off"]  # layers keep inputs
    assert checks["processing"]["loss_max_abs_diff"] <= 1e-5  # same batches whether a worker processed them or not
    assert checks["processing"]["in_process_data_ms"] > 0
    assert checks["flow_matching"]["action_max_abs_diff"] <= 1e-5
    assert checks["compiled"]["action_max_abs_diff"] <= 1e-4 and checks["compiled"]["compile_s"] > 0
    assert checks["inference"]["fast_emitted_tokens"] == checks["inference"]["fast_target_tokens"]
    assert 10 <= checks["inference"]["fast_target_tokens"] < 8 * 7  # tens of tokens, fewer than one per value
    assert checks["pi05"]["fast_emitted_tokens"] == checks["pi05"]["fast_target_tokens"]
    assert checks["pi05"]["pi05_vlm_passes"] == 1  # the prefix once, no token decoded


def test_row_ratio_and_missed_goal():
    row = Row(
        key="k",
        title="t",
        unit="ms",
        ours=Side("fast path", [10.0, 30.0, 20.0]),
        baseline=Side("slow path", [50.0, 70.0, 60.0]),
        ratio_name="slow / fast",
        goals=[Goal("ratio", ">=", 4.0), Goal("ours", "<=", 25.0)],
        invert=True,
    )
    assert row.ratio == pytest.approx(3.0)
    assert row.verdict() == "MISSES ratio >= 4; meets fast path (ms) <= 25"
    checked = Row(**{**vars(row), "goals": [Goal("wait_ms", "<=", 1.0)], "checks": {"wait_ms": 1.5}})
    assert checked.verdict() == "MISSES wait_ms <= 1"


def test_bad_combinations_are_one_line_errors():
    with pytest.raises(ValueError, match="--arch 3b needs --device cuda"):
        bench_settings("quick", "cpu", "3b")
    with pytest.raises(ValueError, match="unknown bench profile 'fast' \\(available: full, quick, smoke\\)"):
        bench_settings("fast")
    with pytest.raises(ValueError, match="--threads must be >= 0"):
        bench_settings("quick", threads=-1)
    assert bench_settings("quick").threads == 1  # CPU default: steady figures on a shared CPU


def test_unknown_row_names_the_available_ones(tmp_path):
    from vlablocks.tools.bench.suite import run_suite

    with pytest.raises(
        ValueError, match="unknown bench row\\(s\\) trainig \\(available: training, checkpointing, processing, data,"
    ):
        run_suite(bench_settings("smoke"), tmp_path, only=["trainig"])
