"""ssd-video: the first 10 frames of a 640x480 clip through the gateway, beside the bare loop.

The ways to the same detections, interleaved in one run so a noisy shared machine
slows them alike and the ratios stay meaningful:

* bare: the plain loop a script would run: OpenCV decodes the clip from a file,
  each frame goes through one interpreter (bench.bare.PlainSsd) on every core,
  one frame after the other, and each gives the same JSON line as ssd-video; and
  the same loop with a one-thread interpreter, as a second reference;
* handler: the ssd-video function in this process, as the worker host calls it
  (spooling the bytes, then decoding and inferring as the registry configures it),
  without gRPC;
* end to end: a dcf.v1 Call to a real service (gateway and worker processes),
  timed from the call's start to its last result, plus when the first frame's
  result arrived.

All of them must give the same lines, byte for byte, or the run stops.

    .venv/bin/python bench/bench_ssd_video.py [repeats]
"""

from __future__ import annotations

import math
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

if not __package__:  # run as a script (bench/...py): the repository root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bare import PlainSsd, all_cores
from handlers import ssd_video
from handlers.base import Params, Request
from handlers.detector import compact_json
from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc

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


def bare(path: Path, model: PlainSsd) -> list[bytes]:
    """The plain loop: decode each of the first FRAMES frames, detect, one JSON line each."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    lines = []
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        size = (0, 0)
        for number in range(1, FRAMES + 1):
            ok, frame = capture.read()
            if not ok:
                break
            size = (frame.shape[1], frame.shape[0])
            found = model.detections(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), *size)
            lines.append(compact_json({"frame": number, "detections": found}))
        summary = {
            "width": size[0],
            "height": size[1],
            "fps": round(fps, 3) if math.isfinite(fps) and fps > 0 else None,
            "frames_read": len(lines),
        }
        lines.append(compact_json(summary))
    finally:
        capture.release()
    return lines


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


WAYS = ("bare", "bare_one_thread", "handler", "e2e", "first")


def run(address: str, video: bytes, repeats: int, options: dict[str, Any]) -> dict[str, list]:
    """Seconds of each way, one value per repeat (``options``: the registry's ssd-video)."""
    all_threads, one_thread = PlainSsd(all_cores()), PlainSsd(1)
    function = ssd_video.create(options)
    times: dict[str, list] = {way: [] for way in WAYS}
    try:
        with tempfile.TemporaryDirectory() as folder, grpc.insecure_channel(address) as channel:
            path = Path(folder) / "clip.mp4"
            path.write_bytes(video)
            stub = dcf_pb2_grpc.GatewayStub(channel)

            def handler() -> list[bytes]:
                request = Request(Params({"max_frames": str(FRAMES)}), iter(_chunks(video)))
                return list(function.handle(request).parts)

            # Warm up, and check that every way gives the same lines.
            expected = bare(path, all_threads)
            answers = {
                "bare, one thread": bare(path, one_thread),
                "handler": handler(),
                "end to end": end_to_end(stub, video)[2],
            }
            for way, lines in answers.items():
                if lines != expected:
                    raise AssertionError(f"ssd-video {way} answered other lines than the bare loop")
            for _ in range(repeats):
                for way, work in (
                    ("bare", lambda: bare(path, all_threads)),
                    ("bare_one_thread", lambda: bare(path, one_thread)),
                    ("handler", handler),
                ):
                    start = time.perf_counter()
                    work()
                    times[way].append(time.perf_counter() - start)
                total, first, _ = end_to_end(stub, video)
                times["e2e"].append(total)
                times["first"].append(first)
    finally:
        function.close()
    return times


def table(times: dict[str, list]) -> str:
    bare_ms = statistics.median(times["bare"]) * 1000
    lines = ["| way | median ms | / bare |", "|---|---:|---:|"]
    for way in WAYS:
        ms = statistics.median(times[way]) * 1000
        lines.append(f"| {way} | {ms:.0f} | {ms / bare_ms:.2f} |")
    return "\n".join(lines)


def main() -> None:
    from server.testing import start_service

    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    video = make_clip()
    with tempfile.TemporaryDirectory() as folder:
        service = start_service(Path(folder), args=["--no-http"])
        try:
            options = service.document["functions"]["ssd-video"].get("options", {})
            times = run(service.address, video, repeats, options)
        finally:
            service.stop()
    print(table(times))


if __name__ == "__main__":
    main()
