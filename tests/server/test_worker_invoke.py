"""Worker.Invoke: a whole call in one message each way, and the gateway's use of it.

The gateway sends a unary call whose input fits in one chunk as one Worker.Invoke
(server/gateway/core.py, ``_attempt_whole``), and streams the rest. Both ways must
give the same bytes: each answer here is checked against the same call made the
other way, or against its input. A worker that predates Worker.Invoke still serves,
through Call; a call that ends early gives its slot back only when its handler
thread is done; the embedded default reaches its workers over Unix sockets, which
it removes when it stops.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from tests.support import (
    call_requests,
    collect_call,
    free_port,
    spawn_gateway,
    spawn_server,
    start_service,
    wait_serving,
)
from tests.support.media import photo, video

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator:
    with start_service(tmp_path_factory.mktemp("invoke"), args=["--no-http"]) as running:
        yield running


def worker_invoke(address: str, function: str, data: bytes, params=None, timeout=60.0):
    with grpc.insecure_channel(address) as channel:
        request = dcf_pb2.InvokeRequest(function=function, input=data, params=params or {})
        return dcf_pb2_grpc.WorkerStub(channel).Invoke(request, timeout=timeout)


def worker_call(address: str, function: str, data: bytes, params=None) -> tuple[str, bytes]:
    """The collected answer of a streaming Worker.Call: (content type, body)."""
    with grpc.insecure_channel(address) as channel:
        requests = call_requests(function, [data] if data else [], params, collect=True)
        content_type, body, results = collect_call(
            dcf_pb2_grpc.WorkerStub(channel).Call(requests, timeout=60)
        )
    assert not results
    return content_type, body


@pytest.mark.parametrize(
    ("function", "media", "params"),
    [
        ("hello-dcf", lambda: os.urandom(100 * KiB), {}),
        ("hello-dcf", lambda: b"", {}),
        ("ssd", photo, {"threshold": "0.3"}),
        ("ssd-video", lambda: video(frames=4), {"max_frames": "3"}),
    ],
    ids=["echo", "empty", "ssd", "ssd-video collected"],
)
def test_invoke_answers_what_call_answers(service, function, media, params):
    data = media()
    address = service.worker_address(function)
    reply = worker_invoke(address, function, data, params)
    content_type, body = worker_call(address, function, data, params)
    assert (reply.content_type, reply.output) == (content_type, body)
    if function == "hello-dcf":
        assert reply.output == data
    if function == "ssd-video":
        assert [frame["frame"] for frame in json.loads(reply.output)["frames"]] == [1, 2, 3]


def test_the_gateway_answers_small_and_large_inputs_alike(service):
    """One chunk goes as Worker.Invoke, more than one as Call: the same echo either way."""
    with service.channel() as channel:
        stub = service.gateway(channel)
        for size in (0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB):
            data = os.urandom(size)
            request = dcf_pb2.InvokeRequest(function="hello-dcf", input=data)
            reply = stub.Invoke(request, timeout=60)
            assert (reply.content_type, reply.output) == ("text/plain", data), size


@pytest.mark.parametrize(
    ("function", "data", "params", "code", "reason", "message"),
    [
        ("nope", b"x", {}, "NOT_FOUND", "", "this worker serves hello-dcf, not nope"),
        ("", b"x", {}, "INVALID_ARGUMENT", "", "the request names no function"),
        (
            "hello-dcf",
            b"x",
            {"colour": "red"},
            "INVALID_ARGUMENT",
            "INVALID_INPUT",
            "hello-dcf: unknown param colour (it takes no params)",
        ),
    ],
    ids=["other function", "no function", "unknown param"],
)
def test_invoke_refusals_are_one_line_statuses(
    service, function, data, params, code, reason, message
):
    address = service.worker_address("hello-dcf")
    with pytest.raises(grpc.RpcError) as caught:
        worker_invoke(address, function, data, params)
    assert caught.value.code().name == code
    assert caught.value.details() == message
    if reason:
        assert ("dcf-reason", reason) in tuple(caught.value.trailing_metadata())


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xff\xff", b"\x12\x05ab", b"\x0a\x02\xff\xfe"],
    ids=["garbage", "a length past the end", "a function name not UTF-8"],
)
def test_a_malformed_request_is_invalid_argument(service, raw):
    address = service.worker_address("hello-dcf")
    with grpc.insecure_channel(address) as channel:
        invoke: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/dcf.v1.Worker/Invoke"
        )
        with pytest.raises(grpc.RpcError) as caught:
            invoke(raw, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "a request message is not a valid dcf.v1.InvokeRequest"
    assert worker_invoke(address, "hello-dcf", b"still").output == b"still"


def test_an_input_over_one_chunk_is_refused_by_the_worker(service):
    """Worker.Invoke takes what fits in one message of the worker's: a chunk and change."""
    with pytest.raises(grpc.RpcError) as caught:
        worker_invoke(service.worker_address("hello-dcf"), "hello-dcf", os.urandom(2 * MiB))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert worker_invoke(service.worker_address("hello-dcf"), "hello-dcf", b"ok").output == b"ok"


def test_an_answer_over_the_invoke_limit_is_refused(tmp_path):
    """The worker holds an Invoke's answer whole, so it bounds it as the gateway does."""
    port = free_port()
    worker = spawn_server(
        ["worker", "hello-dcf", "--port", str(port)],
        tmp_path / "worker.log",
        env={"DCF_MAX_INVOKE_BYTES": "4096"},
    )
    address = f"127.0.0.1:{port}"
    try:
        wait_serving(address, "dcf.v1.Worker")
        assert worker_invoke(address, "hello-dcf", b"a" * 4096).output == b"a" * 4096
        with pytest.raises(grpc.RpcError) as caught:
            worker_invoke(address, "hello-dcf", b"a" * 4097)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.details() == (
            "hello-dcf: output exceeds the Invoke limit of 4096 bytes; use Call"
        )
        assert ("dcf-reason", "TOO_LARGE") in tuple(caught.value.trailing_metadata())
        # The stream still answers any size.
        assert worker_call(address, "hello-dcf", b"a" * 8192)[1] == b"a" * 8192
    finally:
        worker.terminate()
        worker.wait(30)


def test_a_call_cut_short_leaves_the_worker_serving(tmp_path):
    """A call whose deadline passes mid-video is DEADLINE_EXCEEDED; its handler stops at
    its next frame and gives its slot back then; the next call answers in full."""
    port = free_port()
    worker = spawn_server(["worker", "ssd-video", "--port", str(port)], tmp_path / "worker.log")
    address = f"127.0.0.1:{port}"
    clip = video(frames=10)
    try:
        wait_serving(address, "dcf.v1.Worker", timeout=120)
        whole = worker_invoke(address, "ssd-video", clip)
        with pytest.raises(grpc.RpcError) as caught:
            worker_invoke(address, "ssd-video", clip, timeout=0.05)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        again = worker_invoke(address, "ssd-video", clip)
        assert again.output == whole.output
        log = (tmp_path / "worker.log").read_text()
        assert "CANCELLED" in log or "DEADLINE_EXCEEDED" in log
        assert "Traceback" not in log
    finally:
        worker.terminate()
        worker.wait(30)


class CallOnlyWorker:
    """A hello-dcf worker of an older dcf: Worker.Call only (Invoke is UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8))
        handler = grpc.stream_stream_rpc_method_handler(
            self._call,
            request_deserializer=dcf_pb2.CallRequest.FromString,
            response_serializer=dcf_pb2.CallResponse.SerializeToString,
        )
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("dcf.v1.Worker", {"Call": handler})]
        )
        checks = health.HealthServicer()
        for service in ("", "dcf.v1.Worker"):
            checks.set(service, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(checks, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _call(self, requests, context):
        header = next(requests).header
        self.calls[header.function] += 1
        body = b"".join(request.chunk for request in requests)
        content_type = "text/plain"
        yield dcf_pb2.CallResponse(header=dcf_pb2.ResponseHeader(content_type=content_type))
        yield dcf_pb2.CallResponse(chunk=body)


def test_a_worker_without_invoke_is_served_through_call(tmp_path):
    old = CallOnlyWorker()
    old.server.start()
    port = free_port()
    log = tmp_path / "gateway.log"
    gateway = spawn_gateway(port, f"hello-dcf=127.0.0.1:{old.port}", log)
    address = f"127.0.0.1:{port}"
    try:
        wait_serving(address, "hello-dcf")
        with grpc.insecure_channel(address) as channel:
            stub = dcf_pb2_grpc.GatewayStub(channel)
            for data in (b"first", os.urandom(64 * KiB), b""):
                request = dcf_pb2.InvokeRequest(function="hello-dcf", input=data)
                assert stub.Invoke(request, timeout=30).output == data
        assert old.calls["hello-dcf"] == 3
        assert log.read_text().count("predate Worker.Invoke") == 1
    finally:
        gateway.terminate()
        gateway.wait(30)
        old.server.stop(None)


def test_the_embedded_default_reaches_its_workers_over_unix_sockets(tmp_path):
    """Its workers listen on a socket each beside their port; the sockets' directory goes
    when the service stops. Calls work both ways: through the gateway, and to the port."""
    before = set(Path(tempfile.gettempdir()).glob("dcf-workers-*"))
    with start_service(tmp_path, args=["--no-http"]) as running:
        text = running.log.read_text()
        sockets = [line for line in text.splitlines() if " and unix:" in line]
        assert len(sockets) == len(running.document["functions"]), text
        made = set(Path(tempfile.gettempdir()).glob("dcf-workers-*")) - before
        assert len(made) == 1
        (directory,) = made
        assert oct(directory.stat().st_mode & 0o777) == "0o700"
        with running.channel() as channel:
            reply = running.gateway(channel).Invoke(
                dcf_pb2.InvokeRequest(function="hello-dcf", input=b"via the socket"), timeout=30
            )
        assert reply.output == b"via the socket"
        direct = worker_invoke(running.worker_address("hello-dcf"), "hello-dcf", b"via the port")
        assert direct.output == b"via the port"
    deadline = time.monotonic() + 10
    while directory.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not directory.exists()


def test_a_dead_worker_during_invoke_is_unavailable_then_served_again(tmp_path):
    """A worker killed while it runs a call: that call fails UNAVAILABLE (never OK with
    a short answer); once restarted by the supervisor, calls are answered again."""
    with start_service(tmp_path, args=["--no-http"]) as running:
        found = subprocess.run(
            ["pgrep", "-P", str(running.process.pid), "-f", "worker ssd-video"],
            capture_output=True,
            text=True,
        ).stdout.split()
        assert len(found) == 1, found
        clip = video(frames=10)
        with running.channel() as channel:
            stub = running.gateway(channel)
            request = dcf_pb2.InvokeRequest(function="ssd-video", input=clip)
            whole = stub.Invoke(request, timeout=120).output
            future = stub.Invoke.future(request, timeout=120)
            time.sleep(0.3)
            os.kill(int(found[0]), signal.SIGKILL)
            code, output = outcome(future)
            # Retried on the restarted worker, or failed: never OK with less.
            assert (code, output) in (("OK", whole), ("UNAVAILABLE", b"")), code
            again = stub.Invoke(request, timeout=120)
            assert again.output == whole


def outcome(future: grpc.Future) -> tuple[str, bytes]:
    """("OK", the answer) or (status name, b"")."""
    try:
        return "OK", future.result().output
    except grpc.RpcError as exc:
        return exc.code().name, b""


@pytest.mark.parametrize("size", [10, 40 << 10], ids=["small params", "params over 32 KiB"])
def test_params_beside_a_small_input_reach_the_worker_either_way(service, size):
    """Params that leave room in one worker message go with the input as one Invoke;
    larger ones are streamed. The worker judges them alike."""
    request = dcf_pb2.InvokeRequest(function="hello-dcf", input=b"x", params={"p": "v" * size})
    with service.channel() as channel, pytest.raises(grpc.RpcError) as caught:
        service.gateway(channel).Invoke(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "hello-dcf: unknown param p (it takes no params)"


def test_an_alias_is_answered_as_the_name_is(service):
    """A caller naming ssd by its alias gets the same bytes as by its name."""
    with service.channel() as channel:
        stub = service.gateway(channel)
        by_name = stub.Invoke(dcf_pb2.InvokeRequest(function="ssd", input=photo()), timeout=60)
        by_alias = stub.Invoke(
            dcf_pb2.InvokeRequest(function="ssd-test", input=photo()), timeout=60
        )
    assert by_alias == by_name and json.loads(by_name.output)["detections"]


def test_a_killed_gateway_leaves_no_socket_directory(tmp_path):
    """SIGKILL gives the gateway no chance to clean up: its workers, seeing it gone,
    stop, and the last one out removes the sockets' directory."""
    before = set(Path(tempfile.gettempdir()).glob("dcf-workers-*"))
    running = start_service(tmp_path, args=["--no-http"])
    try:
        made = set(Path(tempfile.gettempdir()).glob("dcf-workers-*")) - before
        assert len(made) == 1
        (directory,) = made
        assert len(list(directory.iterdir())) == len(running.document["functions"])
        running.process.send_signal(signal.SIGKILL)
        running.process.wait(30)
        deadline = time.monotonic() + 30
        while directory.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not directory.exists(), list(directory.iterdir())
    finally:
        running.stop()
