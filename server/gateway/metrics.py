"""Prometheus metrics of the gateway: calls, outcomes, latency, bytes, calls in flight.

Every front (dcf.v1 Call and Invoke, Open Inference ModelInfer) passes through
``Gateway.call``, which records each call here once. The metrics live in their own
registry, owned by the gateway object, and are served over HTTP on the metrics port.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dcf_requests",
            "Calls by function and final gRPC status code.",
            ["function", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dcf_request_duration_seconds",
            "Time from a call's start to its end.",
            ["function"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.bytes_in = Counter(
            "dcf_input_bytes",
            "Input bytes received from callers.",
            ["function"],
            registry=self.registry,
        )
        self.bytes_out = Counter(
            "dcf_output_bytes",
            "Output bytes sent to callers.",
            ["function"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "dcf_calls_in_flight",
            "Calls being served now.",
            ["function"],
            registry=self.registry,
        )
        self.token_refusals = Counter(
            "dcf_token_refusals",
            "Calls refused for a missing or wrong bearer token.",
            ["code"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "dcf_queue_depth",
            "Calls waiting for a free slot of their function.",
            ["function"],
            registry=self.registry,
        )
        self.retries = Counter(
            "dcf_retries",
            "Calls sent once more to another replica after an UNAVAILABLE before any answer.",
            ["function"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "dcf_queue_wait_seconds",
            "Time a call waited for a free slot (0 when none waited).",
            ["function"],
            buckets=(0.0, *LATENCY_BUCKETS),
            registry=self.registry,
        )

    @contextlib.contextmanager
    def running(self, function: str) -> Iterator[None]:
        gauge = self.in_flight.labels(function)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def finished(self, function: str, code: str, seconds: float) -> None:
        self.requests.labels(function, code).inc()
        self.latency.labels(function).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP on a background thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server.server_address[1]
