"""The sections of ``make bench``: each starts from the running service and returns a table.

Each compares a path with its baseline in the same run: the gateway with the worker
it fronts, a served function with the same work done in-process, one protocol with
another.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from bench import load, stream
from bench.report import Table
from server.testing import Service

MiB = 1 << 20


def child_pid(parent: int, needle: str) -> int:
    """The pid of ``parent``'s child process whose command line contains ``needle``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")
        )
        if ppid == parent and needle in cmdline:
            return int(entry.name)
    raise LookupError(f"no child of {parent} runs {needle!r}")


async def _alternate(
    paths: dict[str, Callable], calls: int, concurrency: int, rounds: int = 3
) -> dict:
    """Measure each path ``rounds`` times in turn; keep each path's best median round."""
    best: dict[str, load.Figures] = {}
    for _ in range(rounds):
        for name, one in paths.items():
            figures = await load.measure(one, calls // rounds, concurrency)
            if name not in best or figures.p50_ms < best[name].p50_ms:
                best[name] = figures
    return best


async def _gateway_overhead(service: Service, quick: bool) -> Table:
    table = Table(
        "Gateway overhead: 1 KiB echo (hello-dcf)",
        ["path", "concurrency", "p50 ms", "p99 ms", "calls/s", "p50 vs worker"],
    )
    data = os.urandom(1024)
    worker_address = service.worker_address("hello-dcf")
    async with (
        grpc.aio.insecure_channel(service.address) as gateway,
        grpc.aio.insecure_channel(worker_address) as worker,
    ):
        for concurrency in (1, 8, 32):
            calls = (150 if quick else 600) * (1 if concurrency == 1 else 2)
            paths = {
                "Call via gateway": load.call(gateway, "hello-dcf", data),
                "Invoke via gateway": load.invoke(gateway, "hello-dcf", data),
                "Call straight to worker": load.call(worker, "hello-dcf", data, worker=True),
            }
            figures = await _alternate(paths, calls, concurrency)
            base = figures["Call straight to worker"]
            for name, f in figures.items():
                table.add(
                    name, concurrency, f.p50_ms, f.p99_ms, f.per_second, f"{f.ratio(base):.2f}x"
                )
    return table


def streaming(service: Service, quick: bool) -> Table:
    table = Table(
        "Streaming: hello-dcf echo", ["figure", "via gateway", "straight to worker", "ratio"]
    )
    size = (64 if quick else 256) * MiB
    rates = stream.throughput(
        service.address, service.worker_address("hello-dcf"), size, repeats=2 if quick else 3
    )
    table.add(
        f"{size // MiB} MiB echo, MB/s",
        rates["gateway_mb_s"],
        rates["worker_mb_s"],
        f"{rates['gateway_mb_s'] / rates['worker_mb_s']:.2f}x",
    )
    worker_pid = child_pid(service.process.pid, "worker hello-dcf")
    total = (256 if quick else 1024) * MiB
    memory = stream.memory(service.address, service.process.pid, worker_pid, total)
    table.add(
        f"resident MB while {total // MiB} MiB stream (start -> peak)",
        f"{memory['gateway_start_mb']:.0f} -> {memory['gateway_peak_mb']:.0f}",
        f"{memory['worker_start_mb']:.0f} -> {memory['worker_peak_mb']:.0f}",
        "",
    )
    return table


def photo() -> bytes:
    import matplotlib

    return (Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").read_bytes()


def _timed(function: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def ssd_section(service: Service, quick: bool) -> str:
    """ssd through the gateway beside the bare decode + resize + invoke in this process."""
    from handlers import images
    from handlers.detector import Detector

    data = photo()
    options = service.document["functions"]["ssd"].get("options", {})
    detector = Detector.from_options(options, "bench")

    def bare() -> None:
        image = images.decode_image(data)
        detector.detect(image.rgb, 0.5, 20, size=(image.width, image.height))

    repeats = 40 if quick else 200
    latency = Table(
        "ssd: one image (grace_hopper.jpg, 512x600)", ["path", "p50 ms", "p95 ms", "p50 vs bare"]
    )
    scaling = Table(
        "ssd: images per second through the gateway",
        ["concurrency", "images/s", "vs concurrency 1"],
    )

    async def served() -> dict:
        async with grpc.aio.insecure_channel(service.address) as channel:
            one = load.invoke(channel, "ssd", data)
            await load.measure(one, 10, 1)  # warm up
            gateway, local = [], []
            for _ in range(4):  # alternate in blocks so noise hits both alike
                gateway += [(await _elapsed(one)) for _ in range(repeats // 4)]
                local += _timed(bare, repeats // 4)
            rates = {
                c: (await load.measure(one, (20 if quick else 60) * c, c)).per_second
                for c in (1, 2, 4, 8)
            }
            return {"gateway": gateway, "bare": local, "rates": rates}

    try:
        bare()
        figures = asyncio.run(served())
    finally:
        detector.close()
    base = statistics.median(figures["bare"])
    for name, values in (
        ("bare decode + resize + invoke", figures["bare"]),
        ("dcf.v1 Invoke via gateway", figures["gateway"]),
    ):
        median = statistics.median(values)
        latency.add(
            name, median * 1000, load.percentile(values, 0.95) * 1000, f"{median / base:.2f}x"
        )
    for concurrency, rate in figures["rates"].items():
        scaling.add(concurrency, rate, f"{rate / figures['rates'][1]:.2f}x")
    return latency.render() + "\n" + scaling.render()


async def _elapsed(one: Callable) -> float:
    started = time.perf_counter()
    await one()
    return time.perf_counter() - started


def send_wav_section(service: Service, quick: bool) -> str:
    """send-wav served through the gateway beside the original matplotlib method."""
    from bench.bench_send_wav import make_signal
    from tests.support.original_send_wav import original_method

    table = Table(
        "send-wav: time per call beside the original method (15 x 7.5 in figure, PNG, base64)",
        ["input", "served ms", "in-process handler ms", "original ms", "served / original"],
    )
    from handlers import send_wav
    from handlers.base import Params, Request

    handler = send_wav.create({})
    repeats = 3 if quick else 7
    with grpc.insecure_channel(
        service.address, options=[("grpc.max_receive_message_length", 64 * MiB)]
    ) as channel:
        from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc

        stub = dcf_pb2_grpc.GatewayStub(channel)
        for label, seconds in (("10 s of 44.1 kHz", 10.0), ("5 min of 44.1 kHz", 300.0)):
            wav = make_signal(seconds)

            def serve(wav: bytes = wav) -> object:
                return stub.Invoke(dcf_pb2.InvokeRequest(function="send-wav", input=wav))

            def local(wav: bytes = wav) -> bytes:
                return b"".join(handler.handle(Request(Params({}), iter([wav]))).parts)

            def original(wav: bytes = wav) -> object:
                return original_method(wav)

            serve(), local(), original()  # warm up
            served: list[float] = []
            handled: list[float] = []
            baseline: list[float] = []
            for _ in range(repeats):  # interleaved: noise hits all three alike
                served += _timed(serve, 1)
                handled += _timed(local, 1)
                baseline += _timed(original, 1)
            s, h, o = (statistics.median(v) * 1000 for v in (served, handled, baseline))
            table.add(label, s, h, o, f"{s / o:.3f} (1/{o / s:.1f})")
    return table.render()


def oip_section(service: Service, quick: bool) -> str:
    """ssd through Open Inference's ModelInfer beside dcf.v1 Invoke."""
    from bench.bench_oip import run

    figures = run(service.address, photo(), repeats=40 if quick else 200)
    table = Table("Open Inference Protocol: ssd, one image", ["path", "p50 ms", "vs Invoke"])
    table.add("dcf.v1 Invoke", figures["invoke_p50_s"] * 1000, "1.00x")
    table.add(
        "inference ModelInfer (raw_input_contents)",
        figures["model_infer_p50_s"] * 1000,
        f"{figures['ratio']:.3f}x",
    )
    return table.render()


def http_section(service: Service, quick: bool) -> str:
    """ssd, and a large echo, through the HTTP front beside the same through gRPC."""
    from bench.bench_http import echo_throughput, run

    figures = run(service.address, service.http_url, photo(), repeats=40 if quick else 200)
    table = Table("HTTP front: ssd, one image", ["path", "p50 ms", "vs gRPC Invoke"])
    table.add("gRPC dcf.v1 Invoke", figures["ssd_grpc_invoke_p50_ms"], "1.00x")
    table.add(
        "HTTP POST /v1/functions/ssd",
        figures["ssd_http_p50_ms"],
        f"{figures['http_over_grpc']:.3f}x",
    )
    size = (32 if quick else 128) * MiB
    rates = echo_throughput(service.address, service.http_url, size, repeats=2 if quick else 3)
    echo = Table(
        f"HTTP front: hello-dcf echo of {size // MiB} MiB", ["path", "MB/s", "vs gRPC Call"]
    )
    echo.add("gRPC dcf.v1 Call", rates["grpc_mb_s"], "1.00x")
    echo.add(
        "HTTP POST /v1/functions/hello-dcf (curl)", rates["http_mb_s"], f"{rates['ratio']:.2f}x"
    )
    return table.render() + "\n" + echo.render()


def ssd_video_section(service: Service, quick: bool) -> str:
    """ssd-video end to end beside the bare decode + 10 invokes, 640x480 clip."""
    from bench.bench_ssd_video import make_clip, run

    f = run(service.address, make_clip(), repeats=5 if quick else 20)
    table = Table("ssd-video: first 10 frames of a 640x480 clip", ["way", "ms", "vs bare"])
    table.add("bare: cv2 decode + 10 invokes, one after another", f["bare_s"] * 1000, "1.00x")
    table.add(
        "handler in process (decode overlapped with 2 interpreters)",
        f["handler_s"] * 1000,
        f"{f['handler_s'] / f['bare_s']:.2f}x",
    )
    table.add(
        "end to end: dcf.v1 Call through the gateway",
        f["e2e_s"] * 1000,
        f"{f['e2e_over_bare']:.2f}x",
    )
    table.add("end to end: first frame's result", f["first_result_s"] * 1000, "")
    return table.render()


def gateway_overhead(service: Service, quick: bool) -> str:
    return asyncio.run(_gateway_overhead(service, quick)).render()


def streaming_section(service: Service, quick: bool) -> str:
    return streaming(service, quick).render()


ALL: list[tuple[str, Callable[[Service, bool], str]]] = [
    ("gateway", gateway_overhead),
    ("streaming", streaming_section),
    ("ssd", ssd_section),
    ("send-wav", send_wav_section),
    ("ssd-video", ssd_video_section),
    ("oip", oip_section),
    ("http", http_section),
]
