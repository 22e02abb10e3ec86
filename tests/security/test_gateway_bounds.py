"""The gateway's side of "safe by default": one door, bounded time, clean logs, right statuses.

Each test is a probe that succeeded against the gateway before it was hardened:
a worker's port that answered without a token, callers' tokens handed to the
workers, thousands of wrong tokens without a trace, calls without any deadline,
uploads that trickled a byte at a time and held every slot, log lines forged
through a function name, malformed messages answered UNKNOWN, and worker
addresses in the statuses callers see.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from tests.support import (
    Service,
    call_requests,
    collect_call,
    free_port,
    media,
    metric,
    spawn_gateway,
    start_service,
    wait_serving,
)
from tests.support.reliability import worker_pids

TOKEN = "caller-secret"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
EXTRA = {
    "echo-brief": {
        "handler": "handlers.hello",
        "description": "hello-dcf that may take two seconds at most (tests only)",
        "max_call_seconds": 2,
    },
}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[Service]:
    """The embedded default with caller tokens on and a short idle limit."""
    service = start_service(
        tmp_path_factory.mktemp("guarded"),
        EXTRA,
        args=["--no-http"],
        env={"DCF_TOKENS": TOKEN},
        server={"input_idle_seconds": 2},
    )
    yield service
    service.stop()


def gateway(service: Service, channel: grpc.Channel) -> dcf_pb2_grpc.GatewayStub:
    return dcf_pb2_grpc.GatewayStub(channel)


def test_workers_take_no_call_without_the_internal_token(guarded):
    worker = guarded.worker_address("hello-dcf")
    with grpc.insecure_channel(worker) as channel:
        call = dcf_pb2_grpc.WorkerStub(channel).Call
        for metadata, code in (
            (None, grpc.StatusCode.UNAUTHENTICATED),
            (AUTH, grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                collect_call(
                    call(call_requests("hello-dcf", [b"x"]), metadata=metadata, timeout=30)
                )
            assert refused.value.code() == code
            # Worker.Invoke, the gateway's way for a small unary call, is behind the
            # same door.
            with pytest.raises(grpc.RpcError) as refused:
                dcf_pb2_grpc.WorkerStub(channel).Invoke(
                    dcf_pb2.InvokeRequest(function="hello-dcf", input=b"x"),
                    metadata=metadata,
                    timeout=30,
                )
            assert refused.value.code() == code
    # Through the gateway, with a caller's token, the same worker answers.
    with guarded.channel() as channel:
        reply = gateway(guarded, channel).Invoke(
            dcf_pb2.InvokeRequest(function="hello-dcf", input=b"via the door"),
            metadata=AUTH,
            timeout=30,
        )
    assert reply.output == b"via the door"
    # The workers never saw the callers' tokens.
    for name, pid in worker_pids(guarded).items():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not any(item.startswith(b"DCF_TOKENS=") for item in environ), name
        assert any(item.startswith(b"DCF_WORKER_TOKEN=") for item in environ), name


def test_wrong_tokens_are_counted_and_logged_at_a_bounded_rate(guarded):
    before = metric(guarded.metrics_text(), "dcf_token_refusals_total", code="PERMISSION_DENIED")
    lines_before = guarded.log.read_text().count("refused")
    with guarded.channel() as channel:
        stub = gateway(guarded, channel)
        for i in range(200):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Invoke(
                    dcf_pb2.InvokeRequest(function="hello-dcf", input=b"x"),
                    metadata=(("authorization", f"Bearer guess-{i}"),),
                    timeout=30,
                )
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    after = metric(guarded.metrics_text(), "dcf_token_refusals_total", code="PERMISSION_DENIED")
    assert after - before == 200
    logged = guarded.log.read_text().count("refused") - lines_before
    assert 1 <= logged <= 3, logged


def test_a_call_without_a_deadline_gets_the_functions_ceiling(guarded):
    """echo-brief may take 2 s: a caller that gives no deadline, or a far one, is held to it."""
    with guarded.channel() as channel:
        stub = gateway(guarded, channel)
        for timeout in (None, 1e6):

            def steady() -> Iterator[bytes]:
                for _ in range(60):  # 4 KiB/s, above the minimum rate, for 30 s
                    yield b"y" * 2048
                    time.sleep(0.5)

            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as ended:
                collect_call(
                    stub.Call(call_requests("echo-brief", steady()), metadata=AUTH, timeout=timeout)
                )
            assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, ended.value.details()
            assert time.monotonic() - started < 20


def test_an_idle_upload_is_ended(guarded):
    def stalls() -> Iterator[bytes]:
        yield b"first"
        time.sleep(30)

    with guarded.channel() as channel:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as ended:
            collect_call(
                gateway(guarded, channel).Call(
                    call_requests("hello-dcf", stalls()), metadata=AUTH, timeout=60
                )
            )
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert ended.value.details() == "hello-dcf: no input for 2 s; the upload was ended"
    assert time.monotonic() - started < 20


def test_four_trickling_uploads_do_not_deny_a_fifth_caller(guarded):
    """ssd-video runs four calls at once. Four callers that send a byte now and then held
    all four slots for as long as they liked. Now a call takes its slot only once its
    upload is in, so the fifth caller is answered while they still trickle; and the input
    rate rule ends them (or, on a machine so loaded that a pause between their bytes
    passes 2 s, the idle rule)."""
    clip = media.video(4, (320, 240))
    stop = threading.Event()

    def trickle() -> Iterator[bytes]:
        while not stop.is_set():
            yield b"\0"
            time.sleep(0.5)

    def trickler(_: int) -> str:
        with guarded.channel() as channel:
            try:
                collect_call(
                    gateway(guarded, channel).Call(
                        call_requests("ssd-video", trickle()), metadata=AUTH, timeout=120
                    )
                )
            except grpc.RpcError as exc:
                return f"{exc.code().name}: {exc.details()}"
            return "OK"

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        trickling = [pool.submit(trickler, i) for i in range(4)]
        deadline = time.monotonic() + 30
        while metric(guarded.metrics_text(), "dcf_calls_in_flight", function="ssd-video") < 4:
            assert time.monotonic() < deadline, "the tricklers never reached the gateway"
            time.sleep(0.05)
        try:
            with guarded.channel() as channel:
                _, _, results = collect_call(
                    gateway(guarded, channel).Call(
                        call_requests("ssd-video", [clip]), metadata=AUTH, timeout=120
                    )
                )
            assert not any(t.done() for t in trickling), "answered only once the tricklers ended"
            assert [json.loads(r)["frame"] for r in results[:-1]] == [1, 2, 3, 4]
            # The tricklers themselves end by the rule, not by giving up.
            done, _ = concurrent.futures.wait(trickling, timeout=60)
            outcomes = [t.result() for t in done]
        finally:
            stop.set()
    assert len(outcomes) == 4, outcomes
    assert all(
        o.startswith("DEADLINE_EXCEEDED: ssd-video: ") and o.endswith("the upload was ended")
        for o in outcomes
    ), outcomes


def test_caller_text_in_the_log_is_escaped_and_bounded(guarded):
    offset = len(guarded.log.read_bytes())
    with guarded.channel() as channel:
        stub = gateway(guarded, channel)
        for name in (
            "evil\n2026-01-01 00:00:00,000 INFO server.gateway.core[1]: call forged",
            "n" * (1 << 20),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Invoke(dcf_pb2.InvokeRequest(function=name), metadata=AUTH, timeout=30)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            assert len(refused.value.details()) <= 600
    deadline = time.monotonic() + 10
    while guarded.log.read_bytes()[offset:].count(b" NOT_FOUND ") < 2:
        assert time.monotonic() < deadline, "the refusals were not logged"
        time.sleep(0.05)
    written = guarded.log.read_bytes()[offset:].decode()
    assert "\ncall forged" not in written and "\n2026-01-01" not in written
    assert max(len(line) for line in written.splitlines()) < 1000


def raw_call(channel: grpc.Channel, method: str, payload: bytes, streaming: bool = False):
    if streaming:
        stream: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(method)
        return list(stream(iter([payload]), timeout=30, metadata=AUTH))
    unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
    return unary(payload, timeout=30, metadata=AUTH)


@pytest.mark.parametrize(
    ("method", "streaming"),
    [
        ("/dcf.v1.Gateway/Invoke", False),
        ("/dcf.v1.Gateway/Call", True),
        ("/dcf.v1.Gateway/ListFunctions", False),
        ("/inference.GRPCInferenceService/ModelInfer", False),
    ],
)
def test_malformed_messages_are_invalid_argument(guarded, method, streaming):
    with guarded.channel() as channel:
        with pytest.raises(grpc.RpcError) as refused:
            raw_call(channel, method, b"\xff\xff\xff", streaming)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a valid" in refused.value.details()
        # The gateway goes on serving.
        assert (
            gateway(guarded, channel)
            .Invoke(
                dcf_pb2.InvokeRequest(function="hello-dcf", input=b"still"),
                metadata=AUTH,
                timeout=30,
            )
            .output
            == b"still"
        )


def test_unavailable_names_the_function_but_not_where_its_workers_are(tmp_path):
    nowhere, port = free_port(), free_port()
    log = tmp_path / "gateway.log"
    process = spawn_gateway(port, f"hello-dcf=127.0.0.1:{nowhere}", log)
    try:
        wait_serving(f"127.0.0.1:{port}")
        with (
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
            pytest.raises(grpc.RpcError) as down,
        ):
            dcf_pb2_grpc.GatewayStub(channel).Invoke(
                dcf_pb2.InvokeRequest(function="hello-dcf", input=b"x"), timeout=30
            )
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        assert down.value.details() == "hello-dcf: worker unavailable"
        deadline = time.monotonic() + 10
        while f"127.0.0.1:{nowhere}" not in log.read_text():
            assert time.monotonic() < deadline, "the address never reached the log"
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(30)
