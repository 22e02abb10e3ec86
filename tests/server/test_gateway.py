"""The gateway path end to end, against a real ``python -m server`` with hello-dcf."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from tests.support import (
    call_requests,
    collect_call,
    free_port,
    spawn_gateway,
    spawn_server,
    wait_serving,
)

MiB = 1 << 20


def test_invoke_echoes(stub):
    reply = stub.Invoke(dcf_pb2.InvokeRequest(function="hello-dcf", input=b"Hello, DCF!\n"))
    assert reply.output == b"Hello, DCF!\n"
    assert reply.content_type == "text/plain"


def test_call_echoes_chunks(stub):
    chunks = [b"one ", b"two ", b"three"]
    content_type, body, results = collect_call(stub.Call(call_requests("hello-dcf", chunks)))
    assert (content_type, body, results) == ("text/plain", b"one two three", [])


def test_empty_input_gives_empty_output(stub):
    assert stub.Invoke(dcf_pb2.InvokeRequest(function="hello-dcf")).output == b""
    content_type, body, _ = collect_call(stub.Call(call_requests("hello-dcf", [])))
    assert content_type == "text/plain" and body == b""


def test_64_mib_echo_is_byte_identical(stub):
    block = os.urandom(MiB)
    blocks = [bytes([i]) + block[1:] for i in range(64)]
    expected = hashlib.sha256(b"".join(blocks)).hexdigest()
    digest = hashlib.sha256()
    size = 0
    for response in stub.Call(call_requests("hello-dcf", blocks)):
        if response.WhichOneof("kind") == "chunk":
            digest.update(response.chunk)
            size += len(response.chunk)
            assert len(response.chunk) <= MiB
    assert size == 64 * MiB
    assert digest.hexdigest() == expected


def test_chunks_bigger_than_the_workers_take_are_cut_on_the_way(stub):
    """The caller picks its chunk size; the worker takes messages of about its own
    chunk_bytes (1 MiB), so the gateway cuts bigger chunks rather than failing."""
    data = os.urandom(3 * MiB + 5)
    content_type, body, _ = collect_call(stub.Call(call_requests("hello-dcf", [data, b"end"])))
    assert (content_type, body) == ("text/plain", data + b"end")


def test_alias_and_list(stub):
    names = {fn.name for fn in stub.ListFunctions(dcf_pb2.ListFunctionsRequest()).functions}
    assert "hello-dcf" in names
    for fn in stub.ListFunctions(dcf_pb2.ListFunctionsRequest()).functions:
        assert fn.description and fn.input_content_type and fn.output_content_type


def test_unknown_function_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Invoke(dcf_pb2.InvokeRequest(function="no-such", input=b"x"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such" in err.value.details() and "hello-dcf" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        collect_call(stub.Call(call_requests("no-such", [b"x"])))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_stream_without_header_is_invalid(stub):
    with pytest.raises(grpc.RpcError) as err:
        collect_call(stub.Call(iter([dcf_pb2.CallRequest(chunk=b"no header")])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        collect_call(stub.Call(iter([])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    def two_headers():
        yield from call_requests("hello-dcf", [b"x"])
        yield dcf_pb2.CallRequest(header=dcf_pb2.CallHeader(function="hello-dcf"))

    with pytest.raises(grpc.RpcError) as err:
        collect_call(stub.Call(two_headers()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_oversize_input_is_refused_before_the_rest_is_read(stub):
    sent = []

    def endless():
        # 1 MiB limit: the refusal must come long before 200 MiB are sent.
        for i in range(200):
            sent.append(i)
            yield b"x" * (256 * 1024)

    with pytest.raises(grpc.RpcError) as err:
        collect_call(stub.Call(call_requests("echo-small", endless()), timeout=30))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "echo-small" in err.value.details()
    assert len(sent) < 100
    with pytest.raises(grpc.RpcError) as err:
        stub.Invoke(dcf_pb2.InvokeRequest(function="echo-small", input=b"x" * (MiB + 1)))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_worker_refusal_is_relayed_not_internal(stub):
    # The worker refuses the header while the gateway is still writing a large input:
    # the caller must see the worker's status, not the gateway's failed write.
    chunks = (b"y" * MiB for _ in range(32))
    with pytest.raises(grpc.RpcError) as err:
        collect_call(stub.Call(call_requests("hello-dcf", chunks, {"bogus": "1"})))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bogus" in err.value.details()


def test_handler_bug_is_internal_without_traceback(dcf, stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Invoke(dcf_pb2.InvokeRequest(function="faulty", input=b"x"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "Traceback" not in err.value.details()
    assert "must stay in the server log" not in err.value.details()
    assert "must stay in the server log" in dcf.log.read_text()
    # Both the worker and the gateway keep serving.
    assert stub.Invoke(dcf_pb2.InvokeRequest(function="hello-dcf", input=b"ok")).output == b"ok"
    with pytest.raises(grpc.RpcError) as err:
        stub.Invoke(dcf_pb2.InvokeRequest(function="faulty", input=b"x"))
    assert err.value.code() == grpc.StatusCode.INTERNAL


def test_deadline_is_honoured(stub):
    def slow():
        yield b"first"
        time.sleep(3)
        yield b"late"

    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        collect_call(stub.Call(call_requests("hello-dcf", slow()), timeout=0.5))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3


def test_health_and_reflection(dcf):
    wait_serving(dcf.address, "dcf.v1.Gateway", timeout=5)
    wait_serving(dcf.address, "hello-dcf", timeout=5)
    grpcurl = os.path.join(os.path.dirname(sys.executable), "grpcurl")
    listed = subprocess.run(
        [grpcurl, "-plaintext", dcf.address, "list"], capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert "dcf.v1.Gateway" in services and "grpc.health.v1.Health" in services
    assert any("reflection" in s for s in services)
    invoked = subprocess.run(
        [
            grpcurl,
            "-plaintext",
            "-d",
            '{"function":"hello-dcf","input":"SGk="}',
            dcf.address,
            "dcf.v1.Gateway/Invoke",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert invoked.returncode == 0, invoked.stderr
    assert '"output": "SGk="' in invoked.stdout
    # Workers speak health and reflection too.
    worker = dcf.worker_address("hello-dcf")
    wait_serving(worker, "dcf.v1.Worker", timeout=5)
    listed = subprocess.run(
        [grpcurl, "-plaintext", worker, "list"], capture_output=True, text=True, timeout=30
    )
    assert "dcf.v1.Worker" in listed.stdout.split()


def test_killed_worker_gives_unavailable_and_gateway_stays_up(tmp_path):
    """A gateway routed to a worker we own: kill it mid-call and after."""
    worker_port, gateway_port = free_port(), free_port()
    worker = spawn_server(
        ["worker", "hello-dcf", "--port", str(worker_port)], tmp_path / "worker.log"
    )
    gateway = spawn_gateway(
        gateway_port, f"hello-dcf=127.0.0.1:{worker_port}", tmp_path / "gateway.log"
    )
    address = f"127.0.0.1:{gateway_port}"
    try:
        wait_serving(address, "hello-dcf")
        with grpc.insecure_channel(address) as channel:
            stub = dcf_pb2_grpc.GatewayStub(channel)
            assert (
                stub.Invoke(dcf_pb2.InvokeRequest(function="hello-dcf", input=b"a")).output == b"a"
            )

            # Mid-call: the worker dies while the call is streaming.
            release = threading.Event()

            def trickle():
                yield b"start"
                release.wait(10)
                yield b"never echoed"

            responses = stub.Call(call_requests("hello-dcf", trickle()), timeout=20)
            assert next(responses).WhichOneof("kind") == "header"
            worker.kill()
            worker.wait()
            with pytest.raises(grpc.RpcError) as err:
                list(responses)
            release.set()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE

            # After: every call fails at once with UNAVAILABLE naming the function.
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                stub.Invoke(dcf_pb2.InvokeRequest(function="hello-dcf", input=b"b"), timeout=20)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "hello-dcf" in err.value.details()
            assert time.monotonic() - started < 5

            health = health_pb2_grpc.HealthStub(channel)
            assert (
                health.Check(health_pb2.HealthCheckRequest(service="")).status
                == health_pb2.HealthCheckResponse.SERVING
            )
    finally:
        for process in (worker, gateway):
            if process.poll() is None:
                process.kill()
            process.wait()
