"""The side-by-side table of suite evaluations (`vlablocks eval --tasks ...` summary.json files), one row per policy,
the mean and range over its training seeds; optionally written into a markdown file between two markers.

    python -m vlablocks.tools.metaworld.compare \
        --run "QwenOFT=runs/metaworld/eval_qwen_oft_s0,runs/metaworld/eval_qwen_oft_s1" \
        --run "ACT (LeRobot)=runs/metaworld/eval_lerobot_act_s0" --write docs/metaworld.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

START, END = "<!-- comparison:start -->", "<!-- comparison:end -->"
GROUPS = ("easy", "medium", "hard", "very_hard")


def load_summary(folder: str | Path) -> dict:
    path = Path(folder) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: pass the --out folder of a `vlablocks eval --tasks` run")
    summary = json.loads(path.read_text())
    if "tasks" not in summary or "overall" not in summary:
        raise ValueError(f"{path} is not a suite summary (no tasks/overall): run eval with --tasks")
    return summary


def spread(rates: list[float]) -> str:
    """Rates of the seeds -> "69% (65-72)", or "69%" for one seed."""
    mean = sum(rates) / len(rates)
    if len(rates) == 1:
        return f"{mean:.0%}"
    return f"{mean:.0%} ({min(rates) * 100:.0f}-{max(rates) * 100:.0f})"


def policy_row(name: str, summaries: list[dict]) -> list[str]:
    """One policy's seeds -> its cells: seeds, episodes per seed, overall, control, per group."""
    overall = [s["overall"]["success_rate"] for s in summaries]
    controls = [s["wrong_instruction"]["overall"]["success_rate"] for s in summaries if "wrong_instruction" in s]
    cells = [name, str(len(summaries)), str(summaries[0]["overall"]["episodes"]), spread(overall)]
    cells.append(spread(controls) if controls else "-")
    for group in GROUPS:
        rates = [s["groups"][group]["success_rate"] for s in summaries if group in s["groups"]]
        cells.append(spread(rates) if rates else "-")
    return cells


def comparison_table(runs: dict[str, list[dict]]) -> str:
    """{policy name: its seeds' suite summaries} -> a markdown table."""
    head = ["policy", "seeds", "episodes per seed", "success, mean (range)", "wrong instruction"]
    head += [f"{group}" for group in GROUPS]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(policy_row(name, summaries)) + " |" for name, summaries in runs.items()]
    return "\n".join(lines)


def write_between_markers(path: Path, table: str) -> None:
    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path} has no {START} ... {END} markers to write the table between")
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    path.write_text(f"{before}{START}\n{table}\n{END}{after}")


def parse_run(spec: str) -> tuple[str, list[str]]:
    name, sep, folders = spec.partition("=")
    if not sep or not name.strip() or not folders.strip():
        raise ValueError(f"--run must be NAME=DIR[,DIR...] (one eval --out folder per seed), got {spec!r}")
    return name.strip(), [f.strip() for f in folders.split(",") if f.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=DIR[,DIR...]: a policy's eval folders")
    parser.add_argument("--write", help="markdown file to write the table into, between the comparison markers")
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.run:
        name, folders = parse_run(spec)
        runs[name] = [load_summary(folder) for folder in folders]
    table = comparison_table(runs)
    print(table)
    if args.write:
        write_between_markers(Path(args.write), table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
