"""Worker metrics on a port of their own, relayed by the embedded gateway, and the
Grafana dashboard, whose every metric a real gateway or worker serves."""

from __future__ import annotations

import json
import queue
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from server.testing import REGISTRY, free_port
from tests.support import metric
from tests.support.http import SmallService, small_service, wait_for
from tests.support.media import photo

DASHBOARD = Path(__file__).resolve().parents[2] / "docker" / "grafana" / "dcf-dashboard.json"
SSD_STEPS = ("decode", "resize", "inference", "encode")


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"ssd": free_port(), "hello-dcf": free_port()}


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int]
) -> Iterator[SmallService]:
    ssd = dict(yaml.safe_load(REGISTRY.read_text())["functions"]["ssd"])
    ssd.pop("workers")
    functions = {
        "ssd": {**ssd, "metrics_port": ports["ssd"]},
        # One call at a time, so that a second one waits at the worker.
        "hello-dcf": {
            "handler": "handlers.hello",
            "max_concurrency": 1,
            "max_queue": 2,
            "metrics_port": ports["hello-dcf"],
        },
    }
    served = small_service(tmp_path_factory.mktemp("metrics"), functions)
    yield served
    served.stop()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def families(text: str) -> dict[str, str]:
    """Metric families and their types, as the exposition's TYPE lines give them."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def scrape_until(port: int, name: str, value: float, what: str, **labels: str) -> str:
    """The metrics at ``port`` once sample ``name`` with ``labels`` reads ``value``."""

    def reached() -> str | None:
        text = scrape(port)
        return text if metric(text, name, **labels) == value else None

    return str(wait_for(reached, what, timeout=60))


def worker_address(service: SmallService, name: str) -> str:
    registry = yaml.safe_load((service.log.parent / "registry.yaml").read_text())
    return str(registry["functions"][name]["workers"][0])


def test_an_ssd_workers_metrics_count_its_calls_waits_and_steps(
    service: SmallService, ports: dict[str, int]
) -> None:
    with grpc.insecure_channel(service.address) as channel:
        stub = dcf_pb2_grpc.GatewayStub(channel)
        request = dcf_pb2.InvokeRequest(function="ssd", input=photo())
        answers = [stub.Invoke(request, timeout=120).output for _ in range(2)]
    assert answers[0] == answers[1] and json.loads(answers[0])["detections"]

    text = scrape_until(
        ports["ssd"], "dcf_worker_handler_seconds_count", 2, "both handler runs", function="ssd"
    )
    assert metric(text, "dcf_worker_calls_total", function="ssd", code="OK") == 2
    for step in SSD_STEPS:
        assert metric(text, "dcf_worker_step_seconds_count", function="ssd", step=step) == 2, step
        assert metric(text, "dcf_worker_step_seconds_sum", function="ssd", step=step) > 0, step
    # A photo fits in one message: the gateway sends it whole (Worker.Invoke), so the
    # worker waits for a slot only, never for an upload.
    for resource, count in (("upload", 0), ("slot", 2)):
        waits = metric(text, "dcf_worker_wait_seconds_count", function="ssd", resource=resource)
        assert waits == count, resource
    for gauge in (
        "dcf_worker_calls_in_flight",
        "dcf_worker_queue_depth",
        "dcf_worker_uploads_in_progress",
    ):
        assert f'{gauge}{{function="ssd"}} 0.0' in text, gauge
    assert "process_" not in text and "python_" not in text  # the worker's own, and only those


def test_a_worker_counts_its_queue_calls_in_flight_and_cancelled_calls(
    service: SmallService, ports: dict[str, int]
) -> None:
    port, hello = ports["hello-dcf"], {"function": "hello-dcf"}

    def requests(chunks: queue.Queue[bytes | None]) -> Iterator[dcf_pb2.CallRequest]:
        yield dcf_pb2.CallRequest(header=dcf_pb2.CallHeader(function="hello-dcf"))
        while (chunk := chunks.get()) is not None:
            yield dcf_pb2.CallRequest(chunk=chunk)

    first: queue.Queue[bytes | None] = queue.Queue()
    second: queue.Queue[bytes | None] = queue.Queue()
    # Straight to the worker: the gateway would queue the second call itself.
    with grpc.insecure_channel(worker_address(service, "hello-dcf")) as channel:
        stub = dcf_pb2_grpc.WorkerStub(channel)
        running = stub.Call(requests(first), timeout=60)
        try:
            first.put(b"one")
            assert next(running).WhichOneof("kind") == "header"
            assert next(running).chunk == b"one"  # it holds the one slot
            # More than flow control lets through unread: the handler is still echoing
            # it when the call is cancelled, so the cancel cannot pass for the input's
            # end (grpc.aio may end a cancelled call's input as if the caller had
            # finished it, and an echo with all its input would then end well).
            for _ in range(16):
                first.put(b"x" * (1 << 20))
            waiting = stub.Call(requests(second), timeout=60)
            text = scrape_until(port, "dcf_worker_queue_depth", 1, "the second call waits", **hello)
            assert metric(text, "dcf_worker_calls_in_flight", **hello) == 1
            waiting.cancel()
            cancelled = "dcf_worker_cancelled_total"
            scrape_until(port, cancelled, 1, "the waiting call cancelled", stage="queue", **hello)
            running.cancel()
            scrape_until(port, cancelled, 1, "the running call cancelled", stage="handler", **hello)
        finally:
            first.put(None)
            second.put(None)
    text = scrape_until(port, "dcf_worker_calls_in_flight", 0, "the slot given back", **hello)
    assert metric(text, "dcf_worker_queue_depth", **hello) == 0
    assert metric(text, "dcf_worker_calls_total", code="CANCELLED", **hello) == 2
    assert metric(text, "dcf_worker_wait_seconds_count", resource="slot", **hello) == 1


def test_the_embedded_gateway_relays_its_workers_metrics(
    service: SmallService, ports: dict[str, int]
) -> None:
    with grpc.insecure_channel(service.address) as channel:
        stub = dcf_pb2_grpc.GatewayStub(channel)
        assert stub.Invoke(dcf_pb2.InvokeRequest(function="hello-dcf", input=b"hi")).output == b"hi"
    scrape_until(
        ports["hello-dcf"], "dcf_worker_calls_total", 1, "counted", function="hello-dcf", code="OK"
    )
    relayed = service.metrics_text()
    for function in ("ssd", "hello-dcf"):
        own = scrape(ports[function])
        samples = {
            line
            for line in own.splitlines()
            if line.startswith(("dcf_worker_calls_total", "dcf_worker_step_seconds_count"))
        }
        assert samples and samples <= set(relayed.splitlines()), function
    # One family each, both workers' samples in it; the gateway's own metrics beside them.
    assert relayed.count("# TYPE dcf_worker_calls_total counter") == 1
    assert families(relayed)["dcf_requests_total"] == "counter"
    assert families(relayed)["dcf_retries_total"] == "counter"


def dashboard_metrics(dashboard: dict[str, Any]) -> set[str]:
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    expressions += [
        variable["definition"]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    ]
    return {name for expr in expressions for name in re.findall(r"\bdcf_[a-z_]+\b", expr)}


def served(name: str, known: dict[str, str]) -> bool:
    """Whether sample name ``name`` is one that the families ``known`` expose (a counter's
    TYPE line names it with its ``_total``, as prometheus_client writes it)."""
    if known.get(name) in ("gauge", "untyped") or (
        name.endswith("_total") and known.get(name) == "counter"
    ):
        return True
    suffixes = {"_bucket": ("histogram",), "_sum": ("histogram", "summary")}
    suffixes["_count"] = suffixes["_sum"]
    return any(
        name.endswith(suffix) and known.get(name.removesuffix(suffix)) in kinds
        for suffix, kinds in suffixes.items()
    )


def test_the_dashboard_parses_and_every_metric_it_names_is_served(
    service: SmallService, ports: dict[str, int]
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["title"] and panel["targets"], panel
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]
    known = families(service.metrics_text()) | families(scrape(ports["ssd"]))
    named = dashboard_metrics(dashboard)
    assert [name for name in sorted(named) if not served(name, known)] == []
    # What the issue asks it to show: calls, errors, latency, queue, step times.
    assert {
        "dcf_requests_total",
        "dcf_request_duration_seconds_bucket",
        "dcf_queue_depth",
        "dcf_worker_queue_depth",
        "dcf_worker_step_seconds_bucket",
    } <= named
    assert not served("dcf_requests", known) and not served("dcf_queue_depth_total", known)
