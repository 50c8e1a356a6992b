"""The project's own log lines (`logging.getLogger("vlablocks...")`) on stderr at INFO; other libraries' stay quiet."""

from __future__ import annotations

import logging


def show_project_logs() -> None:
    """Idempotent: the `vlablocks` logger gets one stderr handler (DataLoader workers forked later inherit it)."""
    project = logging.getLogger("vlablocks")
    if not project.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        project.addHandler(handler)
        project.setLevel(logging.INFO)
