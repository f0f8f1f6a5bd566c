"""structlog set-up: JSON lines to a file for machines, concise console lines for people."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def configure_logging(json_path: str | Path | None = None, *, console_level: str = "info") -> None:
    """Send every event as a JSON line to `json_path` (if given) and those at `console_level` or
    above to stderr. Context bound with `structlog.contextvars` (episode, service, worker) is
    added to every event."""
    console_min = _LEVELS[console_level]
    json_file: Any = open(json_path, "a", buffering=1) if json_path else None  # noqa: SIM115
    console = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    to_json = structlog.processors.JSONRenderer()

    def emit(logger: Any, method: str, event: dict[str, Any]) -> str:
        level = _LEVELS.get(method, 20)
        if json_file is not None:
            json_file.write(to_json(logger, method, dict(event)) + "\n")
        if level >= console_min:
            sys.stderr.write(console(logger, method, dict(event)) + "\n")
        raise structlog.DropEvent

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            emit,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if json_file is not None else console_min
        ),
        cache_logger_on_first_use=False,
    )


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file that another process appends to (metrics, evaluations);
    a torn last line (its writer was killed mid-write) is skipped; a missing file is empty."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
