"""An OTLP trace receiver in the test's own process: what an OpenTelemetry Collector
would be told, kept as plain records to look at.

It implements the OTLP TraceService of the opentelemetry-proto package on a free
loopback port; dcf's processes export to it as to any collector
(``OTEL_EXPORTER_OTLP_ENDPOINT``).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from server.testing import free_port


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    name: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind
    service: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    status_code: int = 0  # Status.StatusCode: 0 unset, 1 ok, 2 error


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class _Service(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, store: Receiver) -> None:
        self._store = store

    def Export(  # noqa: N802 - the OTLP contract's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        spans = []
        for resource in request.resource_spans:
            resource_attributes = {a.key: _value(a.value) for a in resource.resource.attributes}
            service = str(resource_attributes.get("service.name", ""))
            for scope in resource.scope_spans:
                for span in scope.spans:
                    spans.append(
                        ReceivedSpan(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                            service=service,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status_code=span.status.code,
                        )
                    )
        self._store.add(spans)
        return trace_service_pb2.ExportTraceServiceResponse()


class Receiver:
    """The spans received so far; ``environment`` points a dcf process at it."""

    def __init__(self) -> None:
        self.port = free_port()
        self._spans: list[ReceivedSpan] = []
        self._changed = threading.Condition()
        self._server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Service(self), self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")

    def __enter__(self) -> Receiver:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(None)

    def environment(self) -> dict[str, str]:
        """OTEL_* variables that send every span here, promptly."""
        return {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }

    def add(self, spans: list[ReceivedSpan]) -> None:
        with self._changed:
            self._spans.extend(spans)
            self._changed.notify_all()

    def spans(self) -> list[ReceivedSpan]:
        with self._changed:
            return list(self._spans)

    def wait_for(
        self, done: Callable[[list[ReceivedSpan]], bool], what: str, timeout: float = 60.0
    ) -> list[ReceivedSpan]:
        """The spans received once ``done`` says they are all there."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(self._spans):
                left = deadline - time.monotonic()
                assert left > 0, f"{what}: not received within {timeout:g} s: {self._spans}"
                self._changed.wait(left)
            return list(self._spans)


def trace_of(spans: list[ReceivedSpan], trace_id: str) -> dict[str, ReceivedSpan]:
    """The spans of one trace, by name (each name once in the traces these tests make)."""
    mine = [s for s in spans if s.trace_id == trace_id]
    by_name = {s.name: s for s in mine}
    assert len(by_name) == len(mine), f"a name twice in {sorted(s.name for s in mine)}"
    return by_name


def tree(spans: list[ReceivedSpan]) -> str:
    """The spans of a trace as an indented tree with durations, children by start."""
    children: dict[str, list[ReceivedSpan]] = {}
    ids = {s.span_id for s in spans}
    for span in spans:
        children.setdefault(span.parent_id if span.parent_id in ids else "", []).append(span)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s.start_ns):
            took = (span.end_ns - span.start_ns) / 1e6
            lines.append(f"{'  ' * depth}{span.name}  {took:.2f} ms  [{span.service}]")
            walk(span.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)
