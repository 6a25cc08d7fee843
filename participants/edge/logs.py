"""Log lines for people or for machines: `--log-format json` gives one JSON object per line.

Each object has the time, level, logger and message, and the saga it is
about where there is one: `saga_id`, `saga_type`, `step`, `attempt`. The
runtime says which saga it is working on with `about(...)` (a context
variable, so concurrent sagas do not mix); a log call can also pass them in
`extra=`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from contextvars import ContextVar

FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"
FIELDS = ("saga_id", "saga_type", "step", "attempt")

# (saga_id, saga_type, step, attempt) of the saga this task is working on.
_saga: ContextVar[tuple[str, str | None, str | None, int | None] | None] = ContextVar("saga", default=None)


# Only JSON lines show the saga; text lines leave the hot path alone.
structured = False


def about(saga_id: str, saga_type: str | None = None, step: str | None = None, attempt: int | None = None) -> None:
    """Name the saga this task is working on, for the log lines that follow."""
    if structured:
        _saga.set((saga_id, saga_type, step, attempt))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        saga = _saga.get()
        for index, name in enumerate(FIELDS):
            value = getattr(record, name, None)
            if value is None and saga is not None:
                value = saga[index]
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(level: str, log_format: str = "text") -> None:
    """Set up the root logger: `text` for people, `json` for machines."""
    global structured
    structured = log_format == "json"
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
