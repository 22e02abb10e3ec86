"""Ready means ready: a call made the moment the gateway listens is answered, not refused.

``python -m server`` starts its workers and the gateway together; ssd's worker needs
seconds to load TensorFlow and its model. Until every worker answers, the gateway's
overall health ("") says NOT_SERVING and its "serving" line is not logged; calls that
come early wait for their worker, within their deadline. A worker restarted by the
supervisor is waited for the same way.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from tests.support import ROOT, media, wait_serving, write_registry

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def status(channel: grpc.Channel, service: str) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return reply.status


@pytest.fixture(scope="module")
def starting(tmp_path_factory):
    """A ``python -m server`` just launched: (process, address, log path, launch time)."""
    folder = tmp_path_factory.mktemp("startup")
    config = folder / "functions.yaml"
    document = write_registry(config)
    log = folder / "server.log"
    launched = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--config", str(config), "--no-http"],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    port = document["server"]["port"]
    try:
        yield process, port, log, launched
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_call_made_as_soon_as_the_port_accepts_is_answered(starting):
    process, port, log, launched = starting
    deadline = time.monotonic() + 60
    while not accepts(port):
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the gateway never listened"
        time.sleep(0.01)
    listening = time.monotonic() - launched
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        # Before ssd's worker is up, the gateway as a whole is not ready either.
        if status(channel, "ssd") != SERVING:
            assert status(channel, "") == NOT_SERVING
            assert "dcf gateway serving" not in log.read_text()
        stub = dcf_pb2_grpc.GatewayStub(channel)
        reply = stub.Invoke(dcf_pb2.InvokeRequest(function="ssd", input=media.photo()), timeout=120)
        answered = time.monotonic() - launched
        boxes = json.loads(reply.output)
        assert any(d["label"] == "person" for d in boxes["detections"]), boxes
        wait_serving(f"127.0.0.1:{port}", "", timeout=60)
    text = log.read_text()
    serving = re.search(r"dcf gateway serving on 127\.0\.0\.1:\d+: (.*)", text)
    assert serving and set(serving.group(1).split(", ")) >= {
        "hello-dcf",
        "ssd",
        "send-wav",
        "ssd-video",
    }
    # ssd's and ssd-video's workers each load the model before the gateway serves.
    assert text[: serving.start()].count("SSD model loaded") == 2, text
    assert "UNAVAILABLE" not in text
    print(f"\nlaunch -> port accepts {listening:.2f} s -> first ssd answer {answered:.2f} s")


def test_calls_wait_for_a_worker_the_supervisor_restarts(starting):
    _process, port, log, _ = starting
    wait_serving(f"127.0.0.1:{port}", "", timeout=120)
    pid = int(re.findall(r"worker ssd started \(pid (\d+)", log.read_text())[-1])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = dcf_pb2_grpc.GatewayStub(channel)
        os.kill(pid, signal.SIGKILL)
        # Until the supervisor sees the death, the worker may look alive: a call may
        # fail on the dead one. Once it has seen it, calls wait for the new worker.
        deadline = time.monotonic() + 10
        while "worker ssd exited" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.01)
        reply = stub.Invoke(dcf_pb2.InvokeRequest(function="ssd", input=media.photo()), timeout=120)
        assert json.loads(reply.output)["detections"]
        # A deadline shorter than the restart is DEADLINE_EXCEEDED, not UNAVAILABLE.
        pid = int(re.findall(r"worker ssd started \(pid (\d+)", log.read_text())[-1])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while log.read_text().count("worker ssd exited") < 2:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as late:
            stub.Invoke(dcf_pb2.InvokeRequest(function="ssd", input=media.photo()), timeout=0.5)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        reply = stub.Invoke(dcf_pb2.InvokeRequest(function="ssd", input=media.photo()), timeout=120)
        assert json.loads(reply.output)["detections"]
