"""The sections of ``make bench``: each starts from the running service and returns a table.

Each compares a path with its baseline in the same run: the gateway with the worker
it fronts, a served function with the plain script doing the same work in this
process, one protocol with another. Paths are measured alternately, in several
repetitions, and each table quotes a figure as its median over the repetitions
with the min-max range beside it (bench/spread.py): never the best repetition.

The ssd baselines are bench/bare.py: a plain interpreter on every core (the
figure's 1.00x), and the same with one thread as a second reference.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import grpc

from bench import load, stream
from bench.bare import PlainSsd, all_cores
from bench.goals import Goals
from bench.report import Table
from bench.spread import Spread, block_ratios, ratios
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


def rounds_for(quick: bool) -> int:
    """Repetitions of each measurement: enough for a range, few enough for minutes."""
    return 3 if quick else 5


async def _rounds(
    paths: dict[str, Callable], calls: int, concurrency: int, rounds: int
) -> dict[str, list[load.Figures]]:
    """Measure each path ``rounds`` times, in turn, the order reversed every other round."""
    results: dict[str, list[load.Figures]] = {name: [] for name in paths}
    for index in range(rounds):
        names = list(paths) if index % 2 == 0 else list(paths)[::-1]
        for name in names:
            results[name].append(await load.measure(paths[name], calls // rounds, concurrency))
    return results


async def _gateway_overhead(service: Service, quick: bool) -> Table:
    table = Table(
        "Gateway overhead: 1 KiB echo (hello-dcf)",
        ["path", "concurrency", "p50 ms", "p99 ms", "calls/s", "p50 vs the same to the worker"],
    )
    data = os.urandom(1024)
    worker_address = service.worker_address("hello-dcf")
    rounds = rounds_for(quick)
    async with (
        grpc.aio.insecure_channel(service.address) as gateway,
        grpc.aio.insecure_channel(worker_address) as worker,
    ):
        for concurrency in (1, 8, 32):
            calls = (150 if quick else 600) * (1 if concurrency == 1 else 2)
            paths = {
                "Call via gateway": load.call(gateway, "hello-dcf", data),
                "Call straight to worker": load.call(worker, "hello-dcf", data, worker=True),
                "Invoke via gateway": load.invoke(gateway, "hello-dcf", data),
                "Invoke straight to worker": load.invoke(worker, "hello-dcf", data, worker=True),
            }
            figures = await _rounds(paths, calls, concurrency, rounds)
            for name, runs in figures.items():
                method = name.split()[0]
                base = [f.p50_ms for f in figures[f"{method} straight to worker"]]
                table.add(
                    name,
                    concurrency,
                    Spread.of(f.p50_ms for f in runs).text(),
                    statistics.median(f.p99_ms for f in runs),
                    Spread.of(f.per_second for f in runs).text(0),
                    ratios([f.p50_ms for f in runs], base).ratio(),
                )
    return table


def gateway_overhead(service: Service, quick: bool, goals: Goals) -> str:
    return asyncio.run(_gateway_overhead(service, quick)).render()


def streaming_section(service: Service, quick: bool, goals: Goals) -> str:
    table = Table(
        "Streaming: hello-dcf echo", ["figure", "via gateway", "straight to worker", "ratio"]
    )
    size = (64 if quick else 256) * MiB
    rates = stream.throughput(
        service.address, service.worker_address("hello-dcf"), size, repeats=3 if quick else 5
    )
    ratio = ratios(rates["gateway"], rates["worker"])
    table.add(
        f"{size // MiB} MiB echo, MB/s",
        Spread.of(rates["gateway"]).text(0),
        Spread.of(rates["worker"]).text(0),
        ratio.ratio(),
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
    growth = (
        memory["gateway_peak_mb"] - memory["gateway_start_mb"],
        memory["worker_peak_mb"] - memory["worker_start_mb"],
    )
    goals.add(
        f"{size // MiB} MiB echo MB/s, gateway / straight to worker",
        ">= 0.80x, memory flat",
        ratio,
        ratio.median >= 0.8,
        f"{ratio.ratio()}; peak growth over {total // MiB} MiB: gateway {growth[0]:.0f} MB, "
        f"worker {growth[1]:.0f} MB",
    )
    return table.render()


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


async def _elapsed(one: Callable) -> float:
    started = time.perf_counter()
    await one()
    return time.perf_counter() - started


def ssd_section(service: Service, quick: bool, goals: Goals) -> str:
    """ssd through the gateway beside the plain script (decode + resize + invoke + JSON)."""
    data = photo()
    cores = all_cores()
    bare_all, bare_one = PlainSsd(cores), PlainSsd(1)
    rounds = rounds_for(quick)
    per_round = (40 if quick else 200) // rounds

    p50: dict[str, list[float]] = {"bare": [], "one thread": [], "gateway": []}
    p95: dict[str, list[float]] = {name: [] for name in p50}
    rates: dict[str | int, list[float]] = {"bare": []}  # "bare", then by concurrency

    async def served() -> None:
        async with grpc.aio.insecure_channel(service.address) as channel:
            one = load.invoke(channel, "ssd", data)
            answer = await one()
            if answer != bare_all.answer(data) or answer != bare_one.answer(data):
                raise AssertionError("ssd answered other JSON than the bare script")
            await load.measure(one, 10, 1)  # warm up
            for index in range(rounds):  # alternate in blocks so noise hits all alike
                order = ["bare", "one thread", "gateway"]
                for name in order if index % 2 == 0 else order[::-1]:
                    if name == "gateway":
                        times = [await _elapsed(one) for _ in range(per_round)]
                    else:
                        script = bare_all if name == "bare" else bare_one
                        times = _timed(partial(script.answer, data), per_round)
                    p50[name].append(statistics.median(times))
                    p95[name].append(load.percentile(times, 0.95))
            for _ in range(3 if not quick else 2):  # images per second under load
                times = _timed(partial(bare_all.answer, data), 20 if quick else 40)
                rates["bare"].append(len(times) / sum(times))
                for concurrency in (1, 2, 4, 8):
                    calls = (8 if quick else 20) * concurrency
                    rate = (await load.measure(one, calls, concurrency)).per_second
                    rates.setdefault(concurrency, []).append(rate)

    asyncio.run(served())
    latency = Table(
        "ssd: one image (grace_hopper.jpg, 512x600), one call at a time",
        ["path", "p50 ms", "p95 ms", "p50 vs bare (all cores)"],
    )
    for name, label in (
        ("bare", f"bare script, one interpreter of {cores} threads (all cores)"),
        ("one thread", "bare script, one interpreter of 1 thread"),
        ("gateway", "dcf.v1 Invoke via gateway"),
    ):
        latency.add(
            label,
            Spread.of(v * 1000 for v in p50[name]).text(),
            statistics.median(p95[name]) * 1000,
            ratios(p50[name], p50["bare"]).ratio(),
        )
    scaling = Table(
        "ssd: images per second",
        ["path", "images/s", "vs bare script's sequential rate"],
    )
    bare_rates = rates["bare"]  # each load round's, measured just before it
    scaling.add(
        f"bare script, sequential ({cores} threads)", Spread.of(rates["bare"]).text(0), "1.00x"
    )
    for concurrency in (1, 2, 4, 8):
        scaling.add(
            f"dcf.v1 Invoke via gateway, concurrency {concurrency}",
            Spread.of(rates[concurrency]).text(0),
            ratios(rates[concurrency], bare_rates).ratio(),
        )
    latency_ratio = ratios(p50["gateway"], p50["bare"])
    goals.add(
        "ssd p50 at concurrency 1, vs bare all cores",
        "<= 1.10x",
        latency_ratio,
        latency_ratio.median <= 1.1,
    )
    rate_ratio = ratios(rates[8], bare_rates)
    goals.add(
        "ssd images/s at concurrency 8, vs bare sequential",
        ">= 1.00x",
        rate_ratio,
        rate_ratio.median >= 1.0,
    )
    return latency.render() + "\n" + scaling.render()


def send_wav_section(service: Service, quick: bool, goals: Goals) -> str:
    """send-wav served through the gateway beside the original procedure, exactly."""
    from bench.bench_send_wav import make_signal
    from handlers import send_wav
    from handlers.base import Params, Request
    from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
    from tests.support.original_send_wav import original_method

    table = Table(
        "send-wav: time per call beside the original procedure "
        "(tests/support/original_send_wav.py)",
        ["input", "served ms", "in-process handler ms", "original ms", "served / original"],
    )
    handler = send_wav.create({})
    repeats = 3 if quick else 5
    with grpc.insecure_channel(
        service.address, options=[("grpc.max_receive_message_length", 64 * MiB)]
    ) as channel:
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
            ratio = ratios(served, baseline)
            table.add(
                label,
                Spread.of(v * 1000 for v in served).text(),
                Spread.of(v * 1000 for v in handled).text(),
                Spread.of(v * 1000 for v in baseline).text(),
                f"{ratio.ratio(3)} (1/{1 / ratio.median:.1f})",
            )
            if seconds == 10.0:
                goals.add(
                    "send-wav served, 10 s of 44.1 kHz, vs the original procedure",
                    "<= 0.10x",
                    ratio,
                    ratio.median <= 0.1,
                    ratio.ratio(3),
                )
    handler.close()
    return table.render()


def ssd_video_section(service: Service, quick: bool, goals: Goals) -> str:
    """ssd-video end to end beside the plain loop (decode + 10 invokes) on all cores."""
    from bench.bench_ssd_video import make_clip, run

    options = service.document["functions"]["ssd-video"].get("options", {})
    times = run(service.address, make_clip(), 5 if quick else 10, options)
    table = Table(
        "ssd-video: first 10 frames of a 640x480 clip",
        ["way", "ms", "vs bare (all cores)"],
    )
    cores = all_cores()
    for way, label in (
        ("bare", f"bare loop: cv2 decode + 10 invokes, one interpreter of {cores} threads"),
        ("bare_one_thread", "bare loop, one interpreter of 1 thread"),
        ("handler", "ssd-video handler in process (as the registry configures it)"),
        ("e2e", "end to end: dcf.v1 Call through the gateway"),
        ("first", "end to end: first frame's result"),
    ):
        table.add(
            label,
            Spread.of(v * 1000 for v in times[way]).text(),
            ratios(times[way], times["bare"]).ratio(),
        )
    ratio = ratios(times["e2e"], times["bare"])
    goals.add(
        "ssd-video, first 10 frames end to end, vs bare loop on all cores",
        "<= 1.00x",
        ratio,
        ratio.median <= 1.0,
    )
    return table.render()


def oip_section(service: Service, quick: bool, goals: Goals) -> str:
    """ssd through Open Inference's ModelInfer beside dcf.v1 Invoke."""
    from bench.bench_oip import run

    figures = run(service.address, photo(), repeats=40 if quick else 200)
    times = figures["times"]
    table = Table("Open Inference Protocol: ssd, one image", ["path", "p50 ms", "vs Invoke"])
    table.add("dcf.v1 Invoke", figures["invoke_p50_s"] * 1000, "1.00x")
    table.add(
        "inference ModelInfer (raw_input_contents)",
        figures["model_infer_p50_s"] * 1000,
        block_ratios(times["infer"], times["invoke"], rounds_for(quick)).ratio(3),
    )
    return table.render()


def http_section(service: Service, quick: bool, goals: Goals) -> str:
    """ssd, and a large echo, through the HTTP front beside the same through gRPC."""
    from bench.bench_http import echo_throughput, run

    figures = run(service.address, service.http_url, photo(), repeats=40 if quick else 200)
    times = figures["times"]
    table = Table("HTTP front: ssd, one image", ["path", "p50 ms", "vs gRPC Invoke"])
    table.add("gRPC dcf.v1 Invoke", figures["ssd_grpc_invoke_p50_ms"], "1.00x")
    table.add(
        "HTTP POST /v1/functions/ssd",
        figures["ssd_http_p50_ms"],
        block_ratios(times["http"], times["grpc"], rounds_for(quick)).ratio(3),
    )
    size = (32 if quick else 128) * MiB
    rates = echo_throughput(service.address, service.http_url, size, repeats=3)
    echo = Table(
        f"HTTP front: hello-dcf echo of {size // MiB} MiB", ["path", "MB/s", "vs gRPC Call"]
    )
    echo.add("gRPC dcf.v1 Call", Spread.of(rates["grpc_mb_s"]).text(0), "1.00x")
    echo.add(
        "HTTP POST /v1/functions/hello-dcf (curl)",
        Spread.of(rates["http_mb_s"]).text(0),
        ratios(rates["http_mb_s"], rates["grpc_mb_s"]).ratio(),
    )
    return table.render() + "\n" + echo.render()


def v2_section(service: Service, quick: bool, goals: Goals) -> str:
    """ssd through the HTTP front's Open Inference /v2 infer beside gRPC ModelInfer."""
    from bench.bench_v2 import run

    figures = run(
        service.address, service.http_url, photo(), repetitions=rounds_for(quick), calls=40
    )
    table = Table("Open Inference over HTTP: ssd, one image", ["path", "p50 ms", "vs ModelInfer"])
    table.add("gRPC inference ModelInfer", figures["model_infer_p50_ms"], "1.00x")
    table.add(
        "HTTP POST /v2/models/ssd/infer (binary tensor data)",
        figures["v2_p50_ms"],
        Spread.of(figures["ratios"]).ratio(3),
    )
    return table.render()


Section = Callable[[Service, bool, Goals], str]

ALL: list[tuple[str, Section]] = [
    ("gateway", gateway_overhead),
    ("streaming", streaming_section),
    ("ssd", ssd_section),
    ("send-wav", send_wav_section),
    ("ssd-video", ssd_video_section),
    ("oip", oip_section),
    ("http", http_section),
    ("v2", v2_section),
]
