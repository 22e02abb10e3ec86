"""One call, one trace: across the HTTP front, the gateway and the worker, steps inside.

A served dcf (the embedded default: gateway and HTTP front in one process, each
worker in its own) exports its spans over OTLP to a receiver in this process, as it
would to a collector. The trace is read back as its processes sent it.
"""

from __future__ import annotations

import concurrent.futures
import re
import secrets
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from server.testing import REGISTRY
from tests.observability.receiver import ReceivedSpan, Receiver, trace_of, tree
from tests.support import (
    call_requests,
    collect_call,
    free_port,
    metric,
    spawn_gateway,
    spawn_server,
    wait_serving,
)
from tests.support.http import HELLO, SmallService, small_service
from tests.support.media import chirp_wav, photo

pytestmark = pytest.mark.service

SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind
ERROR = 2  # opentelemetry.proto.trace.v1.Status.StatusCode
SSD_STEPS = ("decode", "resize", "inference", "encode")


def packaged(name: str) -> dict:
    entry = dict(yaml.safe_load(REGISTRY.read_text())["functions"][name])
    entry.pop("workers")
    return entry


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[SmallService]:
    functions = {"ssd": packaged("ssd"), "send-wav": packaged("send-wav"), "hello-dcf": HELLO}
    served = small_service(tmp_path_factory.mktemp("traced"), functions, receiver.environment())
    yield served
    served.stop()


def complete(trace_id: str, names: set[str]) -> Callable[[list[ReceivedSpan]], bool]:
    """A ``Receiver.wait_for`` condition: the trace has spans of all these names."""
    return lambda spans: names <= {s.name for s in spans if s.trace_id == trace_id}


def worker_address(service: SmallService, name: str) -> str:
    return yaml.safe_load((service.log.parent / "registry.yaml").read_text())["functions"][name][
        "workers"
    ][0]


def with_request_id(receiver: Receiver, request_id: str, name: str) -> list[ReceivedSpan]:
    """The spans called ``name`` of the call with ``request_id``, once there are some."""

    def mine(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [
            s for s in spans if s.name == name and s.attributes.get("dcf.request_id") == request_id
        ]

    return mine(receiver.wait_for(lambda spans: bool(mine(spans)), f"{name} of {request_id}"))


def inside(child: ReceivedSpan, parent: ReceivedSpan) -> bool:
    return child.parent_id == parent.span_id and child.trace_id == parent.trace_id


def test_an_ssd_call_over_http_is_one_trace_across_the_processes_with_its_steps(
    service: SmallService, receiver: Receiver
) -> None:
    caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    reply = httpx.post(
        f"{service.http_url}/v1/functions/ssd",
        content=photo(),
        headers={"traceparent": f"00-{caller_trace}-{caller_span}-01", "x-request-id": "traced-1"},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    with grpc.insecure_channel(service.address) as channel:
        invoked = dcf_pb2_grpc.GatewayStub(channel).Invoke(
            dcf_pb2.InvokeRequest(function="ssd", input=photo()), timeout=120
        )
    assert reply.content == invoked.output  # the same answer, byte for byte, traced or not

    names = {
        "POST /v1/functions/{name}",
        "dcf.v1.Gateway/Call",
        "relay ssd",
        "worker ssd",
        "upload",
        "handler ssd",
        *SSD_STEPS,
    }
    spans = receiver.wait_for(complete(caller_trace, names), "the ssd call's trace")
    trace = trace_of(spans, caller_trace)
    assert set(trace) == names, tree(list(trace.values()))

    http, call = trace["POST /v1/functions/{name}"], trace["dcf.v1.Gateway/Call"]
    relay = trace["relay ssd"]
    worker, handler = trace["worker ssd"], trace["handler ssd"]
    # The caller's trace is continued, and each process's span hangs from the one before.
    assert http.parent_id == caller_span
    assert inside(call, http) and inside(relay, call) and inside(worker, relay)
    assert inside(handler, worker)
    assert inside(trace["upload"], worker)  # no wait for a slot or an upload place: no span
    for step in SSD_STEPS:
        assert inside(trace[step], handler), step
        assert handler.start_ns <= trace[step].start_ns <= trace[step].end_ns <= handler.end_ns
    ordered = sorted(SSD_STEPS, key=lambda step: trace[step].start_ns)
    assert ordered == list(SSD_STEPS)

    assert (http.kind, call.kind, relay.kind, worker.kind) == (SERVER, SERVER, CLIENT, SERVER)
    assert {http.service, call.service, relay.service} == {"dcf-gateway"}  # one process
    assert {s.service for s in (worker, handler, *(trace[n] for n in SSD_STEPS))} == {
        "dcf-worker-ssd"
    }
    for span in (http, call, worker):
        assert span.attributes["dcf.request_id"] == "traced-1", span.name
    assert call.attributes["dcf.function"] == "ssd" and call.attributes["dcf.status"] == "OK"
    assert relay.attributes["dcf.attempt"] == 1 and relay.attributes["dcf.retry"] is False
    # The embedded default reaches its local worker over its Unix socket.
    port = worker_address(service, "ssd").rpartition(":")[2]
    socket = re.search(rf"and unix:(\S+/{port}\.sock)", service.log.read_text())
    assert socket is not None, "the ssd worker listens on no socket"
    assert relay.attributes["server.address"] == socket.group(1)
    assert relay.attributes["network.transport"] == "unix"
    assert worker.attributes["dcf.status"] == "OK"
    assert trace["upload"].attributes["dcf.bytes"] == len(photo())

    # The Invoke made a trace of its own, with no caller's to continue.
    invoke = receiver.wait_for(
        lambda spans: any(s.name == "dcf.v1.Gateway/Invoke" for s in spans), "the Invoke's trace"
    )
    (root,) = [s for s in invoke if s.name == "dcf.v1.Gateway/Invoke"]
    assert root.parent_id == "" and root.trace_id != caller_trace
    receiver.wait_for(complete(root.trace_id, {"worker ssd", *SSD_STEPS}), "the Invoke's worker")


def test_a_v2_infer_over_http_continues_the_callers_trace_to_the_worker(
    service: SmallService, receiver: Receiver
) -> None:
    caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    request = {
        "inputs": [{"name": "INPUT", "shape": [1], "datatype": "BYTES", "data": ["traced v2"]}]
    }
    reply = httpx.post(
        f"{service.http_url}/v2/models/hello-dcf/infer",
        json=request,
        headers={"traceparent": f"00-{caller_trace}-{caller_span}-01", "x-request-id": "v2-1"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == ["traced v2"]
    names = {
        "POST /v2/models/{name}/infer",
        "inference.GRPCInferenceService/ModelInfer",
        "relay hello-dcf",
        "worker hello-dcf",
        "handler hello-dcf",
    }
    spans = receiver.wait_for(complete(caller_trace, names), "the v2 call's trace")
    trace = trace_of(spans, caller_trace)
    front, infer = (
        trace["POST /v2/models/{name}/infer"],
        trace["inference.GRPCInferenceService/ModelInfer"],
    )
    assert front.parent_id == caller_span and inside(infer, front)
    assert inside(trace["relay hello-dcf"], infer)
    assert inside(trace["worker hello-dcf"], trace["relay hello-dcf"])
    assert front.attributes["dcf.request_id"] == "v2-1"


def test_send_wav_over_grpc_traces_its_read_stft_draw_and_png(
    service: SmallService, receiver: Receiver
) -> None:
    wav = chirp_wav()
    with grpc.insecure_channel(service.address) as channel:
        stub = dcf_pb2_grpc.GatewayStub(channel)
        responses = stub.Call(
            call_requests("send-wav", [wav[:5000], wav[5000:]], {"width": "400", "height": "200"}),
            metadata=(("x-request-id", "traced-wav"),),
            timeout=120,
        )
        content_type, png, _ = collect_call(responses)
    assert content_type == "image/png" and png.startswith(b"\x89PNG\r\n\x1a\n")

    steps = {"read", "stft", "draw", "png"}
    (call,) = with_request_id(receiver, "traced-wav", "dcf.v1.Gateway/Call")
    assert call.parent_id == ""  # a gRPC caller with no trace of its own starts one
    spans = receiver.wait_for(complete(call.trace_id, steps | {"handler send-wav"}), "its steps")
    trace = trace_of(spans, call.trace_id)
    handler = trace["handler send-wav"]
    for step in steps:
        assert inside(trace[step], handler), step
    # Reading and transforming take turns: each is told once, with how many pieces it took
    # and how long they worked in all, within the span from its first piece to its last.
    for step in ("read", "stft"):
        span = trace[step]
        assert span.attributes["dcf.pieces"] >= 2, span.attributes
        assert 0 < span.attributes["dcf.busy_ms"] * 1e6 <= span.end_ns - span.start_ns
    assert trace["read"].start_ns < trace["stft"].start_ns < trace["read"].end_ns
    assert trace["stft"].end_ns <= trace["draw"].start_ns <= trace["png"].start_ns


def test_a_failed_call_ends_its_spans_as_errors(service: SmallService, receiver: Receiver) -> None:
    reply = httpx.post(
        f"{service.http_url}/v1/functions/ssd",
        content=b"not an image at all",
        headers={"x-request-id": "traced-bad"},
        timeout=60,
    )
    assert reply.status_code == 400 and reply.json()["reason"] == "INVALID_INPUT"
    (worker,) = with_request_id(receiver, "traced-bad", "worker ssd")
    names = {"POST /v1/functions/{name}", "dcf.v1.Gateway/Call", "handler ssd", "decode"}
    spans = receiver.wait_for(complete(worker.trace_id, names), "its spans")
    trace = trace_of(spans, worker.trace_id)
    assert worker.attributes["dcf.status"] == "INVALID_ARGUMENT"
    assert trace["dcf.v1.Gateway/Call"].attributes["dcf.status"] == "INVALID_ARGUMENT"
    assert trace["decode"].status_code == ERROR  # the step that raised
    assert "inference" not in trace


class Unavailable(dcf_pb2_grpc.WorkerServicer):
    """A replica that is up (its health says so) and fails every call before reading it."""

    def Call(self, request_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        context.abort(grpc.StatusCode.UNAVAILABLE, "this replica fails every call")
        yield  # a generator, as stream handlers are


@pytest.fixture(scope="module")
def retrying(
    tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
) -> Iterator[tuple[str, Path]]:
    """A gateway over two hello-dcf replicas, a real worker and one that always fails
    UNAVAILABLE, traced: the calls that go to the failing one first are retried."""
    logs = tmp_path_factory.mktemp("retries")
    failing = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    dcf_pb2_grpc.add_WorkerServicer_to_server(Unavailable(), failing)
    checks = health.HealthServicer()
    for name in ("", "dcf.v1.Worker"):
        checks.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, failing)
    failing_port = failing.add_insecure_port("127.0.0.1:0")
    failing.start()
    worker_port, gateway_port = free_port(), free_port()
    env = receiver.environment()
    worker = spawn_server(["worker", "hello-dcf", "--port", str(worker_port)], logs / "w.log", env)
    route = f"hello-dcf=127.0.0.1:{worker_port},127.0.0.1:{failing_port}"
    gateway = spawn_gateway(gateway_port, route, logs / "gateway.log", env)
    try:
        wait_serving(f"127.0.0.1:{worker_port}", "dcf.v1.Worker")
        wait_serving(f"127.0.0.1:{gateway_port}", "hello-dcf")
        yield f"127.0.0.1:{gateway_port}", logs / "gateway.log"
    finally:
        for process in (gateway, worker):
            process.terminate()
            process.wait(30)
        failing.stop(None)


def test_a_retried_call_has_a_span_for_each_attempt(
    retrying: tuple[str, Path], receiver: Receiver
) -> None:
    address, log = retrying
    with grpc.insecure_channel(address) as channel:
        stub = dcf_pb2_grpc.GatewayStub(channel)
        for index in range(8):  # round_robin: about half go to the failing replica first
            chunks = [f"retry {index}".encode()]
            responses = stub.Call(
                call_requests("hello-dcf", chunks),
                metadata=(("x-request-id", f"retry-{index}"),),
                timeout=30,
            )
            assert collect_call(responses)[1] == chunks[0]
    # Each retry counted (dcf_retries_total) as it is logged.
    port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", log.read_text())
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port[1]}/metrics", timeout=10) as reply:
        retries = metric(reply.read().decode(), "dcf_retries_total", function="hello-dcf")
    assert retries == log.read_text().count("retrying once") >= 1

    def retried(spans: list[ReceivedSpan]) -> bool:
        return any(s.name == "relay hello-dcf" and s.attributes["dcf.attempt"] == 2 for s in spans)

    spans = receiver.wait_for(retried, "a second attempt")
    (second, *_) = [
        s for s in spans if s.name == "relay hello-dcf" and s.attributes["dcf.attempt"] == 2
    ]
    attempts = sorted(
        (s for s in spans if s.trace_id == second.trace_id and s.name == "relay hello-dcf"),
        key=lambda s: int(s.attributes["dcf.attempt"]),
    )
    first = attempts[0]
    assert [s.attributes["dcf.attempt"] for s in attempts] == [1, 2]
    assert first.parent_id == second.parent_id  # both inside the call's span
    assert (first.attributes["dcf.retry"], second.attributes["dcf.retry"]) == (False, True)
    assert first.attributes["dcf.status"] == "UNAVAILABLE" and first.status_code == ERROR
    assert second.attributes["dcf.status"] == "OK"
    assert first.start_ns <= first.end_ns <= second.start_ns
    # The worker's span hangs from the attempt that reached it.
    workers = receiver.wait_for(
        lambda spans: any(
            s.name == "worker hello-dcf" and s.parent_id == second.span_id for s in spans
        ),
        "the worker's span",
    )
    assert not [s for s in workers if s.name == "worker hello-dcf" and s.parent_id == first.span_id]
