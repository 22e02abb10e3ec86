"""hello-dcf's worst legal input: as many large echoes as it takes at once, in bounded memory.

hello-dcf has no input limit, so its worst case is the number of calls, not their
size: each holds a few chunks and gRPC's windows while it echoes (about 10 MB). Its
registry runs 16 at once; sixteen 32 MiB echoes at once must stay under its 256 Mi
limit, and the worker must come back near where it was.
"""

from __future__ import annotations

import concurrent.futures
import os
import time

import grpc

from protos.dcf.v1 import dcf_pb2_grpc
from tests.support import call_requests, collect_call, memory
from tests.support.reliability import MB, rss, worker_pids

LIMIT = 256 * MB  # docker/k8s/40-hello-dcf.yaml
CALLS = 16
SIZE = 32 << 20


def test_sixteen_large_echoes_at_once_stay_bounded(dcf):
    pid = worker_pids(dcf)["hello-dcf"]
    baseline = rss(pid)
    data = os.urandom(SIZE)
    pieces = [data[i : i + (1 << 20)] for i in range(0, SIZE, 1 << 20)]

    def echo(_: int) -> bool:
        with grpc.insecure_channel(dcf.address) as channel:
            responses = dcf_pb2_grpc.GatewayStub(channel).Call(
                call_requests("hello-dcf", pieces), timeout=120
            )
            return collect_call(responses)[1] == data

    with concurrent.futures.ThreadPoolExecutor(CALLS) as pool:
        assert all(pool.map(echo, range(CALLS)))
    highest = memory(pid)["VmHWM"]
    deadline = time.monotonic() + 20
    while rss(pid) - baseline > 80 * MB and time.monotonic() < deadline:
        time.sleep(0.2)
    print(
        f"\nhello-dcf worker: baseline {baseline // MB} MB, peak {highest // MB} MB, "
        f"after {rss(pid) // MB} MB ({CALLS} x {SIZE // MB} MiB echoes at once)"
    )
    assert highest < LIMIT
    assert rss(pid) - baseline < 80 * MB
