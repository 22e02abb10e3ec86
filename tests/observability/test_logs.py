"""Log lines as JSON (``DCF_LOG_FORMAT=json``), one object a line, and text unchanged."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from typing import Any

import httpx
import pytest

from server.config import ConfigError, load_settings
from server.telemetry import logs
from tests.support.http import HELLO, SmallService, small_service

FUNCTIONS = {
    "hello-dcf": HELLO,
    "faulty": {"handler": "tests.support.fixture_handlers"},
}
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+\[\d+\]: ")


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The JSON lines of a service that served one good and one failing call, then stopped."""
    service: SmallService = small_service(
        tmp_path_factory.mktemp("json-logs"), FUNCTIONS, {"DCF_LOG_FORMAT": "json"}
    )
    try:
        good = httpx.post(
            f"{service.http_url}/v1/functions/hello-dcf",
            content=b"Hello, JSON!",
            headers={"x-request-id": "json-good"},
            timeout=30,
        )
        assert good.status_code == 200 and good.content == b"Hello, JSON!"
        bad = httpx.post(
            f"{service.http_url}/v1/functions/faulty",
            content=b"boom",
            headers={"x-request-id": "json-bad"},
            timeout=30,
        )
        assert bad.status_code == 500 and "a bug" not in bad.text  # the details stay in the log
    finally:
        assert service.stop() == 0
    lines = service.log.read_text().splitlines()
    # Every line Python's logging writes is JSON now: none in the text format is left.
    assert not [line for line in lines if TEXT_LINE.match(line)]
    return [json.loads(line) for line in lines if line.startswith("{")]


def call_lines(entries: list[dict[str, Any]], request_id: str) -> dict[str, dict[str, Any]]:
    """The call lines of ``request_id``, by the role that wrote them."""
    found = [e for e in entries if e.get("request_id") == request_id]
    by_role = {e["role"]: e for e in found}
    assert len(by_role) == len(found) == 2, found
    return by_role


def test_every_line_has_the_time_level_role_logger_and_pid(logged: list[dict[str, Any]]) -> None:
    assert len(logged) > 10
    for entry in logged:
        assert {"time", "level", "role", "logger", "pid", "message"} <= set(entry), entry
        assert datetime.fromisoformat(entry["time"]).utcoffset() is not None
        assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        assert entry["role"] in ("embedded", "worker") and isinstance(entry["pid"], int)
    assert any(e["message"].startswith("dcf gateway serving on") for e in logged)


def test_a_calls_lines_carry_its_fields(logged: list[dict[str, Any]]) -> None:
    lines = call_lines(logged, "json-good")
    gateway, worker = lines["embedded"], lines["worker"]
    assert gateway["logger"] == "server.gateway.core"
    assert gateway["message"].startswith("call json-good hello-dcf OK ")  # as the text says
    assert (gateway["function"], gateway["status"]) == ("hello-dcf", "OK")
    assert (gateway["bytes_in"], gateway["bytes_out"]) == (12, 12)
    assert worker["logger"] == "server.worker.servicer"
    assert (worker["function"], worker["status"], worker["bytes_out"]) == ("hello-dcf", "OK", 12)
    assert "bytes_in" not in worker  # streamed as it came: not counted by the worker
    for line in (gateway, worker):
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] > 0
        assert "trace_id" not in line  # tracing is off
    assert gateway["pid"] != worker["pid"]


def test_an_error_line_has_its_exception(logged: list[dict[str, Any]]) -> None:
    lines = call_lines(logged, "json-bad")
    assert lines["embedded"]["status"] == lines["worker"]["status"] == "INTERNAL"
    (fault,) = [e for e in logged if "exception" in e and e["role"] == "worker"]
    assert fault["level"] == "ERROR"
    assert fault["exception"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: a bug in the handler" in fault["exception"]


def test_text_stays_the_default_and_its_lines_unchanged() -> None:
    assert load_settings(environ={}).log_format == "text"
    assert load_settings(environ={"DCF_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="log_format: expected text or json"):
        load_settings(environ={"DCF_LOG_FORMAT": "xml"})
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        logs.configure("INFO", "text", "gateway")
        (mine,) = [h for h in root.handlers if h not in handlers]
        record = logging.getLogger("server.gateway.core").makeRecord(
            "server.gateway.core",
            logging.INFO,
            __file__,
            1,
            "call %s %s %s",
            ("r1", "hello-dcf", "OK"),
            None,
            extra=logs.call_fields(request_id="r1", function="hello-dcf", status="OK", seconds=1),
        )
        line = mine.format(record)
        ending = f"INFO server.gateway.core[{record.process}]: call r1 hello-dcf OK"
        assert TEXT_LINE.match(line) and line.endswith(ending), line
        logs.configure("INFO", "json", "gateway")  # configured again: the same handler
        assert [h for h in root.handlers if h not in handlers] == [mine]
        assert json.loads(mine.format(record))["duration_ms"] == 1000
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
