"""Latency and throughput of a call made many times, at a given concurrency.

The caller gives a coroutine function doing one call; ``measure`` runs it
``calls`` times from ``concurrency`` tasks on one event loop and reports the
median and tail latency and the calls per second. Paths being compared are
measured in the same run, alternately, so a busy shared machine slows both alike.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc


@dataclass
class Figures:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    per_second: float

    def ratio(self, baseline: Figures) -> float:
        return self.p50_ms / baseline.p50_ms


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(
    call: Callable[[], Awaitable[object]], calls: int, concurrency: int = 1
) -> Figures:
    latencies: list[float] = []
    remaining = calls

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return Figures(
        p50_ms=statistics.median(latencies) * 1000,
        p95_ms=percentile(latencies, 0.95) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        per_second=len(latencies) / elapsed,
    )


def invoke(
    channel: grpc.aio.Channel,
    function: str,
    data: bytes,
    params: dict | None = None,
    worker: bool = False,
):
    """A coroutine function making one dcf.v1 Invoke, through the gateway or straight to
    a worker (Worker.Invoke, as the gateway makes it)."""
    stub = (dcf_pb2_grpc.WorkerStub if worker else dcf_pb2_grpc.GatewayStub)(channel)
    request = dcf_pb2.InvokeRequest(function=function, input=data, params=params or {})

    async def one() -> bytes:
        return (await stub.Invoke(request)).output

    return one


def call(
    channel: grpc.aio.Channel,
    function: str,
    data: bytes,
    worker: bool = False,
    collect: bool = False,
):
    """A coroutine function making one streaming Call, to the gateway or straight to a worker."""
    stub = (dcf_pb2_grpc.WorkerStub if worker else dcf_pb2_grpc.GatewayStub)(channel)
    header = dcf_pb2.CallHeader(function=function, collect=collect)
    requests = [dcf_pb2.CallRequest(header=header)]
    requests += [
        dcf_pb2.CallRequest(chunk=data[i : i + (1 << 20)]) for i in range(0, len(data), 1 << 20)
    ]

    async def one() -> int:
        received = 0
        async for response in stub.Call(iter(requests)):
            if response.WhichOneof("kind") == "failure":
                raise RuntimeError(response.failure.message)
            received += len(response.chunk) + len(response.result)
        return received

    return one
