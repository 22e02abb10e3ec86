"""send-wav's memory budget, measured on its worker process in a served instance.

The worker runs in its own process (``python -m server``, the embedded default);
its pid comes from the service log ("worker send-wav started (pid N, port P)"),
checked against the port the registry gives it, and its memory from
/proc/PID/status: the peak (VmHWM, reset through /proc/PID/clear_refs before each
round) while the worst legal inputs and params run at once, and the resident set
(VmRSS) once they are done.

The limit is the handler's own statement of its worst case
(``send_wav.worst_case_bytes``: 10 bytes a pixel and 24 MiB a call, whatever the
input), plus what the host holds for a call in flight. The worst legal call: the
largest picture the budget allows (8192 x 2048), a grid as tall as the picture
(binsize 4096) and as wide as it gets (0.95 overlap; a header that does not say its
length, so frames are pooled in groups that double, two groups to a column), and
100 MB of WAV, which once cost +862 MB.
"""

from __future__ import annotations

import io
import re
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from PIL import Image
from scipy.io import wavfile

from handlers import send_wav
from handlers.base import Params, Request
from server.testing import ROOT, Service, start_service
from tests.support import call_requests, collect_call, k8s_memory_limit, memory, reset_peak

MIB = 1 << 20
CHUNK = 1 << 20  # what the client sends at a time
# Per call in flight, what the worker host holds beside the handler: input chunks in
# its queue and gRPC's buffers, the answer's chunks on their way out.
HOST_BYTES_PER_CALL = 16 * MIB
# What the worker may keep over where it started once its calls are done: gRPC's and
# the allocator's buffers (measured: 20 to 60 MiB after rounds of 100 MB inputs).
RETURN_SLACK = 96 * MIB
RATE = 44100
WORST_PARAMS = {
    "width": "8192",
    "height": "2048",
    "binsize": "4096",
    "overlap": "0.95",
    "colorbar": "false",
}
LABELLED_PARAMS = {"width": "8192", "height": "2048"}


def wav_bytes(samples: np.ndarray, unknown_length: bool = False) -> bytes:
    out = io.BytesIO()
    wavfile.write(out, RATE, samples)
    data = out.getvalue()
    if unknown_length:  # a streaming writer's placeholder for the data chunk's size
        assert data[36:40] == b"data"
        data = data[:40] + struct.pack("<I", 0xFFFFFFFF) + data[44:]
    return data


def noise(count: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(count) * 3000).astype(np.int16)


@pytest.fixture(scope="module")
def inputs() -> dict[str, bytes]:
    # 16,384 frames of 4096 at hop 205 (overlap 0.95): twice the columns of 8192.
    return {
        "worst": wav_bytes(noise(16_400 * 205 + 4096, 1), unknown_length=True),  # 6.7 MB
        "long": wav_bytes(noise(50_000_000, 2)),  # 100 MB, 19 minutes of 44.1 kHz
        "short": wav_bytes(noise(10_000, 3)),  # 20 KB
    }


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    running = start_service(tmp_path_factory.mktemp("send-wav-budget"), args=["--no-http"])
    yield running
    running.stop()


def worker_pid(service: Service) -> int:
    """The send-wav worker's pid, from the log line of its (last) start, on its port."""
    port = int(service.worker_address("send-wav").rsplit(":", 1)[1])
    found = re.findall(
        r"worker send-wav started \(pid (\d+), port (\d+)\)", service.log.read_text()
    )
    assert found, "no start of the send-wav worker in the service log"
    pid, logged_port = (int(value) for value in found[-1])
    assert logged_port == port
    assert b"send-wav" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return pid


def restart_peak(pid: int) -> None:
    """Start VmHWM again from the resident set now; this test needs it."""
    assert reset_peak(pid), "cannot reset VmHWM (/proc/PID/clear_refs)"
    assert memory(pid)["VmHWM"] <= memory(pid)["VmRSS"] + 4 * MIB


def settle(pid: int, ceiling: int, timeout: float = 30.0) -> int:
    """Wait until the resident set is at most ``ceiling``; its last reading."""
    deadline = time.monotonic() + timeout
    while True:
        resident = memory(pid)["VmRSS"]
        if resident <= ceiling or time.monotonic() > deadline:
            return resident
        time.sleep(0.2)


def served(service: Service, data: bytes, params: dict[str, str]) -> bytes:
    """send-wav through the gateway, the input streamed in 1 MiB chunks."""
    chunks = (data[i : i + CHUNK] for i in range(0, len(data), CHUNK))
    with service.channel() as channel:
        content_type, body, _ = collect_call(
            service.gateway(channel).Call(call_requests("send-wav", chunks, params), timeout=300)
        )
    assert content_type == "image/png"
    return body


def at_once(jobs: list[tuple[bytes, dict[str, str]]], service: Service) -> list[bytes]:
    """The calls all in flight together, each on its own thread; their answers."""
    answers: list[bytes | BaseException] = [b""] * len(jobs)

    def one(index: int) -> None:
        try:
            answers[index] = served(service, *jobs[index])
        except BaseException as error:  # noqa: BLE001 - raised in the test's thread below
            answers[index] = error

    threads = [threading.Thread(target=one, args=(index,)) for index in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    return answers  # type: ignore[return-value]


def in_process(data: bytes, params: dict[str, str]) -> bytes:
    function = send_wav.create({})
    try:
        chunks = (data[i : i + CHUNK] for i in range(0, len(data), CHUNK))
        return b"".join(function.handle(Request(Params(params), chunks)).parts)
    finally:
        function.close()


def limit(jobs: list[tuple[bytes, dict[str, str]]]) -> int:
    """The handler's stated worst case for these calls at once, plus the host's share."""
    total = 0
    for _, params in jobs:
        width, height = int(params.get("width", 1500)), int(params.get("height", 750))
        total += send_wav.worst_case_bytes(width, height) + HOST_BYTES_PER_CALL
    return total


def size_of(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "P"
        return image.size


@pytest.fixture(scope="module")
def worker(service: Service) -> int:
    """The worker's pid, warmed up by one ordinary call so lazy imports are done."""
    pid = worker_pid(service)
    served(service, wav_bytes(noise(RATE, 4)), {})
    return pid


def test_a_picture_over_the_budget_is_refused_at_once_and_costs_nothing(service, worker, inputs):
    restart_peak(worker)
    baseline = memory(worker)["VmRSS"]
    with pytest.raises(grpc.RpcError) as caught:
        served(service, inputs["short"], {"width": "8192", "height": "8192"})
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details() == (
        "params width x height: 8192 x 8192 = 67108864 pixels is over the budget of "
        f"{send_wav.MAX_PIXELS} pixels a picture"
    )
    assert memory(worker)["VmHWM"] - baseline <= 8 * MIB


def test_worst_legal_calls_at_once_stay_within_the_stated_budget(service, worker, inputs):
    """Two worst grids, a labelled picture at the budget and 100 MB of WAV, together."""
    jobs = [
        (inputs["worst"], WORST_PARAMS),
        (inputs["worst"], WORST_PARAMS),
        (inputs["short"], LABELLED_PARAMS),
        (inputs["long"], {}),
    ]
    restart_peak(worker)
    baseline = memory(worker)["VmRSS"]
    answers = at_once(jobs, service)
    peak = memory(worker)["VmHWM"] - baseline
    print(
        f"send-wav worker: baseline {baseline / MIB:.0f} MiB, peak +{peak / MIB:.0f} MiB "
        f"for {len(jobs)} worst calls at once (stated limit +{limit(jobs) / MIB:.0f} MiB)"
    )
    assert peak <= limit(jobs), (peak / MIB, limit(jobs) / MIB)

    # The answers are the same bytes as each call made alone, in-process.
    assert answers[0] == answers[1] == in_process(inputs["worst"], WORST_PARAMS)
    assert answers[2] == in_process(inputs["short"], LABELLED_PARAMS)
    assert answers[3] == in_process(inputs["long"], {})
    assert size_of(answers[0]) == size_of(answers[2]) == (8192, 2048)
    assert size_of(answers[3]) == (1500, 750)

    resident = settle(worker, baseline + RETURN_SLACK)
    assert resident <= baseline + RETURN_SLACK, (resident / MIB, baseline / MIB)


def test_a_long_input_costs_what_a_short_one_does(service, worker, inputs):
    """100 MB of WAV is read, transformed and pooled a block at a time: the default
    picture's worst case holds for it (it once cost +862 MB)."""
    restart_peak(worker)
    baseline = memory(worker)["VmRSS"]
    served(service, inputs["long"], {})
    peak = memory(worker)["VmHWM"] - baseline
    assert peak <= limit([(b"", {})]), (peak / MIB, limit([(b"", {})]) / MIB)


def test_every_call_in_flight_fits_the_deployment_limit(service, worker):
    """The registry's max_concurrency calls, each at its worst, over the worker's
    resident set at rest, fit under the memory limit docker/k8s gives the worker."""
    registry = yaml.safe_load((ROOT / "server" / "functions.yaml").read_text())
    concurrency = int(registry["functions"]["send-wav"]["max_concurrency"])
    side = int(send_wav.MAX_PIXELS**0.5)
    need = memory(worker)["VmRSS"] + concurrency * (
        send_wav.worst_case_bytes(side, side) + HOST_BYTES_PER_CALL
    )
    assert need <= k8s_memory_limit("42-send-wav.yaml"), (
        f"{concurrency} calls at {send_wav.worst_case_bytes(side, side) / MIB:.0f} MiB need "
        f"{need / MIB:.0f} MiB"
    )
