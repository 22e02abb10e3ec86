"""Reliability tests: fuzzed input, load, and callers that go away, against a real service.

Shared helpers: a call's outcome as one value (whichever way it ended), and what
the tests read from the running processes (RSS, threads, worker pids, metrics).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from protos.dcf.v1.calls import call_requests
from tests.support import Service

# The codes a caller may ever see for its own input: anything else is a bug.
ACCEPTABLE = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}


@dataclass
class Outcome:
    """How one call ended: a status code name and message, and what came back."""

    code: str
    message: str = ""
    content_type: str = ""
    body: bytes = b""
    results: list[bytes] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        return f"{self.code}: {self.message[:200]!r} ({self.seconds:.2f} s)"


def invoke(
    stub: dcf_pb2_grpc.GatewayStub,
    function: str,
    data: bytes,
    params: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Outcome:
    started = time.monotonic()
    request = dcf_pb2.InvokeRequest(function=function, input=data, params=dict(params or {}))
    try:
        reply = stub.Invoke(request, timeout=timeout)
    except grpc.RpcError as exc:
        return Outcome(exc.code().name, exc.details() or "", seconds=time.monotonic() - started)
    return Outcome("OK", "", reply.content_type, reply.output, seconds=time.monotonic() - started)


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def call(
    stub: dcf_pb2_grpc.GatewayStub,
    function: str,
    chunks: Iterable[bytes],
    params: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    collect: bool = False,
    stream=None,
) -> Outcome:
    """One Call; a ``failure`` record, if one comes, is the outcome (and must match the status)."""
    started = time.monotonic()
    outcome = Outcome("OK")
    body: list[bytes] = []
    announced: dcf_pb2.CallFailure | None = None
    messages = (
        stream if stream is not None else call_requests(function, chunks, params, collect=collect)
    )
    try:
        for response in stub.Call(messages, timeout=timeout):
            kind = response.WhichOneof("kind")
            if kind == "header":
                outcome.content_type = response.header.content_type
            elif kind == "chunk":
                body.append(response.chunk)
            elif kind == "result":
                outcome.results.append(response.result)
            elif kind == "failure":
                announced = response.failure
    except grpc.RpcError as exc:
        outcome.code, outcome.message = exc.code().name, exc.details() or ""
        if announced is not None and announced.code != outcome.code:
            # Record what the stream announced beside the status that ended it.
            outcome.message += f" [failure record said {announced.code}: {announced.message}]"
            outcome.code = f"{outcome.code}!={announced.code}"
    else:
        if announced is not None:
            outcome.code = f"OK-after-failure-{announced.code}"
    outcome.body = b"".join(body)
    outcome.seconds = time.monotonic() - started
    return outcome


def health(service: Service, names: Iterable[str]) -> dict[str, str]:
    """The gateway's health status of each function (what a load balancer sees)."""
    status = {}
    with grpc.insecure_channel(service.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in names:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
                status[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                status[name] = exc.code().name
    return status


# -- the processes ---------------------------------------------------------------------------

_STARTED = re.compile(r"worker (\S+) started \(pid (\d+), port \d+\)")


def worker_pids(service: Service) -> dict[str, int]:
    """Function name -> pid of its worker process now (the last start in the log)."""
    pids: dict[str, int] = {}
    for match in _STARTED.finditer(service.log.read_text(errors="replace")):
        pids[match.group(1)] = int(match.group(2))
    return pids


def worker_starts(service: Service) -> int:
    return len(_STARTED.findall(service.log.read_text(errors="replace")))


def rss(pid: int) -> int:
    """Resident set size in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# gRPC core's EventEngine pool names its threads "event_engine". It is elastic: its
# lifeguard adds a thread whenever the pool looks backlogged (as a loaded 2-core
# machine makes it look) and reclaims each extra one after 20 s idle (kIdleThreadLimit
# in work_stealing_thread_pool.cc), so its size says nothing about our code.
GRPC_POOL_THREAD = "event_engine"
GRPC_POOL_IDLE_LIMIT = 20.0


def thread_count(pid: int) -> tuple[int, int]:
    """(threads of the process outside gRPC core's elastic pool, threads in that pool)."""
    names = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as comm:
                names.append(comm.read().strip())
        except FileNotFoundError:  # the thread ended while we listed them
            continue
    pooled = names.count(GRPC_POOL_THREAD)
    return len(names) - pooled, pooled


def log_since(service: Service, offset: int) -> str:
    with service.log.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def log_size(service: Service) -> int:
    return service.log.stat().st_size


MB = 1 << 20
