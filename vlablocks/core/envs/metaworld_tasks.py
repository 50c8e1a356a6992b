"""Meta-World task sets, instructions and difficulty groups, read from LeRobot's own table (no simulator needed).

LeRobot 0.6 (a core dependency) ships `lerobot/envs/metaworld_config.json`: the language instruction of each of the
50 v3 tasks (`TASK_DESCRIPTIONS`), the difficulty groups used by published VLA results (`DIFFICULTY_TO_TASKS`:
easy 28, medium 11, hard 6, very_hard 5) and the scripted expert of each task (`TASK_POLICY_MAPPING`). The file is
read as JSON, so listing tasks imports neither LeRobot's env module nor metaworld.

    resolve_tasks("mt10")                  # the 10 MT10 tasks, in Meta-World's order
    resolve_tasks("medium")                # a difficulty group
    resolve_tasks("reach-v3,push-v3")      # any list (the -v3 suffix may be left off)
    instruction("push-v3")                 # "Push the puck to a goal"
    difficulty("push-v3")                  # "easy"
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

# Meta-World's MT10 (metaworld.env_dict.MT10_V3, in its order; a test checks it against the installed package).
MT10 = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)
DIFFICULTIES = ("easy", "medium", "hard", "very_hard")


@functools.cache
def lerobot_table() -> dict:
    """LeRobot's metaworld_config.json: {"TASK_DESCRIPTIONS", "DIFFICULTY_TO_TASKS", "TASK_POLICY_MAPPING", ...}."""
    spec = importlib.util.find_spec("lerobot")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the metaworld task table comes from lerobot, which is not installed: pip install -e .")
    path = Path(list(spec.submodule_search_locations)[0]) / "envs" / "metaworld_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the installed lerobot has no Meta-World table (lerobot>=0.6)")
    return json.loads(path.read_text())


def all_tasks() -> list[str]:
    """The 50 v3 tasks (MT50), sorted."""
    return sorted(lerobot_table()["TASK_DESCRIPTIONS"])


def instruction(task: str) -> str:
    """The task's language instruction, LeRobot's `TASK_DESCRIPTIONS[task]`."""
    return lerobot_table()["TASK_DESCRIPTIONS"][check_task(task)]


def difficulty(task: str) -> str:
    """The task's difficulty group (easy, medium, hard, very_hard), LeRobot's `DIFFICULTY_TO_TASKS`."""
    task = check_task(task)
    for group, tasks in lerobot_table()["DIFFICULTY_TO_TASKS"].items():
        if task in tasks:
            return group
    raise ValueError(f"Meta-World task {task!r} is in no difficulty group of LeRobot's table")


def expert_class_name(task: str) -> str:
    """The class name of the task's scripted expert in `metaworld.policies` (LeRobot's `TASK_POLICY_MAPPING`)."""
    return lerobot_table()["TASK_POLICY_MAPPING"][check_task(task)]


def check_task(task: str) -> str:
    """A task name (with or without the -v3 suffix) -> its v3 name; an unknown one is a one-line error."""
    name = task.strip() if task.strip().endswith("-v3") else f"{task.strip()}-v3"
    known = lerobot_table()["TASK_DESCRIPTIONS"]
    if name not in known:
        from vlablocks.core.registry import closest

        guess = closest(name, list(known))
        hint = f"did you mean {guess!r}? " if guess else ""
        raise ValueError(
            f"unknown Meta-World task {task!r}; {hint}use a v3 task name, mt10, mt50, a difficulty group "
            f"({', '.join(DIFFICULTIES)}) or a comma-separated list of them"
        )
    return name


def resolve_tasks(spec: str) -> list[str]:
    """ "mt10" | "mt50" | a difficulty group | a comma-separated list of these and task names -> task names, in order,
    each once."""
    tasks: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        lowered = part.lower()
        if lowered == "mt10":
            tasks += MT10
        elif lowered == "mt50":
            tasks += all_tasks()
        elif lowered in DIFFICULTIES:
            tasks += lerobot_table()["DIFFICULTY_TO_TASKS"][lowered]
        else:
            tasks.append(check_task(part))
    if not tasks:
        raise ValueError(f"no Meta-World task in {spec!r}; use mt10, mt50, a difficulty group or task names")
    return list(dict.fromkeys(tasks))


def next_task(task: str, tasks: list[str]) -> str:
    """The task after `task` in `tasks`, cyclically (the wrong-instruction control: another task of the same set)."""
    if len(tasks) < 2:
        tasks = MT10 if task in MT10 else all_tasks()
    ordered = list(tasks)
    return ordered[(ordered.index(task) + 1) % len(ordered)] if task in ordered else ordered[0]
