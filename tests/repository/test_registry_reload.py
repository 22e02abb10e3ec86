"""The gateway role reads its registry file again when it changes, as a Kubernetes
ConfigMap update rewrites it: functions added and removed with no restart."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import yaml

from tests.support import call_requests, collect_call, free_port, spawn_server, wait_serving

PATIENCE = 120.0


def write_atomically(path: Path, document: dict) -> None:
    """Replace the file in one step, as the kubelet swaps a ConfigMap's files."""
    temporary = path.with_suffix(".next")
    temporary.write_text(yaml.safe_dump(document))
    os.replace(temporary, path)


def answer(channel: grpc.Channel, name: str, data: bytes) -> tuple[str, bytes]:
    """("OK", the answer), or the status code's name and its message."""
    from protos.dcf.v1 import dcf_pb2_grpc

    stub = dcf_pb2_grpc.GatewayStub(channel)
    try:
        return "OK", collect_call(stub.Call(call_requests(name, [data]), timeout=30))[1]
    except grpc.RpcError as exc:
        return exc.code().name, (exc.details() or "").encode()


def wait_answer(channel: grpc.Channel, name: str, data: bytes, expected: tuple[str, bytes]):
    deadline = time.monotonic() + PATIENCE
    while (got := answer(channel, name, data)) != expected:
        assert time.monotonic() < deadline, f"{name}: still {got}, waiting for {expected}"
        time.sleep(0.1)


def test_a_changed_registry_file_adds_and_removes_functions(tmp_path: Path):
    gateway_port, metrics_port = free_port(), free_port()
    first, second = free_port(), free_port()
    registry = tmp_path / "functions.yaml"
    server = {"port": gateway_port, "metrics_port": metrics_port}
    hello = {"handler": "handlers.hello", "workers": [f"127.0.0.1:{first}"]}
    write_atomically(registry, {"server": server, "functions": {"hello-dcf": hello}})
    log = tmp_path / "server.log"
    config = ["--config", str(registry)]
    processes = [
        spawn_server(["worker", "hello-dcf", "--port", str(first), *config], log),
        spawn_server(["gateway", *config], log),
    ]
    gateway = processes[1]
    try:
        address = f"127.0.0.1:{gateway_port}"
        wait_serving(address, "hello-dcf", timeout=PATIENCE)
        with grpc.insecure_channel(address) as channel:
            assert answer(channel, "hello-dcf", b"one") == ("OK", b"one")
            assert answer(channel, "echo-two", b"two")[0] == "NOT_FOUND"

            # Added: a function with a worker of its own, and an alias of hello-dcf.
            two = {"handler": "handlers.hello", "workers": [f"127.0.0.1:{second}"]}
            functions = {"hello-dcf": {**hello, "aliases": ["hi"]}, "echo-two": two}
            write_atomically(registry, {"server": server, "functions": functions})
            processes.append(
                spawn_server(["worker", "echo-two", "--port", str(second), *config], log)
            )
            wait_answer(channel, "echo-two", b"two", ("OK", b"two"))
            assert answer(channel, "hi", b"alias") == ("OK", b"alias")

            # A file that does not load changes nothing.
            registry.write_text("functions: [not, a, mapping]\n")
            deadline = time.monotonic() + PATIENCE
            while f"registry {registry} refused" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            assert answer(channel, "hi", b"kept") == ("OK", b"kept")

            # Removed.
            write_atomically(registry, {"server": server, "functions": {"echo-two": two}})
            wait_answer(
                channel,
                "hello-dcf",
                b"gone",
                ("NOT_FOUND", b"no function named 'hello-dcf' (known: echo-two)"),
            )
            assert answer(channel, "echo-two", b"still") == ("OK", b"still")
        assert gateway.poll() is None  # the same gateway process throughout
        lines = log.read_text().splitlines()
        refused = [line for line in lines if f"registry {registry} refused" in line]
        assert len(refused) == 1 and "functions: expected a mapping" in refused[0], refused
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
