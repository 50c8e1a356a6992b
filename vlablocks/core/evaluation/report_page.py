"""One self-contained HTML page of a suite evaluation (suite.py's summary): the protocol, the per-task table (success
with its 95% CI, the wrong-instruction control, one success and one failure video), the difficulty table and the
overall figure. The videos are the GIFs `evaluate` wrote, embedded as data URIs: the page is one file to open or
send, with nothing beside it.

    path = write_report_page(summary, out_dir / "report.html", title="Meta-World MT10: my checkpoint")
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 12px 0 24px; }
th, td { border: 1px solid #bbb; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.overall { font-size: 1.2em; font-weight: bold; }
img { max-width: 200px; }
"""


def percent(rate: float) -> str:
    return f"{rate:.1%}"


def ci_text(row: dict) -> str:
    low, high = row["ci95"]
    return f"{low:.1%} - {high:.1%}"


def embed_gif(path: str | Path | None, alt: str) -> str:
    """A GIF file -> an <img> with the file inside as a data URI; no file -> a dash."""
    if not path or not Path(path).is_file():
        return "-"
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/gif;base64,{data}">'


def video_of(row: dict, outcome: str) -> str | None:
    """The path of the task's `outcome` ("success" / "failure") GIF among its saved videos, if any."""
    return next((v for v in row.get("videos", []) if Path(v).stem.endswith(outcome)), None)


def task_table(summary: dict) -> str:
    control = summary.get("wrong_instruction")
    head = ["task", "group", "instruction", "success", "95% CI", "successes / episodes"]
    head += ["wrong instruction"] if control else []
    head += ["success video", "failure video"]
    rows = []
    for task, row in summary["tasks"].items():
        cells = [
            html.escape(task),
            html.escape(row["group"]),
            html.escape(row.get("instruction", "")),
            f'<td class="num">{percent(row["success_rate"])}',
            f'<td class="num">{ci_text(row)}',
            f'<td class="num">{row["successes"]} / {row["episodes"]}',
        ]
        if control:
            cells.append(f'<td class="num">{percent(control["tasks"][task]["success_rate"])}')
        cells += [
            embed_gif(video_of(row, "success"), f"{task} success"),
            embed_gif(video_of(row, "failure"), f"{task} failure"),
        ]
        rows.append("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}" for c in cells) + "</tr>")
    return _table("per-task", head, rows)


def group_table(summary: dict) -> str:
    control = summary.get("wrong_instruction")
    head = ["difficulty", "tasks", "success", "95% CI", "successes / episodes"] + (
        ["wrong instruction"] if control else []
    )
    rows = []
    for group, row in summary["groups"].items():
        cells = [
            f"<td>{html.escape(group)}",
            f'<td class="num">{len(row["tasks"])}',
            f'<td class="num">{percent(row["success_rate"])}',
            f'<td class="num">{ci_text(row)}',
            f'<td class="num">{row["successes"]} / {row["episodes"]}',
        ]
        if control:
            cells.append(f'<td class="num">{percent(control["groups"][group]["success_rate"])}')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return _table("difficulty", head, rows)


def _table(table_id: str, head: list[str], rows: list[str]) -> str:
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f'<table id="{table_id}"><tr>{header}</tr>\n' + "\n".join(rows) + "</table>"


def render_report(summary: dict, title: str) -> str:
    """The suite summary -> the page's HTML text."""
    protocol, overall = summary["protocol"], summary["overall"]
    control = summary.get("wrong_instruction")
    control_line = (
        f"<p>Wrong-instruction control (each task told another task's instruction): "
        f"{percent(control['overall']['success_rate'])} ({control['overall']['successes']} / "
        f"{control['overall']['episodes']}, 95% CI {ci_text(control['overall'])})</p>"
        if control
        else "<p>Wrong-instruction control: not run.</p>"
    )
    first, last = protocol["seeds"]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f'<p class="overall">Overall success {percent(overall["success_rate"])} '
            f"({overall['successes']} / {overall['episodes']}, 95% CI {ci_text(overall)})</p>",
            control_line,
            f"<p>{len(protocol['tasks'])} tasks, {protocol['episodes_per_task']} episodes per task on seeds "
            f"{first}..{last}, {protocol['open_loop_horizon']} actions played per policy call; env "
            f"{html.escape(str(protocol['env']))}. 95% CIs are Wilson intervals.</p>",
            "<h2>Per difficulty group</h2>",
            group_table(summary),
            "<h2>Per task</h2>",
            task_table(summary),
            "</body></html>",
        ]
    )


def write_report_page(summary: dict, path: Path, title: str) -> Path:
    """Writes the self-contained report page of `summary` to `path` -> path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(summary, title), encoding="utf-8")
    return path
