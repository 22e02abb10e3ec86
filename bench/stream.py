"""Streaming figures: echo throughput through the gateway and straight to the worker,
and the gateway's resident memory while a gigabyte passes through it."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import grpc

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc

MiB = 1 << 20


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """Samples a process's resident memory in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval = pid, interval
        self.start = rss_bytes(pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def echo(address: str, total_bytes: int, worker: bool = False, chunk: int = MiB) -> float:
    """Stream ``total_bytes`` through hello-dcf and back; returns seconds taken."""
    block = b"\x5a" * chunk

    async def requests():
        yield dcf_pb2.CallRequest(header=dcf_pb2.CallHeader(function="hello-dcf"))
        for _ in range(total_bytes // chunk):
            yield dcf_pb2.CallRequest(chunk=block)

    async with grpc.aio.insecure_channel(address) as channel:
        stub = (dcf_pb2_grpc.WorkerStub if worker else dcf_pb2_grpc.GatewayStub)(channel)
        started = time.perf_counter()
        received = 0
        async for response in stub.Call(requests()):
            received += len(response.chunk)
        elapsed = time.perf_counter() - started
    if received != total_bytes:
        raise RuntimeError(f"echo returned {received} of {total_bytes} bytes")
    return elapsed


def throughput(
    address: str, worker_address: str, total_bytes: int = 256 * MiB, repeats: int = 3
) -> dict:
    """MB/s of the echo through the gateway and straight to the worker, best of ``repeats``."""
    via_gateway = min(asyncio.run(echo(address, total_bytes)) for _ in range(repeats))
    direct = min(
        asyncio.run(echo(worker_address, total_bytes, worker=True)) for _ in range(repeats)
    )
    mb = total_bytes / 1e6
    return {"gateway_mb_s": mb / via_gateway, "worker_mb_s": mb / direct}


def memory(address: str, gateway_pid: int, worker_pid: int, total_bytes: int = 1 << 30) -> dict:
    """Peak resident memory growth of the gateway and the worker while ``total_bytes`` pass."""
    with PeakRss(gateway_pid) as gateway, PeakRss(worker_pid) as worker:
        asyncio.run(echo(address, total_bytes))
    return {
        "gateway_start_mb": gateway.start / 1e6,
        "gateway_peak_mb": gateway.peak / 1e6,
        "worker_start_mb": worker.start / 1e6,
        "worker_peak_mb": worker.peak / 1e6,
    }
