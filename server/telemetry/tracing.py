"""Traces of calls across dcf's processes, with OpenTelemetry, when asked for.

One trace per call: a span in the front that received it (HTTP, dcf.v1 Call or
Invoke, Open Inference's ModelInfer), a child for each attempt of the gateway's
relay (its number, the worker address, whether it is the retry), the worker's span
with the waits for an upload place and a slot, and the handler's span with its
steps (handlers/steps.py) inside. Context travels as W3C ``traceparent`` (and
``tracestate``) in gRPC metadata and HTTP headers, so a caller's own trace is
continued; each span carries the call's request id.

Off unless the standard variables ask for it: ``OTEL_TRACES_EXPORTER`` (``otlp``,
``console``; ``none`` is off) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, and not ``OTEL_SDK_DISABLED=true``. The SDK
reads the rest itself (sampler, endpoint, headers, batching, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_PROPAGATORS``). The SDK and its OTLP exporter
are an optional extra (``pip install dcf[otel]``): without them, or with tracing
off, every span is ``NOOP``, whose methods do nothing, so the call path pays a few
attribute lookups.

The tracer is configured once per process by ``configure`` (from ``main``, like
logging) and kept here; the spans a call makes are passed along explicitly rather
than made "current", since they cross async generators and threads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from handlers.steps import Attribute

log = logging.getLogger(__name__)

# gRPC status codes that are the server's fault: a span that ends with one is an error.
SERVER_FAULTS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
EXPORTER_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


class Span:
    """A span of a call's trace; this base class is the span of no trace, ``NOOP``."""

    trace_id = ""  # 32 hex digits, "" when not traced

    def child(self, name: str, kind: str = "internal", **attributes: Attribute) -> Span:
        """A span inside this one (``kind``: "internal", "client" or "server")."""
        return self

    def record(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        attributes: Mapping[str, Attribute],
        error: BaseException | None = None,
    ) -> None:
        """A finished piece of work inside this span, told after it ended."""

    def set(self, **attributes: Attribute) -> None:
        """Attributes learnt along the way (an outcome, a size)."""

    def event(self, name: str, attributes: Mapping[str, Attribute] | None = None) -> None:
        """A moment worth a mark (a retry, a frame done)."""

    def headers(self) -> list[tuple[str, str]]:
        """This span's context as gRPC metadata or HTTP headers (``traceparent``...)."""
        return []

    def end(self, status: str = "OK", error: BaseException | None = None) -> None:
        """End the span with a gRPC status code's name; safe to call more than once."""


NOOP = Span()


class _Traced(Span):
    """A recording OpenTelemetry span and the tracer that makes its children."""

    def __init__(self, tracer: Any, span: Any) -> None:
        from opentelemetry import trace

        self._tracer = tracer
        self._span = span
        self._context = trace.set_span_in_context(span)
        self._ended = False
        self.trace_id = format(span.get_span_context().trace_id, "032x")

    def child(self, name: str, kind: str = "internal", **attributes: Attribute) -> Span:
        span = self._tracer.start_span(
            name, context=self._context, kind=_kind(kind), attributes=_named(attributes)
        )
        return _Traced(self._tracer, span)

    def record(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        attributes: Mapping[str, Attribute],
        error: BaseException | None = None,
    ) -> None:
        span = self._tracer.start_span(
            name, context=self._context, attributes=_named(attributes), start_time=start_ns
        )
        if error is not None:
            _fail(span, type(error).__name__)
        span.end(end_time=end_ns)

    def set(self, **attributes: Attribute) -> None:
        self._span.set_attributes(_named(attributes))

    def event(self, name: str, attributes: Mapping[str, Attribute] | None = None) -> None:
        self._span.add_event(name, _named(attributes or {}))

    def headers(self) -> list[tuple[str, str]]:
        from opentelemetry import propagate

        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=self._context)
        return list(carrier.items())

    def end(self, status: str = "OK", error: BaseException | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        self._span.set_attribute("dcf.status", status)
        if status in SERVER_FAULTS:
            _fail(self._span, status)
        if error is not None and status in ("INTERNAL", "UNKNOWN"):
            self._span.record_exception(error)
        self._span.end()


class Tracing:
    """This process's tracer: spans that start a process's part of a trace.

    ``provider``: the SDK's TracerProvider behind ``tracer``, shut down (its last spans
    sent) when the process configures tracing anew.
    """

    def __init__(self, tracer: Any = None, provider: Any = None) -> None:
        self._tracer = tracer
        self.provider = provider

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def server(
        self,
        name: str,
        carrier: Iterable[tuple[str, str | bytes]] | Mapping[str, str] | None,
        request_id: str,
        **attributes: Attribute,
    ) -> Span:
        """A call's span in this process, continuing the trace ``carrier`` (gRPC
        metadata, HTTP headers) brings, if any."""
        if self._tracer is None:
            return NOOP
        from opentelemetry import propagate

        items = carrier.items() if isinstance(carrier, Mapping) else (carrier or ())
        headers = {key.lower(): value for key, value in items if isinstance(value, str)}
        span = self._tracer.start_span(
            name,
            context=propagate.extract(headers),
            kind=_kind("server"),
            attributes=_named({"request_id": request_id, **attributes}),
        )
        return _Traced(self._tracer, span)


class _Process:
    """The one Tracing of this process, set by ``configure``; off until then."""

    tracing = Tracing()


def configure(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """Trace this process's calls as ``service`` if the OTEL_* variables ask for it.

    Returns whether tracing is on. Refuses with a log line, and leaves tracing off,
    when the variables ask for it but the SDK is not installed, or for an exporter
    it does not have. ``environ`` decides whether and which exporter; the SDK reads
    its own settings (endpoint, headers, sampler, batching) from the process's
    environment, as it always does.
    """
    environ = os.environ if environ is None else environ
    if _Process.tracing.provider is not None:
        _Process.tracing.provider.shutdown()
    _Process.tracing = Tracing()
    if not requested(environ):
        return False
    try:
        provider = _sdk_provider(service, environ)
    except ImportError as exc:
        log.error(
            "tracing asked for by OTEL_* variables, but the OpenTelemetry SDK is missing "
            "(pip install 'dcf[otel]'): %s; tracing is off",
            exc,
        )
        return False
    except ValueError as exc:
        log.error("tracing: %s; tracing is off", exc)
        return False
    _Process.tracing = Tracing(provider.get_tracer("dcf"), provider)
    return True


def service_name(role: str | None, function: str = "") -> str:
    """A process's ``service.name`` unless OTEL_SERVICE_NAME gives one: ``dcf-gateway``
    (the embedded default's process too, which runs the HTTP front beside it),
    ``dcf-http``, ``dcf-worker-NAME``."""
    if role == "worker":
        return f"dcf-worker-{function}"
    return f"dcf-{role}" if role in ("gateway", "http") else "dcf-gateway"


def requested(environ: Mapping[str, str]) -> bool:
    """Whether the standard variables turn tracing on (see the module's docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    return any(environ.get(name, "").strip() for name in EXPORTER_VARIABLES)


def server_span(
    name: str,
    carrier: Iterable[tuple[str, str | bytes]] | Mapping[str, str] | None,
    request_id: str,
    **attributes: Attribute,
) -> Span:
    """A call's span in this process (``Tracing.server`` of the configured tracer)."""
    return _Process.tracing.server(name, carrier, request_id, **attributes)


def _sdk_provider(service: str, environ: Mapping[str, str]) -> Any:
    """The OpenTelemetry SDK's TracerProvider, exporting as the variables say."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = [
        name.strip()
        for name in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").lower().split(",")
        if name.strip() and name.strip() != "none"
    ]
    attributes: dict[str, str] = {"dcf.process": service}
    if not environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service
    processors = [BatchSpanProcessor(_exporter(name, environ)) for name in exporters]
    provider = TracerProvider(resource=Resource.create(attributes))
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console, none)")
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    )
    if protocol != "grpc":
        raise ValueError(
            f"OTLP protocol {protocol!r}: dcf exports OTLP over gRPC only (protocol grpc)"
        )
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _kind(kind: str) -> Any:
    from opentelemetry.trace import SpanKind

    return {"server": SpanKind.SERVER, "client": SpanKind.CLIENT}.get(kind, SpanKind.INTERNAL)


def _named(attributes: Mapping[str, Attribute]) -> dict[str, Attribute]:
    """dcf's attributes under ``dcf.``; those already namespaced (``server.address``) as given."""
    return {key if "." in key else f"dcf.{key}": value for key, value in attributes.items()}


def _fail(span: Any, description: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, description))
