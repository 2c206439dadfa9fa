"""How ftserve's processes log: one handler on the root logger, writing text or JSON lines to stderr.

Every record carries the ids bound where it was made: `request_id` inside an HTTP request (RequestId
middleware), `job_id` and `worker_id` while a worker works on a job. Called once by each entry point
(`ftserve serve`, `ftserve worker`); docs/observability.md lists the fields.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import IO, Any

from ftserve.config import Settings

_bound: ContextVar[dict[str, str]] = ContextVar("ftserve_log_fields", default={})  # replaced, never mutated

# What every LogRecord has; anything else on a record is a field passed in `extra` or bound. uvicorn passes
# `color_message`, the message again with terminal colour codes.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}
IDS = ("request_id", "job_id", "worker_id")

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error")
UVICORN_OPTIONS: dict[str, Any] = {"log_config": None, "access_log": False}
"""What `uvicorn.run` takes for its lines to go through `configure`'s handler: without them, uvicorn installs
its own handlers over it. Its access log stays off: ftserve's (api/metrics.py) has the route and request id."""


@contextmanager
def bind(**fields: str) -> Iterator[None]:
    """Add `fields` to every record logged inside the block, by this task or thread (not by threads it starts)."""
    token = _bound.set({**_bound.get(), **fields})
    try:
        yield
    finally:
        _bound.reset(token)


class BoundFields(logging.Filter):
    """Copies the bound ids onto each record as it reaches the handler, in the thread that logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _bound.get().items():
            record.__dict__.setdefault(key, value)
        return True


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the record's fields, and exc when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message request_id=... job_id=...`, for reading in a terminal: the ids, not every field."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        ids = "".join(f" {key}={getattr(record, key)}" for key in IDS if hasattr(record, key))
        return super().formatMessage(record) + ids


def configure(settings: Settings, stream: IO[str] | None = None) -> None:
    """Set up the root logger for a server or worker process (`stream`: stderr), replacing whatever handlers
    it had. uvicorn's loggers go through the same handler (given UVICORN_OPTIONS), and its access log is off."""
    out = logging.StreamHandler(stream or sys.stderr)
    out.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    out.addFilter(BoundFields())
    root = logging.getLogger()
    root.handlers = [out]
    root.setLevel(settings.log_level.upper())
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request's full URL at INFO, and webhook URLs often hold a token.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
