"""ssd through the HTTP front beside the same call through gRPC Invoke, in one run.

Both go to the same running service, with the same image, interleaved call by call,
so a noisy shared machine slows them alike and the ratio stays meaningful. Both
clients keep their connection open (an httpx client with keep-alive, one gRPC
channel), as a real caller would; the first calls of each are warm-up.

    .venv/bin/python bench/bench_http.py GRPC_HOST:PORT HTTP_HOST:PORT [IMAGE] [repeats]
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from pathlib import Path

import grpc
import httpx

if not __package__:  # run as a script (bench/...py): the repository root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc

WARM_UP = 3


def run(address_grpc: str, address_http: str, image_bytes: bytes, repeats: int = 30) -> dict:
    """p50 (ms) of ssd through HTTP POST and through gRPC Invoke, and their ratio."""
    base = address_http if "://" in address_http else f"http://{address_http}"
    with (
        httpx.Client(base_url=base, timeout=60) as http,
        grpc.insecure_channel(address_grpc) as channel,
    ):
        stub = dcf_pb2_grpc.GatewayStub(channel)
        request = dcf_pb2.InvokeRequest(function="ssd", input=image_bytes)

        def via_http() -> bytes:
            reply = http.post("/v1/functions/ssd", content=image_bytes)
            reply.raise_for_status()
            return reply.content

        def via_grpc() -> bytes:
            return stub.Invoke(request, timeout=60).output

        answers = {via_http(), via_grpc()}
        if len(answers) != 1:
            raise RuntimeError("ssd answered differently through HTTP and gRPC")
        for _ in range(WARM_UP - 1):
            via_http()
            via_grpc()
        times: dict[str, list[float]] = {"http": [], "grpc": []}
        for i in range(repeats):
            # Alternate which goes first, so neither always follows the other.
            order = (("http", via_http), ("grpc", via_grpc))
            for name, call in order if i % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    http_ms = statistics.median(times["http"]) * 1000
    grpc_ms = statistics.median(times["grpc"]) * 1000
    return {
        "ssd_http_p50_ms": round(http_ms, 2),
        "ssd_grpc_invoke_p50_ms": round(grpc_ms, 2),
        "http_over_grpc": round(http_ms / grpc_ms, 3),
        "repeats": repeats,
        "times": times,  # seconds per call, call by call: index i of both ran back to back
    }


def echo_throughput(
    address_grpc: str, address_http: str, total_bytes: int, repeats: int = 3
) -> dict:
    """MB/s of a hello-dcf echo through the HTTP front and through gRPC Call, one of each a repeat.

    The HTTP client is curl, which reads the answer while it sends the body, as an
    echo needs (httpx and browsers send the whole body first, and a large echo then
    stalls on flow control). The two alternate, so both meet the same noise.
    """
    import asyncio
    import subprocess
    import tempfile

    from bench.stream import echo

    curl = shutil.which("curl")
    if curl is None:
        raise RuntimeError("the HTTP echo figure needs curl (apt-get install curl)")
    base = address_http if "://" in address_http else f"http://{address_http}"
    with tempfile.NamedTemporaryFile(prefix="dcf-bench-echo-") as body:
        body.write(b"\x5a" * total_bytes)
        body.flush()

        def via_http() -> float:
            started = time.perf_counter()
            done = subprocess.run(
                [
                    curl,
                    "-sS",
                    "--fail",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{size_download}",
                    "-H",
                    "content-type: application/octet-stream",
                    "--data-binary",
                    f"@{body.name}",
                    f"{base}/v1/functions/hello-dcf",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            elapsed = time.perf_counter() - started
            if done.returncode != 0 or done.stdout.strip() != str(total_bytes):
                raise RuntimeError(f"HTTP echo failed: {done.stderr.strip() or done.stdout}")
            return elapsed

        times: dict[str, list[float]] = {"http": [], "grpc": []}
        for _ in range(repeats):
            times["http"].append(via_http())
            times["grpc"].append(asyncio.run(echo(address_grpc, total_bytes)))
    mb = total_bytes / 1e6
    return {
        "http_mb_s": [mb / seconds for seconds in times["http"]],
        "grpc_mb_s": [mb / seconds for seconds in times["grpc"]],
    }


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    image = Path(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] else None
    if image is None:
        import matplotlib

        image = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 30
    print(run(sys.argv[1], sys.argv[2], image.read_bytes(), count))
