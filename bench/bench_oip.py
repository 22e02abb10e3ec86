"""ssd through Open Inference's ModelInfer beside dcf.v1 Invoke, on one gateway, in one run.

Both calls carry the same image and take the same path behind the gateway
(``Gateway.invoke``), so the ratio of their medians is the cost of the Open
Inference front: the tensor framing and the parameter conversion. The calls
alternate, and which goes first alternates too, so a noisy shared machine slows
both alike. ModelInfer is sent as Triton's clients send it, with
``raw_input_contents`` (a 4-byte length, then the bytes), from our own stubs:
tritonclient's protos cannot share a process with ours.

    .venv/bin/python bench/bench_oip.py [repeats]     # starts its own server
"""

from __future__ import annotations

import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import grpc

if not __package__:  # run as a script (bench/...py): the repository root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from protos.inference import grpc_predict_v2_pb2 as pb
from protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc

THRESHOLD = 0.4
WARM_UP = 3


def grace_hopper() -> bytes:
    import matplotlib

    return (Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").read_bytes()


def run(address: str, image_bytes: bytes, repeats: int = 30) -> dict:
    """Median seconds per ssd call through ModelInfer and through Invoke, and their ratio."""
    invoke_request = dcf_pb2.InvokeRequest(
        function="ssd", input=image_bytes, params={"threshold": repr(THRESHOLD)}
    )
    infer_request = pb.ModelInferRequest(model_name="ssd")
    infer_request.parameters["threshold"].double_param = THRESHOLD
    infer_request.inputs.add(name="INPUT", datatype="BYTES", shape=[1])
    infer_request.raw_input_contents.append(struct.pack("<I", len(image_bytes)) + image_bytes)

    options = [
        ("grpc.max_receive_message_length", 1 << 28),
        ("grpc.max_send_message_length", 1 << 28),
    ]
    with grpc.insecure_channel(address, options=options) as channel:
        gateway = dcf_pb2_grpc.GatewayStub(channel)
        inference = pb_grpc.GRPCInferenceServiceStub(channel)

        def invoke() -> bytes:
            return gateway.Invoke(invoke_request, timeout=120).output

        def infer() -> bytes:
            (raw,) = inference.ModelInfer(infer_request, timeout=120).raw_output_contents
            return raw[4:]

        for _ in range(WARM_UP):
            same = invoke() == infer()
        if not same:
            raise AssertionError("ModelInfer and Invoke answered differently")

        times: dict[str, list[float]] = {"infer": [], "invoke": []}
        calls = {"infer": infer, "invoke": invoke}
        for i in range(repeats):
            order = ("infer", "invoke") if i % 2 == 0 else ("invoke", "infer")
            for name in order:
                started = time.perf_counter()
                calls[name]()
                times[name].append(time.perf_counter() - started)

    infer_p50, invoke_p50 = statistics.median(times["infer"]), statistics.median(times["invoke"])
    return {
        "function": "ssd",
        "input_bytes": len(image_bytes),
        "repeats": repeats,
        "model_infer_p50_s": infer_p50,
        "invoke_p50_s": invoke_p50,
        "ratio": infer_p50 / invoke_p50,
        "times": times,  # seconds per call, call by call: index i of both ran back to back
    }


def table(row: dict) -> str:
    return "\n".join(
        [
            "| call | p50 (ms) |",
            "|---|---:|",
            (
                f"| dcf.v1 Invoke, ssd, {row['input_bytes'] / 1024:.0f} KiB JPEG "
                f"| {row['invoke_p50_s'] * 1000:.1f} |"
            ),
            f"| Open Inference ModelInfer, same | {row['model_infer_p50_s'] * 1000:.1f} |",
            f"| ModelInfer / Invoke ({row['repeats']} calls each) | {row['ratio']:.3f} |",
        ]
    )


def main() -> None:
    from server.testing import start_service

    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    with tempfile.TemporaryDirectory() as tmp:
        service = start_service(Path(tmp))
        try:
            print(table(run(service.address, grace_hopper(), repeats)))
        finally:
            service.stop()


if __name__ == "__main__":
    main()
