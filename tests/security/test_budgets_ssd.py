"""Memory budgets of ssd and ssd-video, measured on their worker processes.

A served instance (``python -m server``) runs each function's worker in its own
process; the tests find its pid in the service log ("worker NAME started (pid N,
port P)") and read its resident memory from /proc: the peak (VmHWM) while the
worst legal inputs run at once, as many as the registry lets in, must stay under
the memory limit docker/k8s gives that worker, and the resident set (VmRSS) must
come back near where it started once they are done. Every answer is also checked
byte for byte against the same call made alone.

Also here: the leftovers of a worker killed outright are swept when it restarts,
and a model file changed by one byte is refused when a worker loads it.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from handlers.model_fetch import MODEL_FILES, MODEL_NAME, default_model_dir
from server.testing import ROOT, Service, free_port, start_service, wait_serving
from tests.support import call_requests, k8s_memory_limit, memory, reset_peak
from tests.support.media import make_video

MIB = 1 << 20
CHUNK = 1 << 20
# What a worker may keep over its starting point once its calls are done: the
# allocator's small-object arenas, thread stacks, gRPC's buffers (measured: 40 MiB).
RETURN_SLACK = 96 * MIB
_STARTED = r"worker {name} started \(pid (\d+), port \d+\)"


# --------------------------------------------------------------------------- helpers


def worker_pid(service: Service, name: str) -> int:
    """The pid of ``name``'s worker now: the last start the service logged."""
    found = re.findall(_STARTED.format(name=re.escape(name)), service.log.read_text())
    assert found, f"no start of worker {name} in the log"
    return int(found[-1])


def wait_until(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f}s for {what}")
        time.sleep(0.05)


def encode(image: Image.Image, fmt: str, **save: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


Outcome = tuple[str, str, bytes]  # status, content type (or message), body


def call(service: Service, function: str, data: bytes, params: dict[str, str]) -> Outcome:
    """One streamed Call: ("OK", content type, body or joined results) or (status, message, b"")."""
    pieces = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    content_type, body = "", []
    with service.channel() as channel:
        try:
            for response in service.gateway(channel).Call(
                call_requests(function, pieces, params), timeout=300
            ):
                kind = response.WhichOneof("kind")
                if kind == "header":
                    content_type = response.header.content_type
                elif kind == "chunk":
                    body.append(response.chunk)
                elif kind == "result":
                    body.append(response.result + b"\n")
        except grpc.RpcError as exc:
            return exc.code().name, exc.details(), b""
    return "OK", content_type, b"".join(body)


def worst_case_burst(
    service: Service,
    function: str,
    cases: dict[str, tuple[bytes, dict[str, str]]],
    order: list[str],
    limit: int,
) -> dict[str, int]:
    """Each case alone (the reference answers), then all of ``order`` at once.

    Asserts every answer of the burst equals its reference byte for byte, the
    worker's peak stays under ``limit``, and its resident memory comes back near
    its starting point; returns the measurements (bytes).
    """
    pid = worker_pid(service, function)
    baseline = memory(pid)["VmRSS"]
    expected = {name: call(service, function, *cases[name]) for name in cases}
    wait_until(
        lambda: memory(pid)["VmRSS"] <= baseline + RETURN_SLACK,
        "the worker to come back near its baseline after the single calls",
    )
    reset_peak(pid)
    with concurrent.futures.ThreadPoolExecutor(len(order)) as pool:
        answers = list(pool.map(lambda name: call(service, function, *cases[name]), order))
    peak = memory(pid)["VmHWM"]
    assert worker_pid(service, function) == pid, f"the {function} worker restarted"
    for name, answer in zip(order, answers, strict=True):
        assert answer == expected[name], f"{name}: {answer[:2]} differs from the call made alone"
    assert peak <= limit, (
        f"{function} worker peaked at {peak / MIB:.0f} MiB (baseline {baseline / MIB:.0f} MiB) "
        f"over its {limit / MIB:.0f} MiB limit"
    )
    wait_until(
        lambda: memory(pid)["VmRSS"] <= baseline + RETURN_SLACK,
        f"the {function} worker's memory to come back near its baseline",
    )
    after = memory(pid)["VmRSS"]
    print(
        f"\n{function}: {len(order)} calls at once; baseline {baseline / MIB:.0f} MiB, "
        f"peak {peak / MIB:.0f} MiB of {limit / MIB:.0f} MiB, after {after / MIB:.0f} MiB"
    )
    return {"baseline": baseline, "peak": peak, "after": after}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("budget-spool")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, spool: Path) -> Iterator[Service]:
    running = start_service(
        tmp_path_factory.mktemp("budgets"), env={"DCF_SPOOL_DIR": str(spool)}, args=["--no-http"]
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def pictures() -> dict[str, tuple[bytes, dict[str, str]]]:
    """The costliest legal pictures, each at the 16-megapixel cap, and the WebP bomb."""
    noise = Image.fromarray(np.random.default_rng(14).integers(0, 256, (4000, 4000, 3), np.uint8))
    flat_webp = encode(Image.new("RGB", (16_383, 976), (120, 130, 140)), "WEBP", lossless=True)
    bomb = encode(Image.new("RGB", (16_383, 3000), (120, 130, 140)), "WEBP", lossless=True)
    assert len(bomb) < 4000  # 1.9 KB declaring 49 megapixels
    drawn = {"annotate": "true"}
    return {
        "webp bomb": (bomb, {}),
        # WebP: 16 bytes a pixel (libwebp's two canvases, Pillow's copy, the picture).
        "webp at the cap": (flat_webp, {}),
        "webp at the cap, drawn": (flat_webp, drawn),
        # Transparency composited on white: RGBA + RGB at once, then the PNG written.
        "rgba png at the cap, drawn": (
            encode(Image.new("RGBA", (4000, 4000), (120, 130, 140, 128)), "PNG"),
            drawn,
        ),
        # Incompressible pixels: the biggest PNGs to write (46 MB answers).
        "noise jpeg at the cap, drawn": (encode(noise, "JPEG", quality=90), drawn),
        "noise png at the cap, drawn": (encode(noise, "PNG", compress_level=1), drawn),
    }


@pytest.fixture(scope="module")
def uhd_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Videos whose frames are at the frame bound (3840x2160, 8-bit 4:2:0)."""
    folder = tmp_path_factory.mktemp("uhd")
    return {
        "mp4v": make_video(folder / "uhd.mp4", 6, size=(3840, 2160)),
        "mjpeg": make_video(folder / "uhd.avi", 6, size=(3840, 2160), fourcc="MJPG"),
    }


# --------------------------------------------------------------------------- memory


def test_ssd_worst_legal_pictures_at_once_stay_under_its_limit(service, pictures):
    concurrency = int(service.document["functions"]["ssd"]["max_concurrency"])
    order = (
        ["webp bomb"] * 4
        + ["webp at the cap"] * 2
        + ["webp at the cap, drawn"] * 2
        + ["rgba png at the cap, drawn"] * 3
        + ["noise jpeg at the cap, drawn"] * 2
        + ["noise png at the cap, drawn"]
    )
    order += ["webp bomb"] * max(0, concurrency - len(order))
    assert len(order) >= concurrency, "as many at once as the registry lets in"
    found = worst_case_burst(service, "ssd", pictures, order, k8s_memory_limit("41-ssd.yaml"))
    assert found["peak"] > found["baseline"] + 100 * MIB, "the burst did decode big pictures"
    status, message, _ = call(service, "ssd", *pictures["webp bomb"])
    assert (status, message) == (
        "INVALID_ARGUMENT",
        "image is 16383x3000 (49.1 megapixels); the limit is 16 megapixels",
    )


def test_ssd_video_worst_legal_videos_at_once_stay_under_its_limit(service, uhd_videos):
    concurrency = int(service.document["functions"]["ssd-video"]["max_concurrency"])
    # Frames at the size bound, and max_frames x stride at the decode bound (1000):
    # the clips end first, after 6 frames decoded and 3 analysed each.
    params = {"max_frames": "500", "stride": "2"}
    cases = {name: (data, params) for name, data in uhd_videos.items()}
    order = [
        name for _, name in zip(range(concurrency), ["mp4v", "mjpeg"] * concurrency, strict=False)
    ]
    found = worst_case_burst(
        service, "ssd-video", cases, order, k8s_memory_limit("43-ssd-video.yaml")
    )
    assert found["peak"] > found["baseline"] + 50 * MIB, "the burst did decode 4K frames"
    status, _, body = call(service, "ssd-video", uhd_videos["mp4v"], params)
    assert status == "OK" and body.splitlines()[-1] == (
        b'{"width":3840,"height":2160,"fps":25.0,"frames_read":6}'
    )


def test_ssd_video_frames_over_the_bound_are_refused_before_decoding(service, tmp_path):
    over = make_video(tmp_path / "over.mp4", 2, size=(4096, 2160))
    assert call(service, "ssd-video", over, {}) == (
        "INVALID_ARGUMENT",
        (
            "video frames are 4096x2160 (8.8 megapixels, pixel format 'I420'); the limit is "
            "8.3 megapixels in this format (3840x2160 in 8-bit 4:2:0)"
        ),
        b"",
    )


# --------------------------------------------------------------------------- leftovers


def test_the_spool_file_of_a_killed_worker_is_swept_when_it_restarts(
    service, spool, tmp_path_factory
):
    """SIGKILL (as the OOM killer sends) mid-call; the restarted worker removes its file."""
    clip = make_video(tmp_path_factory.mktemp("clip") / "long.mp4", 60, size=(160, 120))
    # An upload of a live worker in another container sharing the volume: its pid
    # means nothing here (none such is alive), only its lock tells. It must survive.
    other_namespace = subprocess.Popen([sys.executable, "-c", "pass"])
    other_namespace.wait()
    live = spool / f"ssd-video-{other_namespace.pid}-live-upload"
    live.write_bytes(b"half of someone's upload")
    holder = open(live, "rb")  # noqa: SIM115 - locked for the whole test, closed in finally
    fcntl.flock(holder, fcntl.LOCK_EX)
    pid = worker_pid(service, "ssd-video")

    def theirs() -> list[Path]:
        return [p for p in spool.iterdir() if p.name.startswith(f"ssd-video-{pid}-")]

    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(call, service, "ssd-video", clip, {"max_frames": "60"})
            wait_until(lambda: theirs() or running.done(), "the video to be spooled", 120)
            os.kill(pid, signal.SIGSTOP)  # frozen mid-call: its file stays as it is
            (left,) = theirs()
            os.kill(pid, signal.SIGKILL)
            assert running.result()[0] != "OK", "the call died with its worker"
        assert left.exists(), "SIGKILL runs no clean-up: the file is left behind"
        wait_until(lambda: worker_pid(service, "ssd-video") != pid, "the worker's restart")
        wait_serving(service.address, "ssd-video", timeout=120)
        wait_until(lambda: not left.exists(), "the restarted worker to sweep the file")
        assert f"left in {spool} by workers that died: {left.name}" in service.log.read_text()
        assert live.exists(), "a file whose owner holds its lock is never swept"
        assert call(service, "ssd-video", clip, {"max_frames": "1"})[0] == "OK"
        assert sorted(p.name for p in spool.iterdir()) == [live.name], "the call cleaned up"
    finally:
        holder.close()
        live.unlink()


@pytest.mark.parametrize("function", ["ssd", "ssd-video"])
def test_a_model_changed_by_one_byte_is_refused_when_the_worker_loads_it(function, tmp_path):
    for name in MODEL_FILES:
        shutil.copyfile(default_model_dir() / name, tmp_path / name)
    model = tmp_path / MODEL_NAME
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the checksum can tell
    model.write_bytes(bytes(data))
    done = subprocess.run(
        [sys.executable, "-m", "server", "worker", function, "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DCF_MODEL_DIR": str(tmp_path), "DCF_SPOOL_DIR": str(tmp_path)},
    )
    assert done.returncode != 0, "the worker started with a tampered model"
    assert "Traceback" not in done.stderr
    (line,) = [text for text in done.stderr.splitlines() if "fails its checksum" in text]
    assert f"worker {function} cannot start: model file {model} fails its checksum" in line
    assert f"expected {MODEL_FILES[MODEL_NAME].sha256}): it is damaged or was replaced" in line
    assert "run `make model`" in line
