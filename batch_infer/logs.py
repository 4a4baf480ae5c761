"""Log lines: plain text for people, or one JSON object per line for Loki, ELK, Cloud Logging.

Every record carries the run id once the run has one (``RUN_ID``, set by the runner), so the
lines of one nightly run can be found among many.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys

RUN_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("run_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _RunIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = RUN_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "run_id"[, "exception"]}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "run_id": getattr(record, "run_id", None),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(level: int, log_format: str = "text") -> None:
    """Log to stderr at ``level`` in ``text`` or ``json``; replaces earlier handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RunIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S%z"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
