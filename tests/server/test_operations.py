"""Scale-out and operations: replicas with failover, TLS, tokens, metrics, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from tests.support import (
    call_requests,
    collect_call,
    free_port,
    metric,
    run_client,
    spawn_gateway,
    spawn_server,
    start_service,
    wait_serving,
)


def stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def calls_in(log: Path) -> int:
    return log.read_text().count(" hello-dcf OK ")


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    """Wait for ``condition`` (polled), failing with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@contextmanager
def two_replicas(tmp_path: Path):
    ports = [free_port(), free_port()]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    workers = [
        spawn_server(["worker", "hello-dcf", "--port", str(p)], log)
        for p, log in zip(ports, logs, strict=True)
    ]
    gateway_port = free_port()
    route = ",".join(f"127.0.0.1:{p}" for p in ports)
    gateway = spawn_gateway(gateway_port, f"hello-dcf={route}", tmp_path / "gateway.log")
    try:
        for port in ports:
            wait_serving(f"127.0.0.1:{port}", "dcf.v1.Worker")
        wait_serving(f"127.0.0.1:{gateway_port}", "hello-dcf")
        yield f"127.0.0.1:{gateway_port}", workers, ports, logs
    finally:
        stop(gateway, *workers)


def test_replicas_share_calls_survive_a_kill_and_rejoin(tmp_path):
    with (
        two_replicas(tmp_path) as (address, workers, ports, logs),
        grpc.insecure_channel(address) as channel,
    ):
        stub = dcf_pb2_grpc.GatewayStub(channel)

        # round_robin connects to every replica in the background: wait until both answer.
        def warm() -> bool:
            stub.Invoke(dcf_pb2.InvokeRequest(function="hello-dcf", input=b"warm up"))
            return calls_in(logs[0]) > 0 and calls_in(logs[1]) > 0

        wait_until(warm, "both replicas to take calls")
        before = calls_in(logs[0]) + calls_in(logs[1])
        for i in range(40):
            assert (
                stub.Invoke(dcf_pb2.InvokeRequest(function="hello-dcf", input=b"%d" % i)).output
                == b"%d" % i
            )
        wait_until(lambda: calls_in(logs[0]) + calls_in(logs[1]) >= before + 40, "the log lines")
        assert calls_in(logs[0]) >= 5 and calls_in(logs[1]) >= 5, "round robin over both"

        # Load from 8 threads; kill replica A in the middle of it.
        outcomes: list[str] = []
        lock = threading.Lock()
        deadline = time.monotonic() + 3

        def load() -> None:
            while time.monotonic() < deadline:
                try:
                    stub.Invoke(
                        dcf_pb2.InvokeRequest(function="hello-dcf", input=b"x" * 1000),
                        timeout=10,
                    )
                    result = "OK"
                except grpc.RpcError as exc:
                    result = exc.code().name
                with lock:
                    outcomes.append(result)

        threads = [threading.Thread(target=load) for _ in range(8)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(outcomes) >= 20, "the load to get going")
        workers[0].kill()
        for thread in threads:
            thread.join(timeout=20)
        assert not any(t.is_alive() for t in threads), "a call hung"
        failures = [o for o in outcomes if o != "OK"]
        # Replayable calls are retried on B; only calls A had started answering may fail.
        assert set(failures) <= {"UNAVAILABLE"}
        assert len(failures) <= 8, outcomes.count("OK")
        assert outcomes.count("OK") > 50

        # With A gone every call goes to B.
        for _ in range(20):
            stub.Invoke(dcf_pb2.InvokeRequest(function="hello-dcf", input=b"y"))

        # A comes back on its port and takes traffic again.
        before = calls_in(logs[0])
        workers[0] = spawn_server(["worker", "hello-dcf", "--port", str(ports[0])], logs[0])
        wait_serving(f"127.0.0.1:{ports[0]}", "dcf.v1.Worker")
        end = time.monotonic() + 20
        while calls_in(logs[0]) == before and time.monotonic() < end:
            stub.Invoke(dcf_pb2.InvokeRequest(function="hello-dcf", input=b"z"))
            time.sleep(0.05)
        assert calls_in(logs[0]) > before


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    import trustme

    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    leaf.private_key_pem.write_to_path(str(folder / "key.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    return folder


def test_tls_gateway_with_mutual_tls_to_workers(tmp_path, certificates):
    env = {
        "DCF_TLS_CERT": str(certificates / "cert.pem"),
        "DCF_TLS_KEY": str(certificates / "key.pem"),
        "DCF_TLS_CLIENT_CA": "",
        "DCF_WORKER_CA": str(certificates / "ca.pem"),
    }
    ca = (certificates / "ca.pem").read_bytes()
    # Workers demand a client certificate: only the gateway, with its own, gets in.
    worker_port, gateway_port = free_port(), free_port()
    worker = spawn_server(
        ["worker", "hello-dcf", "--port", str(worker_port)],
        tmp_path / "w.log",
        {**env, "DCF_TLS_CLIENT_CA": str(certificates / "ca.pem")},
    )
    gateway = spawn_gateway(
        gateway_port, f"hello-dcf=127.0.0.1:{worker_port}", tmp_path / "g.log", env
    )
    address = f"127.0.0.1:{gateway_port}"
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        end = time.monotonic() + 60
        while True:
            with grpc.secure_channel(address, credentials) as channel:
                try:
                    reply = dcf_pb2_grpc.GatewayStub(channel).Invoke(
                        dcf_pb2.InvokeRequest(function="hello-dcf", input=b"secret"), timeout=5
                    )
                    break
                except grpc.RpcError:
                    if time.monotonic() > end:
                        raise
                    time.sleep(0.2)
        assert reply.output == b"secret"

        with grpc.insecure_channel(address) as channel:
            with pytest.raises(grpc.RpcError) as err:
                dcf_pb2_grpc.GatewayStub(channel).Invoke(
                    dcf_pb2.InvokeRequest(function="hello-dcf", input=b"x"), timeout=5
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # A client without a certificate cannot reach a worker directly.
        with (
            grpc.secure_channel(f"127.0.0.1:{worker_port}", credentials) as channel,
            pytest.raises(grpc.RpcError),
        ):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)

        done = run_client(
            "call",
            "hello-dcf",
            "--address",
            address,
            "--ca",
            str(certificates / "ca.pem"),
            stdin=b"via the CLI",
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == b"via the CLI"
    finally:
        stop(gateway, worker)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    service = start_service(tmp_path_factory.mktemp("tokens"), env={"DCF_TOKENS": "alpha, beta"})
    yield service
    service.stop()


def test_tokens_guard_everything_but_health(guarded):
    with guarded.channel() as channel:
        stub = dcf_pb2_grpc.GatewayStub(channel)
        request = dcf_pb2.InvokeRequest(function="hello-dcf", input=b"t")
        with pytest.raises(grpc.RpcError) as err:
            stub.Invoke(request)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            stub.Invoke(request, metadata=(("authorization", "Bearer gamma"),))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as err:
            collect_call(stub.Call(call_requests("hello-dcf", [b"x"])))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            stub.ListFunctions(dcf_pb2.ListFunctionsRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.Invoke(request, metadata=(("authorization", "Bearer beta"),)).output == b"t"
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest()).status
            == health_pb2.HealthCheckResponse.SERVING
        )

    done = run_client(
        "call", "hello-dcf", "--address", guarded.address, "--token", "alpha", stdin=b"ok"
    )
    assert done.returncode == 0 and done.stdout == b"ok", done.stderr
    done = run_client("list", "--address", guarded.address)
    assert done.returncode != 0 and done.stderr.startswith(b"error: UNAUTHENTICATED: ")


def test_metrics_move(dcf, stub):
    before = dcf.metrics_text()
    stub.Invoke(dcf_pb2.InvokeRequest(function="hello-dcf", input=b"12345"))
    with pytest.raises(grpc.RpcError):
        stub.Invoke(dcf_pb2.InvokeRequest(function="echo-small", input=b"x" * (2 << 20)))
    after = dcf.metrics_text()
    ok = {"function": "hello-dcf", "code": "OK"}
    assert (
        metric(after, "dcf_requests_total", **ok) == metric(before, "dcf_requests_total", **ok) + 1
    )
    full = {"function": "echo-small", "code": "RESOURCE_EXHAUSTED"}
    assert (
        metric(after, "dcf_requests_total", **full)
        == metric(before, "dcf_requests_total", **full) + 1
    )
    assert metric(after, "dcf_input_bytes_total", function="hello-dcf") >= 5
    assert metric(after, "dcf_output_bytes_total", function="hello-dcf") >= 5
    assert "dcf_request_duration_seconds_bucket" in after and "dcf_calls_in_flight" in after


def test_request_id_reaches_the_caller_and_the_worker_log(dcf, stub):
    _, call = stub.Invoke.with_call(
        dcf_pb2.InvokeRequest(function="hello-dcf", input=b"id"),
        metadata=(("x-request-id", "trace-me-42"),),
    )
    assert ("x-request-id", "trace-me-42") in call.trailing_metadata()
    # Failures carry it too: that is when an id is wanted most.
    with pytest.raises(grpc.RpcError) as err:
        stub.Invoke(
            dcf_pb2.InvokeRequest(function="no-such"), metadata=(("x-request-id", "lost-1"),)
        )
    assert ("x-request-id", "lost-1") in err.value.trailing_metadata()

    def lines() -> list[str]:
        return [line for line in dcf.log.read_text().splitlines() if "trace-me-42" in line]

    wait_until(lambda: len(lines()) >= 2, "the gateway's and the worker's log lines")
    assert len(lines()) == 2, lines()  # the gateway's line and the worker's, and no other


def test_sigterm_lets_a_streaming_call_finish(tmp_path):
    service = start_service(tmp_path, server={"grace_seconds": 20})
    try:
        with service.channel() as channel:
            stub = dcf_pb2_grpc.GatewayStub(channel)
            sent = threading.Event()

            def slow():
                for i in range(30):
                    if i == 3:
                        sent.set()
                    time.sleep(0.1)
                    yield b"%03d" % i

            result: dict = {}

            def run():
                try:
                    result["answer"] = collect_call(
                        stub.Call(call_requests("hello-dcf", slow()), timeout=60)
                    )
                except grpc.RpcError as exc:
                    result["error"] = exc.code().name

            thread = threading.Thread(target=run)
            thread.start()
            sent.wait(10)
            service.process.send_signal(signal.SIGTERM)
            thread.join(60)
            assert "error" not in result, result
            assert result["answer"][1] == b"".join(b"%03d" % i for i in range(30))
        assert service.process.wait(60) == 0
        assert "finishing calls in flight" in service.log.read_text()
    finally:
        service.stop()


def test_workers_exit_when_the_supervisor_is_killed(tmp_path):
    service = start_service(tmp_path)
    children = [
        int(pid)
        for pid in Path(f"/proc/{service.process.pid}/task/{service.process.pid}/children")
        .read_text()
        .split()
    ]
    assert len(children) == len(service.document["functions"])
    service.process.kill()
    service.process.wait()
    deadline = time.monotonic() + 30
    while (
        any(
            Path(f"/proc/{pid}").exists()
            and "zombie" not in Path(f"/proc/{pid}/status").read_text()
            for pid in children
        )
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    left = [
        pid
        for pid in children
        if Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
    ]
    assert not left, "orphaned workers kept running"
