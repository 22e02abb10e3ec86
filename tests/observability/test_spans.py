"""The tracing module and the handlers' steps in this process: configuration, context
passed on, steps become spans and step-time samples, and nothing at all when off.

Spans go to the SDK's in-memory exporter; the worker's real metrics registry and
call watch (server/worker/metrics.py) record the steps, as in a worker.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
import yaml
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from handlers import steps
from handlers.base import Params, Request
from protos.dcf.v1 import dcf_pb2_grpc
from server.telemetry import tracing
from server.testing import ROOT, free_port, wait_serving
from server.worker.metrics import WorkerMetrics
from tests.support import call_requests, collect_call, metric
from tests.support.media import video


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def tracer_of(exporter: InMemorySpanExporter) -> tracing.Tracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracing.Tracing(provider.get_tracer("test"))


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


# The worker's gauges, for a WorkerMetrics of no worker.
NO_COUNTS = {"running": lambda: 0.0, "waiting": lambda: 0.0, "uploading": lambda: 0.0}


def scrape(metrics: WorkerMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


# --- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_the_standard_variables_ask(
    environ: dict[str, str], on: bool
) -> None:
    assert tracing.requested(environ) is on


def test_an_exporter_dcf_does_not_have_is_refused_in_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        assert not tracing.configure("dcf-test", {"OTEL_TRACES_EXPORTER": "zipkin"})
        assert not tracing.configure(
            "dcf-test",
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        )
    messages = [r.getMessage() for r in caplog.records]
    assert any("unknown exporter 'zipkin'" in m for m in messages), messages
    assert any("over gRPC only" in m for m in messages), messages
    assert tracing.server_span("x", (), "id") is tracing.NOOP  # and tracing stays off


def test_service_names_tell_the_processes_apart() -> None:
    assert tracing.service_name("worker", "ssd") == "dcf-worker-ssd"
    assert tracing.service_name("gateway") == "dcf-gateway"
    assert tracing.service_name("http") == "dcf-http"
    assert tracing.service_name(None) == "dcf-gateway"  # the embedded default: gateway and HTTP


# --- spans -------------------------------------------------------------------------------


def test_off_every_span_is_the_one_that_does_nothing() -> None:
    span = tracing.NOOP
    assert span.child("a", "client", attempt=1) is span
    assert span.headers() == [] and span.trace_id == ""
    span.record("step", 1, 2, {}, ValueError("x"))
    span.set(function="f")
    span.event("e")
    span.end("INTERNAL", RuntimeError("x"))


def test_a_callers_trace_is_continued_and_passed_on(exported: InMemorySpanExporter) -> None:
    traced = tracer_of(exported)
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    metadata = (("traceparent", f"00-{trace_id}-{parent}-01"), ("x-request-id", "r1"))
    front = traced.server("dcf.v1.Gateway/Call", metadata, "r1")
    relay = front.child("relay f", "client", attempt=2, retry=True, **{"server.address": "w:1"})
    worker = traced.server("worker f", relay.headers(), "r1")  # the next process's span
    assert front.trace_id == relay.trace_id == worker.trace_id == trace_id
    worker.record("decode", 1_000, 5_000, {"frame": 3}, ValueError("bad"))
    worker.end("INVALID_ARGUMENT")
    relay.end("UNAVAILABLE")
    front.end("OK")
    front.end("INTERNAL")  # once ended, a span stays as it ended

    spans = {span.name: span for span in exported.get_finished_spans()}
    assert set(spans) == {"dcf.v1.Gateway/Call", "relay f", "worker f", "decode"}
    call, attempt, work, decode = (
        spans[n] for n in ("dcf.v1.Gateway/Call", "relay f", "worker f", "decode")
    )
    assert call.parent is not None and format(call.parent.span_id, "016x") == parent
    assert attempt.parent is not None and attempt.parent.span_id == call.context.span_id
    assert work.parent is not None and work.parent.span_id == attempt.context.span_id
    assert decode.parent is not None and decode.parent.span_id == work.context.span_id
    assert (decode.start_time, decode.end_time) == (1_000, 5_000)
    assert dict(attempt.attributes or {}) == {
        "dcf.attempt": 2,
        "dcf.retry": True,
        "server.address": "w:1",
        "dcf.status": "UNAVAILABLE",
    }
    assert dict(call.attributes or {}) == {"dcf.request_id": "r1", "dcf.status": "OK"}
    assert call.status.status_code.name == "UNSET"
    assert attempt.status.status_code.name == "ERROR"  # the server's fault
    assert work.status.status_code.name == "UNSET"  # the caller's: not an error of ours
    assert decode.status.status_code.name == "ERROR"


def test_a_call_with_no_trace_starts_one(exported: InMemorySpanExporter) -> None:
    span = tracer_of(exported).server("f", None, "r2")
    span.end()
    (finished,) = exported.get_finished_spans()
    assert finished.parent is None and span.trace_id == format(finished.context.trace_id, "032x")


# --- steps -------------------------------------------------------------------------------


def test_steps_outside_a_worker_do_nothing_and_pass_values_through() -> None:
    with steps.step("decode"):
        pass
    with steps.entered("decode", lambda: open(os.devnull)) as file:
        assert not file.closed
    assert file.closed
    assert steps.bound("inference", lambda a, b: a + b)(2, 3) == 5
    with steps.tally("read") as read:
        assert list(read.each([1, 2, 3])) == [1, 2, 3]
    steps.event("frame", number=1)


def handler_with_steps(request: Request) -> list[str]:
    """Every kind of step a handler may mark, the way handlers mark them."""
    done = []
    with steps.step("decode", size=7):
        done.append("decode")
    with steps.entered("open", lambda: open(os.devnull)) as file:
        done.append(f"open {file.closed}")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        done.append(pool.submit(steps.bound("inference", threading.current_thread)).result().name)
    with steps.tally("read") as read, steps.tally("stft") as stft:
        for chunk in read.each(request.chunks):
            with stft.timing():
                done.append(chunk.decode())
    steps.event("frame", number=1)
    try:
        with steps.step("encode"):
            raise ValueError("a failed step is told too")
    except ValueError:
        done.append("failed")
    return done


def test_a_handlers_steps_become_spans_and_step_time_samples(
    exported: InMemorySpanExporter,
) -> None:
    metrics = WorkerMetrics("f", NO_COUNTS)
    worker = tracer_of(exported).server("worker f", (), "r3")
    watch = metrics.call(worker)
    run = watch.running(handler_with_steps)
    request = Request(Params(), iter([b"a", b"b"]))
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="handler") as pool:
        done = pool.submit(run, request).result()
    watch.ended("OK")
    assert done[0] == "decode" and done[1] == "open False" and done[-1] == "failed"
    assert done[2] != threading.current_thread().name and done[3:5] == ["a", "b"]

    spans = by_name(exported)
    (handler,) = spans["handler f"]
    assert handler.parent is not None and handler.parent.span_id == worker_span_id(spans)
    for name in ("decode", "open", "inference", "read", "stft", "encode"):
        (span,) = spans[name]
        assert span.parent is not None and span.parent.span_id == handler.context.span_id, name
    assert dict(spans["decode"][0].attributes or {}) == {"dcf.size": 7}
    assert spans["read"][0].attributes["dcf.pieces"] == 3  # two chunks, then the end
    assert spans["stft"][0].attributes["dcf.pieces"] == 2
    assert spans["encode"][0].status.status_code.name == "ERROR"
    assert [event.name for event in handler.events] == ["frame"]

    text = scrape(metrics)
    for name in ("decode", "open", "inference", "read", "stft", "encode"):
        assert metric(text, "dcf_worker_step_seconds_count", function="f", step=name) == 1, name
    assert metric(text, "dcf_worker_handler_seconds_count", function="f") == 1
    assert metric(text, "dcf_worker_calls_total", function="f", code="OK") == 1


def test_a_wait_is_a_span_only_when_there_was_one(exported: InMemorySpanExporter) -> None:
    metrics = WorkerMetrics("f", NO_COUNTS)
    watch = metrics.call(tracer_of(exported).server("worker f", (), "r5"))
    watch.waited("upload", 0.0)
    watch.waited("slot", 0.25)
    watch.ended("CANCELLED")
    spans = by_name(exported)
    assert set(spans) == {"worker f", "wait for slot"}
    (wait,) = spans["wait for slot"]
    assert wait.end_time is not None and wait.start_time is not None
    assert wait.end_time - wait.start_time == 250_000_000
    text = scrape(metrics)
    for resource in ("upload", "slot"):
        assert metric(text, "dcf_worker_wait_seconds_count", function="f", resource=resource) == 1
    # Cancelled once it had its slot: in its handler's stage.
    assert metric(text, "dcf_worker_cancelled_total", function="f", stage="handler") == 1


def worker_span_id(spans: dict[str, list[ReadableSpan]]) -> int:
    (worker,) = spans["worker f"]
    return worker.context.span_id


def test_ssd_video_tells_each_frame_decoded_resized_and_inferred(
    exported: InMemorySpanExporter,
) -> None:
    from handlers import ssd_video

    function = ssd_video.create({"interpreters": 1, "threads": 1, "lone_threads": 1})
    try:
        metrics = WorkerMetrics("ssd-video", NO_COUNTS)
        watch = metrics.call(tracer_of(exported).server("worker ssd-video", (), "r4"))
        clip = video(frames=4)
        request = Request(Params({"max_frames": "3"}), iter([clip]))
        parts = watch.running(lambda: list(function.handle(request).parts))()
    finally:
        function.close()
    assert len(parts) == 4  # three frames and the summary
    spans = by_name(exported)
    assert set(spans) == {"handler ssd-video", "spool", "decode", "resize", "inference"}
    for step in ("decode", "resize", "inference"):
        frames = sorted(int(str((span.attributes or {})["dcf.frame"])) for span in spans[step])
        assert frames == [1, 2, 3], step
    text = scrape(metrics)
    inferred = metric(text, "dcf_worker_step_seconds_count", function="ssd-video", step="inference")
    assert inferred == 3


# --- without the SDK -----------------------------------------------------------------------


def test_dcf_runs_without_opentelemetry_installed(tmp_path: Path) -> None:
    # A package that refuses to import, found before the real one: as if never installed.
    blocker = tmp_path / "blocked" / "opentelemetry"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('opentelemetry is not installed')\n")
    port = free_port()
    config = tmp_path / "registry.yaml"
    registry = {"functions": {"hello-dcf": {"handler": "handlers.hello"}}}
    config.write_text(yaml.safe_dump(registry))
    log = tmp_path / "worker.log"
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(blocker.parent), str(ROOT)]),
        "OTEL_TRACES_EXPORTER": "otlp",  # asked for, and cannot be had
    }
    command = ["worker", "hello-dcf", "--config", str(config), "--port", str(port)]
    process = subprocess.Popen(
        [sys.executable, "-m", "server", *command],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=environment,
    )
    try:
        wait_serving(f"127.0.0.1:{port}", timeout=60)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            responses = dcf_pb2_grpc.WorkerStub(channel).Call(
                call_requests("hello-dcf", [b"Hi, ", b"untraced"]), timeout=30
            )
            assert collect_call(responses)[1] == b"Hi, untraced"
    finally:
        process.terminate()
        process.wait(30)
    text = log.read_text()
    assert "the OpenTelemetry SDK is missing (pip install 'dcf[otel]')" in text, text
    assert "tracing is off" in text and "Traceback" not in text
