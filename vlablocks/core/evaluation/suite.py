"""Evaluation over a task suite (Meta-World MT10, MT50, a difficulty group): the one rollout engine per task, then
success per task, per group and overall, each with its Wilson 95% CI, and the wrong-instruction control.

    summary = evaluate_suite(tasks, groups, envs_for, actor_for, episodes_per_task=10, seed=1000, out_dir=out)

Each task runs `evaluate` (rollout.py) on its own vector env over seeds seed .. seed + episodes_per_task - 1, the
same seeds for every task, keeping one success and one failure video; the control runs the same seeds with another
task's instruction (`env.wrong_instruction()`). A group's and the overall rate pool the episodes of their tasks
(with the same episodes per task this is the mean of the task rates). out_dir/summary.json holds it all;
report_page.py turns it into one HTML page.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from vlablocks.core.evaluation.rollout import evaluate
from vlablocks.core.evaluation.summary import success_summary

SUMMARY_FILE = "summary.json"
VIDEO_STRIDE = 4  # GIF frames: every 4th step (Meta-World runs at 80 Hz)


@dataclass(frozen=True)
class SuiteProtocol:
    """What a suite figure was measured under: tasks, seeds (first, last), episodes, horizon, control."""

    tasks: list[str]
    seeds: list[int]
    episodes_per_task: int
    open_loop_horizon: int
    wrong_instruction_control: bool
    env: dict


def pooled(rows: list[dict]) -> dict:
    """Per-task summaries -> one success summary of all their episodes (successes and trials added up)."""
    return success_summary(sum(r["successes"] for r in rows), sum(r["episodes"] for r in rows))


def aggregate(per_task: dict[str, dict], groups: dict[str, str], group_order: Sequence[str] = ()) -> dict:
    """{task: success summary} and {task: group} -> {"groups": {group: pooled summary + "tasks"}, "overall"};
    groups listed in `group_order` first, in that order, then the others as their tasks come."""
    by_group: dict[str, list[str]] = {group: [] for group in group_order}
    for task in per_task:
        by_group.setdefault(groups[task], []).append(task)
    by_group = {group: tasks for group, tasks in by_group.items() if tasks}
    group_rows = {group: {**pooled([per_task[t] for t in tasks]), "tasks": tasks} for group, tasks in by_group.items()}
    return {"groups": group_rows, "overall": pooled(list(per_task.values()))}


def evaluate_suite(
    tasks: list[str],
    groups: dict[str, str],
    envs_for: Callable[[str], object],
    actor_for: Callable[[object], tuple[object, int]],
    episodes_per_task: int,
    seed: int,
    out_dir: Path,
    control: bool = True,
    env_config: dict | None = None,
    progress: bool = True,
    group_order: Sequence[str] = (),
) -> dict:
    """Every task's episodes through `evaluate`, then the aggregates -> the suite summary (also out_dir/summary.json).

    envs_for(task) -> a vector env of that task (closed here); actor_for(envs) -> (actor or infer policy, actions
    played per chunk); groups: {task: group name}. control: also run the wrong-instruction control per task."""
    if episodes_per_task < 1:
        raise ValueError(f"--episodes-per-task must be >= 1, got {episodes_per_task}")
    out_dir.mkdir(parents=True, exist_ok=True)
    per_task, wrong = {}, {}
    horizon = 0
    for task in _progress(tasks, progress):
        envs = envs_for(task)
        try:
            actor, horizon = actor_for(envs)
            result = evaluate(
                envs, actor, episodes_per_task, seed, out_dir / task, horizon,
                progress=False, videos_by_outcome=True, video_stride=VIDEO_STRIDE,
            )  # fmt: skip
            per_task[task] = {**result, "group": groups[task], "instruction": _instruction(result)}
            if control:
                controlled = evaluate(
                    envs, actor, episodes_per_task, seed, out_dir / task / "wrong_instruction", horizon,
                    videos=0, wrong_instruction=True, progress=False,
                )  # fmt: skip
                wrong[task] = controlled
        finally:
            envs.close()
    protocol = SuiteProtocol(
        list(tasks), [seed, seed + episodes_per_task - 1], episodes_per_task, horizon, control, dict(env_config or {})
    )
    summary = {"protocol": asdict(protocol), "tasks": per_task, **aggregate(per_task, groups, group_order)}
    if control:
        summary["wrong_instruction"] = {"tasks": wrong, **aggregate(wrong, groups, group_order)}
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    return summary


def _instruction(result: dict) -> str:
    episodes = result.get("per_episode") or [{}]
    return str(episodes[0].get("instruction", ""))


def _progress(tasks: list[str], progress: bool):
    if not progress:
        return tasks
    from tqdm import tqdm

    return tqdm(tasks, desc="tasks", dynamic_ncols=True)


def format_rate(row: dict) -> str:
    """A summary -> "73.0% (73/100, 95% CI 63.6-80.7%)"."""
    low, high = row["ci95"]
    return f"{row['success_rate']:.1%} ({row['successes']}/{row['episodes']}, 95% CI {low:.1%}-{high:.1%})"


def suite_lines(summary: dict) -> list[str]:
    """The suite summary as the lines `vlablocks eval --tasks` prints: per task, per group, overall, control."""
    control = summary.get("wrong_instruction")
    lines = []
    for task, row in summary["tasks"].items():
        wrong = f"  wrong instruction {control['tasks'][task]['success_rate']:.0%}" if control else ""
        lines.append(f"{task:28s} {row['group']:9s} {format_rate(row)}{wrong}")
    for group, row in summary["groups"].items():
        lines.append(f"group {group:22s} {len(row['tasks']):2d} tasks {format_rate(row)}")
    lines.append(f"overall {format_rate(summary['overall'])}")
    if control:
        lines.append(f"wrong-instruction control {format_rate(control['overall'])}")
    return lines
