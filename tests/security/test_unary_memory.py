"""Large unary calls cost the gateway bounded memory, and it is given back.

Eight 64 MiB Invoke calls at once, for an unknown function and then for the echo,
took the gateway from about 200 MB to over 2 GB, and it kept most of it. Now the
decoded copies are bounded by the unary budget (``max_unary_bytes``: calls past it
are refused, RESOURCE_EXHAUSTED, before they are decoded), and the memory comes
back once the calls are over.
"""

from __future__ import annotations

import concurrent.futures
import os
import time

import grpc
import pytest

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from tests.support import memory, start_service
from tests.support.reliability import MB, rss

# What the gateway may hold at the peak of the eight calls, and keep after them.
PEAK_LIMIT = 1200 * MB
KEPT_LIMIT = 120 * MB
BIG = 64 << 20


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    service = start_service(tmp_path_factory.mktemp("unary"), args=["--no-http"])
    yield service
    service.stop()


def invoke(address: str, name: str, data: bytes) -> str:
    options = [
        ("grpc.max_send_message_length", 1 << 28),
        ("grpc.max_receive_message_length", 1 << 28),
    ]
    with grpc.insecure_channel(address, options=options) as channel:
        try:
            reply = dcf_pb2_grpc.GatewayStub(channel).Invoke(
                dcf_pb2.InvokeRequest(function=name, input=data), timeout=120
            )
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return "OK" if reply.output == data else f"OK but {len(reply.output)} bytes"


def test_eight_64_mib_invokes_at_once_are_bounded_and_given_back(gateway):
    pid = gateway.process.pid
    baseline = rss(pid)
    data = os.urandom(BIG)
    for name in ("no-such-function", "hello-dcf"):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            outcomes = list(
                pool.map(lambda _, name=name: invoke(gateway.address, name, data), range(8))
            )
        print(f"\n{name}: {outcomes}")
        for outcome in outcomes:
            assert outcome == "OK" or outcome.startswith(("NOT_FOUND", "RESOURCE_EXHAUSTED")), (
                outcome
            )
        if name == "hello-dcf":
            assert "OK" in outcomes, "no echo was let through"
            refused = [o for o in outcomes if o.startswith("RESOURCE_EXHAUSTED")]
            assert all("unary calls in flight hold" in o for o in refused), refused
    deadline = time.monotonic() + 20
    while rss(pid) - baseline > KEPT_LIMIT and time.monotonic() < deadline:
        time.sleep(0.2)
    kept, highest = rss(pid) - baseline, memory(pid)["VmHWM"]
    print(
        f"gateway RSS: baseline {baseline // MB} MB, peak {highest // MB} MB, kept {kept // MB} MB"
    )
    assert highest < PEAK_LIMIT, highest // MB
    assert kept < KEPT_LIMIT, kept // MB
    # A payload the size limit allows is served on an idle gateway, however large.
    assert invoke(gateway.address, "hello-dcf", data) == "OK"
