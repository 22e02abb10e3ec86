"""One block: a server up, every figure of issue 16 measured on it, the server stopped.

The bare script runs in this process within the same block, between the served
calls, so that each block's ratio to bare compares two things that met the same
noise. Every server must answer ssd with exactly the bare script's JSON, and the
echo with exactly its input, or the block fails.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench import load, stream
from bench.bare import PlainSsd
from bench.peers import clients
from bench.peers.targets import DcfService, Running, Target

KiB = 1024
MiB = 1 << 20


@dataclass(frozen=True)
class Sizes:
    """How much each block measures (``quick``: a smoke run, figures not to quote)."""

    ssd_calls: int  # at concurrency 1, and as many bare ones, in sub-blocks of 4
    ssd_load_calls: int  # at concurrency 8
    echo_calls: int  # 1 KiB echo at concurrency 1
    echo_load_calls: int  # at concurrency 8
    big_echo: int  # bytes of the big echo
    repeats: int  # send-wav and ssd-video repeats (dcf only)

    @classmethod
    def for_run(cls, quick: bool) -> Sizes:
        if quick:
            return cls(16, 48, 100, 400, 32 * MiB, 2)
        return cls(60, 160, 400, 1600, 256 * MiB, 3)


@dataclass(frozen=True)
class Inputs:
    """What every block sends, made once per run."""

    photo: bytes
    expected_ssd: bytes  # the bare script's answer
    wav: bytes  # 10 s of 44.1 kHz
    clip: bytes  # 640x480 mp4v


def _timed(function: Callable[[], object], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


async def _served(
    target: Target, server: Running, inputs: Inputs, bare: PlainSsd, sizes: Sizes
) -> dict[str, float]:
    figures: dict[str, float] = {}
    async with grpc.aio.insecure_channel(server.address, options=clients.BIG_MESSAGES) as channel:
        ssd = target.ssd(channel, inputs.photo)
        answer = await ssd()
        if answer != inputs.expected_ssd:
            raise AssertionError(f"{target.name}'s ssd answer is not the bare script's: {answer!r}")
        await load.measure(ssd, 10, 1)  # warm up
        served: list[float] = []
        plain: list[float] = []
        for _ in range(4):  # alternate in sub-blocks so noise hits both alike
            plain += _timed(lambda: bare.answer(inputs.photo), sizes.ssd_calls // 4)
            for _ in range(sizes.ssd_calls // 4):
                started = time.perf_counter()
                await ssd()
                served.append(time.perf_counter() - started)
        figures["ssd_p50_ms"] = statistics.median(served) * 1000
        figures["bare_p50_ms"] = statistics.median(plain) * 1000
        figures["bare_rate"] = len(plain) / sum(plain)
        await load.measure(ssd, 16, 8)  # warm up: connections, threads, interpreters
        figures["ssd_rate_c8"] = (await load.measure(ssd, sizes.ssd_load_calls, 8)).per_second

        payload = bytes(range(256)) * (KiB // 256)
        echo = target.echo(channel, payload)
        if await echo() != payload:
            raise AssertionError(f"{target.name} echoed other bytes than it was sent")
        await load.measure(echo, 50, 1)  # warm up
        figures["echo_p50_ms"] = (await load.measure(echo, sizes.echo_calls, 1)).p50_ms
        await load.measure(echo, 80, 8)  # warm up
        figures["echo_rate_c8"] = (await load.measure(echo, sizes.echo_load_calls, 8)).per_second
    return figures


def _dcf_only(server: DcfService, inputs: Inputs, sizes: Sizes) -> dict[str, float]:
    """The goals that only dcf serves: the echo straight to the worker, send-wav, ssd-video."""
    from bench.bench_ssd_video import run as ssd_video_run
    from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
    from tests.support.original_send_wav import original_method

    service = server.service
    figures: dict[str, float] = {}
    worker = service.worker_address("hello-dcf")
    # As the echo through the gateway is measured (``measure``): with the server's memory
    # sampled meanwhile, which costs the measuring process as much either way.
    with stream.PeakRss(server.pid, tree=True):
        seconds = asyncio.run(stream.echo(worker, sizes.big_echo, worker=True))
    figures["worker_mb_s"] = sizes.big_echo / 1e6 / seconds

    with grpc.insecure_channel(
        server.address, options=[("grpc.max_receive_message_length", 64 * MiB)]
    ) as channel:
        stub = dcf_pb2_grpc.GatewayStub(channel)
        request = dcf_pb2.InvokeRequest(function="send-wav", input=inputs.wav)
        stub.Invoke(request), original_method(inputs.wav)  # warm up
        served, original = [], []
        for _ in range(sizes.repeats):
            served += _timed(lambda: stub.Invoke(request), 1)
            original += _timed(lambda: original_method(inputs.wav), 1)
    figures["send_wav_ratio"] = statistics.median(served) / statistics.median(original)

    options = service.document["functions"]["ssd-video"].get("options", {})
    times = ssd_video_run(server.address, inputs.clip, sizes.repeats, options)
    figures["ssd_video_ratio"] = statistics.median(times["e2e"]) / statistics.median(times["bare"])
    return figures


def measure(target: Target, inputs: Inputs, bare: PlainSsd, sizes: Sizes) -> dict[str, float]:
    """Start ``target``, measure every figure, stop it; the figures by name."""
    with tempfile.TemporaryDirectory(prefix="dcf-peers-") as folder:
        server = target.start(Path(folder) / "server")
        try:
            figures = asyncio.run(_served(target, server, inputs, bare, sizes))
            # The big echo's memory: the server and all its processes together.
            with stream.PeakRss(server.pid, tree=True) as rss:
                seconds = target.big_echo(server.address, sizes.big_echo)
            figures["big_mb_s"] = sizes.big_echo / 1e6 / seconds
            figures["big_rss_growth_mb"] = rss.growth / 1e6
            if isinstance(server, DcfService):
                figures.update(_dcf_only(server, inputs, sizes))
        finally:
            server.stop()
    return figures
