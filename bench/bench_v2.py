"""ssd through Open Inference over HTTP (/v2 infer) beside gRPC ModelInfer, in one run.

Both go to one running service with the same image and params: the HTTP request as
``tritonclient.http`` sends it (the binary tensor data extension: the JSON, then the
image's 4-byte length and bytes; the answer asked for as binary data), ModelInfer
as Triton's gRPC clients send it (``raw_input_contents``). Behind the HTTP front
both are the same ModelInfer, so the ratio is the cost of the front: reading the
body, the JSON, a loopback gRPC call more. The calls alternate, which goes first
alternating too, so a noisy shared machine slows both alike; each repetition's
ratio is its two medians' ratio, and the figures are those ratios' median and
range. Both clients keep their connection (httpx with keep-alive, one channel).

    python -m bench.bench_v2 [--repetitions 3] [--calls 40]     # starts its own server
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx

from protos.inference import grpc_predict_v2_pb2 as pb
from protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc

THRESHOLD = 0.4
WARM_UP = 3


def grace_hopper() -> bytes:
    import matplotlib

    return (Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").read_bytes()


def _http_body(image: bytes) -> tuple[bytes, int]:
    """The body tritonclient.http sends for one BYTES input, and its JSON's length."""
    element = struct.pack("<I", len(image)) + image
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(element)},
                }
            ],
            "outputs": [{"name": "OUTPUT", "parameters": {"binary_data": True}}],
            "parameters": {"threshold": THRESHOLD},
        }
    ).encode()
    return head + element, len(head)


def run(address: str, http_url: str, image: bytes, repetitions: int = 3, calls: int = 40) -> dict:
    """ssd through /v2 infer and through ModelInfer, ``calls`` of each per repetition.

    Returns the medians (ms), each repetition's ratio of medians (v2 / ModelInfer),
    their median, min and max, and every call's time (seconds) by path.
    """
    body, head_length = _http_body(image)
    request = pb.ModelInferRequest(model_name="ssd")
    request.parameters["threshold"].double_param = THRESHOLD
    request.inputs.add(name="INPUT", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(struct.pack("<I", len(image)) + image)
    options = [("grpc.max_receive_message_length", 1 << 28)]
    with (
        httpx.Client(base_url=http_url, timeout=120) as http,
        grpc.insecure_channel(address, options=options) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        headers = {"inference-header-content-length": str(head_length)}

        def via_v2() -> bytes:
            reply = http.post("/v2/models/ssd/infer", content=body, headers=headers)
            reply.raise_for_status()
            length = int(reply.headers["inference-header-content-length"])
            return reply.content[length + 4 :]

        def via_grpc() -> bytes:
            (raw,) = stub.ModelInfer(request, timeout=120).raw_output_contents
            return raw[4:]

        if via_v2() != via_grpc():
            raise AssertionError("/v2 infer and ModelInfer answered differently")
        for _ in range(WARM_UP - 1):
            via_v2()
            via_grpc()
        paths: dict[str, Callable[[], bytes]] = {"v2": via_v2, "model_infer": via_grpc}
        times: dict[str, list[float]] = {name: [] for name in paths}
        ratios = []
        for _ in range(repetitions):
            block: dict[str, list[float]] = {name: [] for name in paths}
            for i in range(calls):
                order = list(paths) if i % 2 == 0 else list(paths)[::-1]
                for name in order:
                    started = time.perf_counter()
                    paths[name]()
                    block[name].append(time.perf_counter() - started)
            ratios.append(statistics.median(block["v2"]) / statistics.median(block["model_infer"]))
            for name in paths:
                times[name] += block[name]
    return {
        "function": "ssd",
        "input_bytes": len(image),
        "repetitions": repetitions,
        "calls_per_repetition": calls,
        "v2_p50_ms": statistics.median(times["v2"]) * 1000,
        "model_infer_p50_ms": statistics.median(times["model_infer"]) * 1000,
        "ratios": ratios,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "times": times,
    }


def table(figures: dict) -> str:
    spread = (
        f"{figures['ratio_median']:.3f}x ({figures['ratio_min']:.3f}x-{figures['ratio_max']:.3f}x)"
    )
    title = (
        f"ssd, {figures['input_bytes'] / 1024:.0f} KiB JPEG, {figures['repetitions']} "
        f"repetitions of {figures['calls_per_repetition']} calls each"
    )
    grpc_p50, v2_p50 = figures["model_infer_p50_ms"], figures["v2_p50_ms"]
    return "\n".join(
        [
            title,
            "",
            "| path | p50 (ms) | vs ModelInfer |",
            "|---|---:|---:|",
            f"| gRPC ModelInfer (raw_input_contents) | {grpc_p50:.1f} | 1.00x |",
            f"| HTTP POST /v2/models/ssd/infer (binary data) | {v2_p50:.1f} | {spread} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_v2", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--calls", type=int, default=40, help="calls of each path per repetition")
    args = parser.parse_args()

    from server.testing import start_service

    with tempfile.TemporaryDirectory(prefix="dcf-bench-v2-") as tmp:
        service = start_service(Path(tmp), args=["--log-level", "WARNING"])
        try:
            figures = run(
                service.address, service.http_url, grace_hopper(), args.repetitions, args.calls
            )
        finally:
            service.stop()
    print(table(figures))


if __name__ == "__main__":
    main()
