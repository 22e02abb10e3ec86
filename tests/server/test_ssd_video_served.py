"""ssd-video through the whole service: gateway, worker process, real model, real videos.

The service here is our own, started with DCF_SPOOL_DIR pointing at a directory
the tests watch, so they can see that every call cleans up after itself. Uploads
and videos may sit there in files with a name or without one (unlinked as they
are made), so "the worker holds a file there" is read from /proc/PID/fd.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from protos.dcf.v1 import dcf_pb2
from server.testing import Service, start_service
from tests.support import ROOT, call_requests, collect_call
from tests.support.media import make_video

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ssd-video-spool")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, spool: Path) -> Iterator[Service]:
    running = start_service(
        tmp_path_factory.mktemp("ssd-video-service"), env={"DCF_SPOOL_DIR": str(spool)}
    )
    yield running
    running.stop()


@pytest.fixture
def gateway(service: Service, spool: Path) -> Iterator:
    with service.channel() as channel:
        yield service.gateway(channel)
    # Every test: nothing left behind once its calls are over, named or not.
    wait_until(lambda: not list(spool.iterdir()), "the spool dir to be empty")
    wait_until(lambda: not held_in(service, spool), "the worker to close its spool files")


def held_in(service: Service, folder: Path) -> list[str]:
    """The files in ``folder`` the ssd-video worker has open now (deleted ones too)."""
    pids = re.findall(r"worker ssd-video started \(pid (\d+)", service.log.read_text())
    fds = Path(f"/proc/{pids[-1]}/fd")
    where = os.path.realpath(folder) + os.sep
    found = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed while we looked
            continue
        if target.startswith(where):
            found.append(target)
    return found


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        "small": make_video(folder / "small.mp4", 12),
        "vga": make_video(folder / "vga.avi", 6, size=(640, 480), fourcc="MJPG"),
        "long": make_video(folder / "long.mp4", 60, size=(160, 120)),
        # Over the 2 MiB a worker keeps in memory: received to disk (server/worker/received.py).
        "large": make_video(folder / "large.avi", 64, size=(640, 480), fourcc="MJPG"),
    }


def wait_until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}")
        time.sleep(0.02)


def chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


def answer(gateway, data: bytes, **params: str) -> tuple[dcf_pb2.ResponseHeader, list[dict]]:
    """A Call's header and its results, parsed."""
    header, results = None, []
    for response in gateway.Call(call_requests("ssd-video", chunks(data), params)):
        kind = response.WhichOneof("kind")
        if kind == "header":
            header = response.header
        elif kind != "failure":  # a failure record is followed by the call's status
            assert kind == "result", f"partial results come as results, not {kind}"
            results.append(json.loads(response.result))
    return header, results


def test_call_answers_one_result_per_frame_then_the_summary(gateway, clips):
    header, results = answer(gateway, clips["small"])
    assert header.content_type == "application/x-ndjson" and header.partial_results
    *frames, summary = results
    assert [f["frame"] for f in frames] == list(range(1, 11))
    for frame in frames:
        assert any(d["label"] == "person" and d["confidence"] >= 0.5 for d in frame["detections"])
    assert summary == {"width": 320, "height": 240, "fps": 25.0, "frames_read": 10}


def test_results_arrive_as_each_frame_is_done(service, gateway, clips, spool):
    # The worker holds the video open until its last frame is done: the first
    # result must reach us while it still does, not after the call ended.
    working_at_first_result = None
    results = 0
    requests = call_requests("ssd-video", chunks(clips["long"]), {"max_frames": "60"})
    for response in gateway.Call(requests):
        if response.WhichOneof("kind") == "result":
            if working_at_first_result is None:
                working_at_first_result = bool(held_in(service, spool))
            results += 1
    assert results == 61
    assert working_at_first_result, "the first frame's result came only once all 60 were done"


def test_a_large_upload_is_on_disk_once_while_its_frames_are_read(service, gateway, clips, spool):
    # The worker received it to a file; the handler decodes that file where it is
    # rather than spooling a copy of its own.
    data = clips["large"]
    assert len(data) > 2 << 20
    held_at_first_result: list[str] | None = None
    results = []
    for response in gateway.Call(call_requests("ssd-video", chunks(data), {"max_frames": "3"})):
        if response.WhichOneof("kind") == "result":
            if held_at_first_result is None:
                held_at_first_result = held_in(service, spool)
            results.append(json.loads(response.result))
    # One file, however many descriptors: the worker's and the decoder's own.
    assert held_at_first_result is not None and len(set(held_at_first_result)) == 1, (
        held_at_first_result
    )
    *frames, summary = results
    assert [f["frame"] for f in frames] == [1, 2, 3]
    for frame in frames:
        assert any(d["label"] == "person" and d["confidence"] >= 0.5 for d in frame["detections"])
    assert summary == {"width": 640, "height": 480, "fps": 25.0, "frames_read": 3}


def test_invoke_answers_one_document(gateway, clips):
    _, results = answer(gateway, clips["vga"], stride="2")
    reply = gateway.Invoke(
        dcf_pb2.InvokeRequest(function="ssd-video", input=clips["vga"], params={"stride": "2"})
    )
    assert reply.content_type == "application/json"
    document = json.loads(reply.output)
    assert document == {
        "width": 640,
        "height": 480,
        "fps": 25.0,
        "frames_read": 6,
        "frames": results[:-1],
    }  # all 6 frames read: the video ended before a 4th frame to analyse
    assert [f["frame"] for f in document["frames"]] == [1, 3, 5]


def test_concurrent_calls_each_get_their_own_answer(gateway, clips):
    expected = {name: answer(gateway, clips[name])[1] for name in ("small", "vga")}
    assert expected["small"] != expected["vga"]
    order = ["small", "vga", "small", "vga"]
    with concurrent.futures.ThreadPoolExecutor(len(order)) as pool:
        got = list(pool.map(lambda name: answer(gateway, clips[name])[1], order))
    for name, results in zip(order, got, strict=True):
        assert results == expected[name], name


@pytest.mark.parametrize(
    ("data", "params"),
    [
        (b"", {}),
        (b"not a video at all" * 100, {}),
        (None, {}),
        (b"x", {"stride": "0"}),
        (b"x", {"fps": "5"}),
    ],
    ids=["empty", "text", "truncated", "bad-stride", "unknown-param"],
)
def test_bad_input_is_invalid_argument_and_leaves_nothing_behind(gateway, clips, data, params):
    if data is None:
        data = clips["small"][:5000]
    with pytest.raises(grpc.RpcError) as err:
        answer(gateway, data, **params)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "\n" not in err.value.details() and "Traceback" not in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        gateway.Invoke(dcf_pb2.InvokeRequest(function="ssd-video", input=data, params=params))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_too_many_frames_to_decode_are_refused(gateway, clips):
    with pytest.raises(grpc.RpcError) as err:
        answer(gateway, clips["long"], max_frames="1000", stride="20")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (
        "params max_frames and stride: max_frames x stride = 1000 x 20 = 20000 frames to "
        "decode, over the limit of 1000; ask for fewer frames or a smaller stride"
    )


def test_a_call_cancelled_mid_upload_leaves_nothing_behind(service, gateway, clips, spool):
    release = threading.Event()
    upload = bytes(range(256)) * (12 * 1024)  # 3 MiB: more than an upload keeps in memory

    def requests() -> Iterator[dcf_pb2.CallRequest]:
        yield from call_requests("ssd-video", chunks(upload))
        release.wait(30)  # the upload stalls here, its end never sent

    call = gateway.Call(requests())
    try:
        wait_until(lambda: held_in(service, spool), "the upload to be received into a file")
        call.cancel()
    finally:
        release.set()
    wait_until(lambda: not held_in(service, spool), "the worker to let go of the upload")
    assert not list(spool.iterdir())
    assert answer(gateway, clips["small"], max_frames="1")[1][0]["frame"] == 1


def test_a_call_cancelled_mid_results_leaves_nothing_behind(service, gateway, clips, spool):
    call = gateway.Call(call_requests("ssd-video", chunks(clips["long"]), {"max_frames": "60"}))
    for response in call:
        if response.WhichOneof("kind") == "result":
            break
    assert held_in(service, spool), "the call is still working on its file"
    call.cancel()
    wait_until(lambda: not held_in(service, spool), "the worker to let go of the video")
    wait_until(lambda: not list(spool.iterdir()), "the spool file to be removed")


def test_the_client_prints_a_json_line_per_frame_as_it_arrives(service, clips, spool, tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(clips["long"])
    with clip.open("rb") as stdin:
        client = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "client",
                "--address",
                service.address,
                "call",
                "ssd-video",
                "-p",
                "max_frames=60",
            ],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        lines, working_at_first_line = [], None
        for line in client.stdout:
            if working_at_first_line is None:  # the worker still holds the video
                working_at_first_line = bool(held_in(service, spool))
            lines.append(json.loads(line))
        assert client.wait(60) == 0, client.stderr.read()
    assert [line.get("frame") for line in lines] == [*range(1, 61), None]
    assert lines[-1]["frames_read"] == 60
    assert working_at_first_line, "lines are printed as they come, not all at the end"


def test_collect_call_sees_only_results(gateway, clips):
    # With partial results, no chunk of a body: each result is one JSON document.
    content_type, body, results = collect_call(
        gateway.Call(call_requests("ssd-video", chunks(clips["small"]), {"max_frames": "2"}))
    )
    assert content_type == "application/x-ndjson" and body == b""
    assert [json.loads(r).get("frame") for r in results] == [1, 2, None]
