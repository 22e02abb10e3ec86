"""A busy function queues its callers: in order, within bounds, and lets go of those who leave.

``echo-queue`` (tests/conftest.py) is hello-dcf with one slot and one place in its
queue, so every state of the queue is a call or two away; ssd-video is the real
case: four at once, and six cameras calling.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from protos.dcf.v1 import dcf_pb2
from tests.support import Service, call_requests, collect_call, media, metric

TIMEOUT = 120.0


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Held:
    """An echo-queue call whose input stays open until ``release``."""

    def __init__(self, stub, text: bytes) -> None:
        self.text = text
        self._release = threading.Event()
        self.responses = stub.Call(call_requests("echo-queue", self._chunks()), timeout=TIMEOUT)

    def _chunks(self) -> Iterator[bytes]:
        yield self.text
        self._release.wait(TIMEOUT)

    def release(self) -> bytes:
        self._release.set()
        return collect_call(self.responses)[1]


def depth(dcf: Service, name: str = "echo-queue") -> float:
    return metric(dcf.metrics_text(), "dcf_queue_depth", function=name)


def running(dcf: Service, name: str = "echo-queue") -> float:
    return metric(dcf.metrics_text(), "dcf_calls_in_flight", function=name)


def test_a_full_queue_refuses_and_a_waiting_call_runs_when_the_slot_frees(dcf, stub):
    first = Held(stub, b"first")
    wait_for(lambda: running(dcf) == 1, "the first call to run")
    second = Held(stub, b"second")
    wait_for(lambda: depth(dcf) == 1, "the second call to wait")
    with pytest.raises(grpc.RpcError) as refused:
        stub.Invoke(dcf_pb2.InvokeRequest(function="echo-queue", input=b"third"), timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details() == (
        "echo-queue: queue is full (1 calls running, 1 waiting); try again later"
    )
    assert first.release() == b"first"
    wait_for(lambda: depth(dcf) == 0, "the second call to leave the queue")
    assert second.release() == b"second"
    text = dcf.metrics_text()
    assert metric(text, "dcf_queue_wait_seconds_count", function="echo-queue") >= 2
    assert metric(text, "dcf_queue_wait_seconds_sum", function="echo-queue") > 0


def test_a_cancelled_waiting_call_leaves_the_queue_at_once(dcf, stub):
    first = Held(stub, b"first")
    wait_for(lambda: running(dcf) == 1, "the first call to run")
    waiting = Held(stub, b"waiting")
    wait_for(lambda: depth(dcf) == 1, "the second call to wait")
    waiting.responses.cancel()
    wait_for(lambda: depth(dcf) == 0, "the cancelled call to leave the queue", timeout=5)
    # Its place is free: another call waits there, and runs after the first.
    third = Held(stub, b"third")
    wait_for(lambda: depth(dcf) == 1, "the third call to wait")
    assert first.release() == b"first"
    assert third.release() == b"third"


def test_a_deadline_that_passes_in_the_queue_is_deadline_exceeded(dcf, stub):
    first = Held(stub, b"first")
    wait_for(lambda: running(dcf) == 1, "the first call to run")
    with pytest.raises(grpc.RpcError) as late:
        stub.Invoke(dcf_pb2.InvokeRequest(function="echo-queue", input=b"late"), timeout=0.5)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: depth(dcf) == 0, "the late call to leave the queue", timeout=5)
    assert first.release() == b"first"


def test_six_cameras_at_once_are_all_answered(dcf, stub):
    """ssd-video runs four calls at once; the fifth and sixth wait their turn (their uploads
    are received meanwhile, see server/worker/received.py)."""
    clip = media.video(6, (320, 240))
    alone = collect_call(stub.Call(call_requests("ssd-video", [clip]), timeout=TIMEOUT))[2]
    assert len(alone) == 7  # six frames, then the summary

    def camera(_: int) -> list[bytes]:
        pieces = [clip[i : i + 65536] for i in range(0, len(clip), 65536)]
        return collect_call(stub.Call(call_requests("ssd-video", pieces), timeout=TIMEOUT))[2]

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(camera, range(6)))
    for answer in answers:
        assert [json.loads(r) for r in answer] == [json.loads(r) for r in alone]
