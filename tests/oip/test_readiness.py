"""ModelReady follows the function's worker: a gateway and a worker of our own, then a kill."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import yaml

from protos.inference import grpc_predict_v2_pb2 as pb
from protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.support import ROOT, wait_serving, write_registry
from tests.support.oip import b64, triton, value


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_ready(stub: pb_grpc.GRPCInferenceServiceStub, name: str, want: bool, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        ready = stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=5).ready
        if ready == want or time.monotonic() > deadline:
            return ready
        time.sleep(0.1)


def test_model_ready_is_false_while_the_worker_is_down(tmp_path):
    # The packaged registry on free ports (the helper knows every port setting), cut
    # down to hello-dcf, so that ServerReady depends on this one worker only.
    config = tmp_path / "functions.yaml"
    document = write_registry(config)
    document["functions"] = {"hello-dcf": document["functions"]["hello-dcf"]}
    config.write_text(yaml.safe_dump(document))
    address = f"127.0.0.1:{document['server']['port']}"
    worker = start("worker", "hello-dcf", "--config", str(config))
    gateway = start("gateway", "--config", str(config))
    processes = [worker, gateway]
    try:
        wait_serving(address, "hello-dcf")
        ready, server_ready = triton(
            address, [{"op": "model_ready", "model": "hello-dcf"}, {"op": "server_ready"}]
        )
        assert value(ready) is True and value(server_ready) is True

        worker.kill()
        worker.wait()
        waited, server_ready, live, infer = triton(
            address,
            [
                {"op": "wait_model_ready", "model": "hello-dcf", "want": False, "timeout": 20},
                {"op": "server_ready"},
                {"op": "live"},
                {"op": "infer", "model": "hello-dcf", "data": b64(b"a"), "timeout": 20},
            ],
        )
        assert value(waited) == {"ready": False}
        assert value(server_ready) is False  # every function must be ready for the server to be
        assert value(live) is True
        assert (infer["ok"], infer["status"]) == (False, "UNAVAILABLE")
        assert "hello-dcf" in infer["message"]

        # A worker back on the same port makes the model ready again; the gateway stays up.
        processes.append(start("worker", "hello-dcf", "--config", str(config)))
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert wait_ready(stub, "hello-dcf", True, timeout=60) is True
            assert stub.ServerReady(pb.ServerReadyRequest()).ready
            request = pb.ModelInferRequest(model_name="hello-dcf")
            tensor = request.inputs.add(name="INPUT", datatype="BYTES", shape=[1])
            tensor.contents.bytes_contents.append(b"b")
            assert stub.ModelInfer(request, timeout=20).outputs[0].contents.bytes_contents == [b"b"]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
