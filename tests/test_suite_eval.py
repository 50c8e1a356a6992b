"""Suite evaluation (vlablocks/core/evaluation/suite.py): the arithmetic per task, per group and overall checked by
hand, the wrong-instruction control, and the HTML report page as headless Chromium shows it (screenshot + OCR)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vlablocks.core.envs.vector import InProcessEnvs
from vlablocks.core.evaluation.report_page import write_report_page
from vlablocks.core.evaluation.suite import aggregate, evaluate_suite, suite_lines

# task -> (group, which seeds succeed when the policy is told the task's own instruction)
TASKS = {
    "alpha": ("easy", lambda seed: seed % 4 != 3),  # seeds 1000..1003: 3 of 4
    "beta": ("easy", lambda seed: seed % 2 == 0),  # 2 of 4
    "gamma": ("hard", lambda seed: False),  # 0 of 4
}
RED = np.array([200, 30, 30], np.uint8)


class StubEnv:
    """Three steps per episode; success when the seed says so and every action was 1 (the policy read its task)."""

    def __init__(self, task: str) -> None:
        self.task, self.steps, self.obeyed = task, 0, True

    def reset(self, seed: int) -> dict:
        self.seed, self.steps, self.obeyed = seed, 0, True
        return self.observe()

    def observe(self) -> dict:
        image = np.full((24, 24, 3), 255, np.uint8)
        image[6 + self.steps : 14 + self.steps, 6:18] = RED  # a red block that moves down
        return {"images": {"cam": image}, "state": np.zeros(1, np.float32), "prompt": f"do {self.task}"}

    def step(self, action):
        self.steps += 1
        self.obeyed &= bool(np.asarray(action).reshape(-1)[0] == 1.0)
        done = self.steps == 3
        success = done and self.obeyed and TASKS[self.task][1](self.seed)
        return self.observe(), float(success), done, {"success": success}

    def wrong_instruction(self) -> str:
        return "do something else"


class ObeyingPolicy:
    """Action 1 when told the env's own instruction (the request's prompt names the task), else 0."""

    def __init__(self, task: str) -> None:
        self.task = task

    def infer(self, request: dict) -> dict:
        return {"actions": np.full((1, 1), float(request["prompt"] == f"do {self.task}"), np.float32)}


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("suite")
    groups = {task: group for task, (group, _) in TASKS.items()}
    summary = evaluate_suite(
        list(TASKS),
        groups,
        envs_for=lambda task: InProcessEnvs.wrap([StubEnv(task)]),
        actor_for=lambda envs: (ObeyingPolicy(envs.envs[0].task), 1),
        episodes_per_task=4,
        seed=1000,
        out_dir=out,
        progress=False,
        group_order=("easy", "medium", "hard"),
    )
    return summary, out


def test_rates_and_intervals_per_task_group_and_overall_by_hand(suite):
    summary, out = suite
    assert json.loads((out / "summary.json").read_text())["overall"] == summary["overall"]
    assert [summary["tasks"][t]["successes"] for t in TASKS] == [3, 2, 0]
    easy, hard, overall = summary["groups"]["easy"], summary["groups"]["hard"], summary["overall"]
    assert list(summary["groups"]) == ["easy", "hard"]  # the given order, empty groups left out
    assert (easy["successes"], easy["episodes"], easy["tasks"]) == (5, 8, ["alpha", "beta"])
    # Wilson 95% for 5/8: centre (0.625 + 1.96^2/16) / (1 + 1.96^2/8) = 0.5845,
    # half-width 1.96 * sqrt(0.625 * 0.375 / 8 + 1.96^2 / 256) / 1.4802 = 0.2787
    assert easy["success_rate"] == 0.625 and easy["ci95"] == pytest.approx([0.3058, 0.8632], abs=1e-4)
    # 0/4: [0, 2 * (1.96^2 / 8) / (1 + 1.96^2 / 4)] = [0, 0.4899]
    assert hard["success_rate"] == 0.0 and hard["ci95"] == pytest.approx([0.0, 0.4899], abs=1e-4)
    assert (overall["successes"], overall["episodes"]) == (5, 12)
    assert overall["ci95"] == pytest.approx([0.1933, 0.6805], abs=1e-4)
    assert summary["protocol"]["seeds"] == [1000, 1003] and summary["protocol"]["episodes_per_task"] == 4


def test_the_wrong_instruction_control_runs_the_same_seeds_with_another_task(suite):
    summary, _ = suite
    control = summary["wrong_instruction"]
    assert control["overall"]["successes"] == 0 and control["overall"]["episodes"] == 12
    assert [r["seed"] for r in control["tasks"]["alpha"]["per_episode"]] == [1000, 1001, 1002, 1003]
    lines = suite_lines(summary)
    assert lines[0].startswith("alpha") and "75.0% (3/4, 95% CI 30.1%-95.4%)" in lines[0]
    assert lines[-2] == "overall 41.7% (5/12, 95% CI 19.3%-68.0%)"
    assert lines[-1].startswith("wrong-instruction control 0.0% (0/12")


def test_one_success_and_one_failure_video_per_task(suite):
    summary, out = suite
    assert sorted(Path(v).name for v in summary["tasks"]["alpha"]["videos"]) == [
        "episode_000_success.gif",
        "episode_003_failure.gif",
    ]
    assert [Path(v).name for v in summary["tasks"]["gamma"]["videos"]] == ["episode_000_failure.gif"]
    assert not list((out / "alpha" / "wrong_instruction").glob("*.gif"))


def test_aggregate_pools_episodes_not_rates():
    per_task = {"a": {"successes": 1, "episodes": 1}, "b": {"successes": 0, "episodes": 3}}
    result = aggregate(per_task, {"a": "g", "b": "g"})
    assert result["groups"]["g"]["success_rate"] == 0.25 and result["overall"]["successes"] == 1


def chromium() -> str:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser"):
        if shutil.which(name):
            return name
    pytest.skip("no headless Chromium: scripts/install_system_deps.sh installs chromium-headless-shell")


def test_the_report_page_in_headless_chromium(suite, tmp_path):
    summary, out = suite
    page = write_report_page(summary, out / "report.html", title="Stub suite report")
    text = page.read_text()
    assert 'src="data:image/gif;base64,' in text and "file:" not in text and "<script" not in text
    copy = tmp_path / "alone" / "report.html"  # self-contained: the page alone, away from its GIFs
    copy.parent.mkdir()
    copy.write_text(text)
    shot = tmp_path / "report.png"
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    subprocess.run(
        [*command, "--window-size=1300,1500", f"--screenshot={shot}", copy.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1500, 1300)
    red = (np.abs(pixels - RED.astype(int)).sum(axis=-1) < 40).sum()
    assert red > 500, "the embedded GIFs did not show in the page"
    if shutil.which("tesseract") is None:
        pytest.skip("tesseract (Debian tesseract-ocr) reads the screenshot; it is not installed")
    words = subprocess.run(["tesseract", str(shot), "-"], capture_output=True, text=True, timeout=120).stdout
    for expected in ("Overall success 41.7%", "62.5%", "alpha", "gamma", "difficulty", "hard"):
        assert expected in words, f"{expected!r} not read off the screenshot: {words[:400]!r}"


def test_the_comparison_table_averages_seeds_and_writes_between_markers(suite, tmp_path):
    from vlablocks.tools.metaworld.compare import comparison_table, main, parse_run, write_between_markers

    summary, out = suite  # 5/12 = 41.7% overall; easy 62.5%, hard 0%; control 0%
    other = json.loads(json.dumps(summary))
    other["overall"]["success_rate"], other["groups"]["easy"]["success_rate"] = 0.5, 0.75
    table = comparison_table({"stub": [summary, other]})
    assert table.splitlines()[2] == "| stub | 2 | 12 | 46% (42-50) | 0% (0-0) | 69% (62-75) | - | 0% (0-0) | - |"
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- comparison:start -->\nold\n<!-- comparison:end -->\nafter\n")
    assert main(["--run", f"stub={out}", "--write", str(page)]) == 0
    text = page.read_text()
    assert "old" not in text and "| stub | 1 | 12 | 42% | 0% | 62% | - | 0% | - |" in text and text.endswith("after\n")
    with pytest.raises(ValueError, match="--run must be NAME=DIR"):
        parse_run("no-equals-sign")
    page.write_text("no markers here")
    with pytest.raises(ValueError, match="no <!-- comparison:start -->"):
        write_between_markers(page, "x")
