"""The log lines' format: text (the default, read by people and by the tests) or JSON.

``log_format: json`` (``DCF_LOG_FORMAT=json``) writes one JSON object a line, which
log stacks (Loki, Elasticsearch, Cloud Logging) take without parsing rules: ``time``
(UTC, ISO 8601), ``level``, ``role`` (the process's: gateway, worker, http or
embedded), ``logger``, ``pid``, ``message``, and, on a call's line, ``function``,
``request_id``, ``trace_id`` (when traced), ``status``, ``duration_ms``, ``bytes_in``
and ``bytes_out``; a line logged with an exception has it, traceback and all, in
``exception``. A call's line passes its fields with ``extra=call_fields(...)``; the
text format ignores them, so its lines stay as they were.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
FORMATS = ("text", "json")
CALL_FIELDS = "dcf_call"  # the LogRecord attribute a call's fields ride in


def call_fields(
    *,
    request_id: str,
    function: str,
    status: str,
    seconds: float,
    bytes_in: int | None = None,
    bytes_out: int | None = None,
    trace_id: str = "",
) -> dict[str, dict[str, Any]]:
    """``extra=`` for a call's log line: its fields, for the JSON format."""
    fields: dict[str, Any] = {
        "function": function,
        "request_id": request_id,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
    }
    if bytes_in is not None:
        fields["bytes_in"] = bytes_in
    if bytes_out is not None:
        fields["bytes_out"] = bytes_out
    if trace_id:
        fields["trace_id"] = trace_id
    return {CALL_FIELDS: fields}


class JsonFormatter(logging.Formatter):
    """One JSON object a line; see the module's docstring for its fields."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "role": self.role,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, CALL_FIELDS, None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class _Handler(logging.StreamHandler):
    """dcf's own handler on the root logger, so that configuring again replaces its format."""


def configure(level: str, log_format: str, role: str) -> None:
    """Log at ``level`` to standard error in ``log_format`` ("text" or "json").

    Called once with what the command line and environment say, before the settings
    are read (reading them may log), and again with the settings: the second call
    changes the format and level of the same handler.
    """
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _Handler)), None)
    if handler is None:
        handler = _Handler(sys.stderr)
        root.addHandler(handler)
    if log_format.strip().lower() == "json":
        handler.setFormatter(JsonFormatter(role))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root.setLevel(level.upper())
