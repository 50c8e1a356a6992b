"""The project's own log lines (`logging.getLogger("vlablocks...")`) on stderr at INFO; other libraries' stay quiet."""

from __future__ import annotations

import logging


class _ProjectOrWarning(logging.Filter):
    """vlablocks' records at any level, everybody else's from WARNING up (what Python shows without a handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] == "vlablocks" or record.levelno >= logging.WARNING


def show_project_logs() -> None:
    """Idempotent: one stderr handler on the root logger (so a library's later `basicConfig` adds no second one and
    pytest's caplog still sees every record) and the `vlablocks` logger at INFO; DataLoader workers inherit both."""
    root = logging.getLogger()
    if not any(isinstance(f, _ProjectOrWarning) for handler in root.handlers for f in handler.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_ProjectOrWarning())
        root.addHandler(handler)
    logging.getLogger("vlablocks").setLevel(logging.INFO)
