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
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone meanwhile
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and every process under it (a server's workers, theirs...)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except OSError:
                continue
    return found


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, added up."""
    return sum(rss_bytes(each) for each in descendants(pid))


class PeakRss:
    """Samples a process's resident memory in a thread; ``peak`` is the largest seen.

    ``tree`` adds up the process and its descendants (a server and its workers).
    """

    def __init__(self, pid: int, interval: float = 0.02, tree: bool = False) -> None:
        self.pid, self.interval = pid, interval
        self.measure = tree_rss_bytes if tree else rss_bytes
        self.start = self.measure(pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.measure(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        """Bytes from the start to the peak."""
        return self.peak - self.start


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
) -> dict[str, list[float]]:
    """MB/s of the echo through the gateway and straight to the worker, one of each per repeat.

    The two alternate, and which goes first alternates too, so both meet the same noise.
    """
    mb = total_bytes / 1e6
    rates: dict[str, list[float]] = {"gateway": [], "worker": []}
    for i in range(repeats):
        order = ("gateway", "worker") if i % 2 == 0 else ("worker", "gateway")
        for path in order:
            target = address if path == "gateway" else worker_address
            seconds = asyncio.run(echo(target, total_bytes, worker=path == "worker"))
            rates[path].append(mb / seconds)
    return rates


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
