"""ssd-video: the first 10 frames of a 640x480 clip through the gateway, beside the bare work.

Three ways to the same detections, interleaved in one run so a noisy shared
machine slows them alike and the ratios stay meaningful:

* bare: what a script would do, OpenCV decodes the clip from a file and each
  frame goes through the same ``Detector`` (the registry's options: two 1-thread
  interpreters), one after the other;
* handler: the ssd-video function in this process, as the worker host calls it
  (spooling the bytes, pipelined decode and inference), without gRPC; and the
  same with one interpreter, where nothing overlaps, to show what pipelining buys;
* end to end: a dcf.v1 Call to a real service (gateway and worker processes),
  timed from the call's start to its last result, plus when the first frame's
  result arrived.

    .venv/bin/python bench/bench_ssd_video.py [repeats]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import grpc
import matplotlib
import numpy as np

try:
    from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
except ImportError:  # run as a script: the repository root is not on sys.path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc

from handlers import detector, ssd_video
from handlers.base import Params, Request
from server.config import load_settings

FRAMES = 10
CHUNK = 1 << 20
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def make_clip(width: int = 640, height: int = 480, frames: int = 30) -> bytes:
    """An MPEG-4 (mp4v) clip of grace_hopper.jpg, panned and zoomed: a person in every frame."""
    photo = cv2.imread(str(PHOTO))
    assert photo is not None, f"matplotlib sample photo missing: {PHOTO}"
    photo_h, photo_w = photo.shape[:2]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clip.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 25.0, (width, height))
        if not writer.isOpened():
            raise RuntimeError("this OpenCV cannot write mp4v")
        for k in range(frames):
            t = k / max(frames - 1, 1)
            crop_w = photo_w * (1.0 - 0.25 * t)
            crop_h = min(crop_w * height / width, photo_h)
            crop_w = crop_h * width / height
            x0 = (photo_w - crop_w) * (0.5 + 0.5 * np.sin(2 * np.pi * t))
            y0 = (photo_h - crop_h) * 0.3 * t
            sx, sy = width / crop_w, height / crop_h
            matrix = np.array([[sx, 0, -x0 * sx], [0, sy, -y0 * sy]])
            frame = cv2.warpAffine(photo, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)
            writer.write(frame)
        writer.release()
        return path.read_bytes()


def bare(path: Path, model: detector.Detector) -> list[list[dict[str, Any]]]:
    """Decode the first FRAMES frames and detect on each, one after the other."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    found = []
    try:
        for _ in range(FRAMES):
            ok, frame = capture.read()
            if not ok:
                break
            found.append(model.detect(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), 0.5, 20))
    finally:
        capture.release()
    return found


def _chunks(video: bytes) -> list[bytes]:
    return [video[i : i + CHUNK] for i in range(0, len(video), CHUNK)]


def end_to_end(stub: dcf_pb2_grpc.GatewayStub, video: bytes) -> tuple[float, float, list[bytes]]:
    """(seconds to the last result, seconds to the first, the results) of one Call."""

    def requests():
        header = dcf_pb2.CallHeader(function="ssd-video")
        header.params["max_frames"] = str(FRAMES)
        yield dcf_pb2.CallRequest(header=header)
        for chunk in _chunks(video):
            yield dcf_pb2.CallRequest(chunk=chunk)

    start = time.perf_counter()
    first = 0.0
    results = []
    for response in stub.Call(requests()):
        if response.WhichOneof("kind") == "result":
            results.append(response.result)
            first = first or time.perf_counter() - start
    return time.perf_counter() - start, first, results


def run(address: str, video: bytes, repeats: int) -> dict:
    """Median seconds of each way, and the ratios to the bare work."""
    entry = load_settings(environ={}).function("ssd-video")
    assert entry is not None, "the registry has no ssd-video"
    options = entry.options
    model = detector.Detector.from_options(options, "bench")
    function = ssd_video.create(options)
    # One interpreter: each frame waits for the one before, no overlap at all.
    serial = ssd_video.create({**options, "interpreters": 1})
    times: dict[str, list[float]] = {
        "bare": [],
        "serial": [],
        "handler": [],
        "e2e": [],
        "first": [],
    }
    with tempfile.TemporaryDirectory() as folder, grpc.insecure_channel(address) as channel:
        path = Path(folder) / "clip.mp4"
        path.write_bytes(video)
        stub = dcf_pb2_grpc.GatewayStub(channel)

        def handler(way: Any = function) -> list[bytes]:
            request = Request(Params({"max_frames": str(FRAMES)}), iter(_chunks(video)))
            return list(way.handle(request).parts)

        # Warm up, and check that all three agree on every frame.
        expected = bare(path, model)
        served = end_to_end(stub, video)[2]
        assert len(expected) == FRAMES and served == handler() == handler(serial)
        assert [json.loads(r)["detections"] for r in served[:-1]] == expected
        for _ in range(repeats):
            start = time.perf_counter()
            bare(path, model)
            times["bare"].append(time.perf_counter() - start)
            start = time.perf_counter()
            handler(serial)
            times["serial"].append(time.perf_counter() - start)
            start = time.perf_counter()
            handler()
            times["handler"].append(time.perf_counter() - start)
            total, first, _ = end_to_end(stub, video)
            times["e2e"].append(total)
            times["first"].append(first)
    function.close()
    serial.close()
    model.close()
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "frames": FRAMES,
        "video_bytes": len(video),
        "repeats": repeats,
        "bare_s": medians["bare"],
        "serial_s": medians["serial"],
        "handler_s": medians["handler"],
        "e2e_s": medians["e2e"],
        "first_result_s": medians["first"],
        "e2e_over_bare": medians["e2e"] / medians["bare"],
        "e2e_over_handler": medians["e2e"] / medians["handler"],
    }


def table(result: dict) -> str:
    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.0f}"

    return "\n".join(
        [
            (
                f"ssd-video, first {result['frames']} frames of a 640x480 mp4v clip "
                f"({result['video_bytes'] / 1024:.0f} KiB), median of {result['repeats']}:"
            ),
            "",
            "| way | time (ms) | / bare |",
            "|---|---:|---:|",
            (
                f"| bare: cv2 decode + {result['frames']} detects, one after the other | "
                f"{ms(result['bare_s'])} | 1.00 |"
            ),
            (
                "| ssd-video handler in process, 1 interpreter (no overlap) | "
                f"{ms(result['serial_s'])} | {result['serial_s'] / result['bare_s']:.2f} |"
            ),
            (
                "| ssd-video handler in process, 2 interpreters (pipelined) | "
                f"{ms(result['handler_s'])} | {result['handler_s'] / result['bare_s']:.2f} |"
            ),
            (
                f"| end to end: dcf.v1 Call through the gateway | {ms(result['e2e_s'])} | "
                f"{result['e2e_over_bare']:.2f} |"
            ),
            f"| end to end: first frame's result | {ms(result['first_result_s'])} | |",
            "",
            f"End to end / handler in process: {result['e2e_over_handler']:.2f}",
        ]
    )


def main() -> None:
    from server.testing import start_service

    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    video = make_clip()
    with tempfile.TemporaryDirectory() as folder:
        service = start_service(Path(folder), args=["--no-http"])
        try:
            result = run(service.address, video, repeats)
        finally:
            service.stop()
    print(table(result))


if __name__ == "__main__":
    main()
