"""A worker's Prometheus metrics, and what one call tells them and its trace.

Every worker may serve metrics on a port of its own (its registry entry's
``metrics_port``, or ``DCF_WORKER_METRICS_PORT``; none by default), so that an
autoscaler sees each replica's load: a gateway balancing over many replicas knows
only their sum.

=================================  ======================================================
``dcf_worker_calls_in_flight``     calls holding a slot: their handler runs
``dcf_worker_queue_depth``         calls waiting for a slot, or for a place to upload
``dcf_worker_uploads_in_progress`` calls receiving their input whole (``max_uploads``)
``dcf_worker_wait_seconds``        time waited, by ``resource``: ``slot``, ``upload``
``dcf_worker_handler_seconds``     time a call's handler thread worked on it
``dcf_worker_step_seconds``        time of each handler step (handlers/steps.py)
``dcf_worker_calls_total``         calls by final status code
``dcf_worker_cancelled_total``     calls cancelled (caller gone, deadline), by ``stage``:
                                   ``queue``, ``upload`` or ``handler``
=================================  ======================================================

Every sample is labelled with the worker's ``function``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from handlers import steps
from server.telemetry.tracing import Span

T = TypeVar("T")
log = logging.getLogger(__name__)

# Steps last from a millisecond (a resize) to minutes (a long video).
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
WAIT_BUCKETS = (0.0, *STEP_BUCKETS)


class WorkerMetrics:
    """The metrics of the worker of ``function``, in a registry of their own.

    The gauges are read from ``counts`` at each scrape: names ``running``,
    ``waiting`` and ``uploading``, each a callable giving the count now.
    """

    def __init__(self, function: str, counts: Mapping[str, Callable[[], float]]) -> None:
        self.function = function
        self.registry = CollectorRegistry()
        for name, what, count in (
            ("dcf_worker_calls_in_flight", "Calls holding a slot: their handler runs.", "running"),
            (
                "dcf_worker_queue_depth",
                "Calls waiting for a slot, or for a place to upload their input.",
                "waiting",
            ),
            (
                "dcf_worker_uploads_in_progress",
                "Calls receiving their input whole before they take a slot.",
                "uploading",
            ),
        ):
            gauge = Gauge(name, what, ["function"], registry=self.registry)
            gauge.labels(function).set_function(counts[count])
        self.wait = Histogram(
            "dcf_worker_wait_seconds",
            "Time a call waited for a resource: a slot, or a place to upload.",
            ["function", "resource"],
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.handler = Histogram(
            "dcf_worker_handler_seconds",
            "Time a call's handler thread worked on it, its reading and writing included.",
            ["function"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.steps = Histogram(
            "dcf_worker_step_seconds",
            "Time of each step of a handler (decode, inference, encode...).",
            ["function", "step"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.calls = Counter(
            "dcf_worker_calls",
            "Calls by final gRPC status code.",
            ["function", "code"],
            registry=self.registry,
        )
        self.cancelled = Counter(
            "dcf_worker_cancelled",
            "Calls cancelled (the caller went away, or its deadline passed), by where they were.",
            ["function", "stage"],
            registry=self.registry,
        )

        # Each label set's child, looked up once: labels() costs more than an observation.
        self._children: dict[tuple[int, str], Any] = {}

    def child(self, metric: Histogram | Counter, value: str = "") -> Any:
        """``metric``'s child for this function (and ``value``, its second label)."""
        key = (id(metric), value)
        child = self._children.get(key)
        if child is None:
            labels = (self.function, value) if value else (self.function,)
            child = self._children[key] = metric.labels(*labels)
        return child

    def call(self, span: Span) -> CallWatch:
        """What one call tells these metrics and its ``span``."""
        return CallWatch(self, span)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP on a background thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server.server_address[1]

    def start(self, host: str, port: int) -> bool:
        """``serve``, saying where in the log; False, logged, if the port cannot be had."""
        try:
            bound = self.serve(host, port)
        except OSError as exc:
            log.error("worker %s: cannot serve metrics on port %d: %s", self.function, port, exc)
            return False
        log.info("worker %s metrics on http://%s:%d/metrics", self.function, host, bound)
        return True


class CallWatch:
    """One call at the worker: its waits, its handler's steps, how it ended.

    ``stage`` is where the call is (``queue``, ``upload``, ``handler``), for the
    count of cancelled calls.
    """

    def __init__(self, metrics: WorkerMetrics, span: Span) -> None:
        self._metrics = metrics
        self.span = span
        self.stage = "queue"

    def waited(self, resource: str, seconds: float) -> None:
        """A wait for ``resource`` ("slot", "upload") ended now, after ``seconds``: a span
        of the trace when there was a wait at all (0: the resource was free)."""
        self._metrics.child(self._metrics.wait, resource).observe(seconds)
        if seconds:
            end = time.time_ns()
            self.span.record(f"wait for {resource}", end - int(seconds * 1e9), end, {})
        self.stage = "upload" if resource == "upload" else "handler"

    def uploaded(self, start_ns: int, size: int) -> None:
        """The whole input arrived, ``size`` bytes received since ``start_ns``."""
        self.span.record("upload", start_ns, time.time_ns(), {"bytes": size})
        self.stage = "queue"

    def running(self, work: Callable[..., T]) -> Callable[..., T]:
        """``work`` (the handler's thread body) timed, traced, and recording its steps."""
        metrics = self._metrics
        span = self.span

        def run(*args: object) -> T:
            handler = span.child(f"handler {metrics.function}")
            recorder = _StepRecorder(metrics, handler)
            started = time.monotonic()
            try:
                with steps.recording(recorder):
                    return work(*args)
            finally:
                metrics.child(metrics.handler).observe(time.monotonic() - started)
                handler.end()

        return run

    def ended(self, outcome: str, error: BaseException | None = None) -> None:
        """The call ended with status ``outcome``: counted, and its span ended."""
        self._metrics.child(self._metrics.calls, outcome).inc()
        if outcome == "CANCELLED":
            self._metrics.child(self._metrics.cancelled, self.stage).inc()
        self.span.end(outcome, error)


class _StepRecorder:
    """A handler's steps (handlers/steps.py) as step-time samples and child spans."""

    def __init__(self, metrics: WorkerMetrics, span: Span) -> None:
        self._metrics = metrics
        self._span = span

    def record(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        busy_seconds: float,
        attributes: Mapping[str, steps.Attribute],
        error: BaseException | None,
    ) -> None:
        self._metrics.child(self._metrics.steps, name).observe(busy_seconds)
        if busy_seconds * 1e9 < end_ns - start_ns - 1:  # a tally: say how long it worked
            attributes = {**attributes, "busy_ms": round(busy_seconds * 1000, 3)}
        self._span.record(name, start_ns, end_ns, attributes, error)

    def event(self, name: str, attributes: Mapping[str, steps.Attribute]) -> None:
        self._span.event(name, attributes)
