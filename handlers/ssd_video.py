"""The ``ssd-video`` function: SSD on the first frames of a video, one JSON line per frame.

Input: a video (mp4, mov, avi, mkv, webm, and the other binary containers in
``DEMUXERS``), decoded by OpenCV's FFmpeg backend. Output, as partial results
(``application/x-ndjson``), one compact JSON document per analysed frame as soon
as it is done, ``{"frame": 1, "detections": [...]}`` (the 1-based index of the
frame in the video, detections exactly as ``ssd`` gives them, in the frame's
pixels), then a summary ``{"width": W, "height": H, "fps": F, "frames_read": N}``:
``fps`` is what the container declares (null when it declares nothing usable),
``frames_read`` how many frames were decoded from the start of the video, which
is less than ``max_frames`` x ``stride`` only when the video ended first. The
unary Invoke gets one document from ``collect``:
``{"width", "height", "fps", "frames_read", "frames": [{"frame", "detections"}, ...]}``.

Choices, and why:

* Each call spools its upload to its own file (``mkstemp`` in the ``spool_dir``
  option, else $DCF_SPOOL_DIR, else the system temp dir), chunk by chunk as it
  arrives, never the whole video in memory. The whole file must be there before
  decoding starts: an MP4 may keep its index (moov) at the end. The file is
  created and removed inside the parts generator, so success, an error and a
  cancelled call (the host closes the generator) all remove it. No extension is
  needed: FFmpeg finds the container from the content.
* FFmpeg would also open text "videos" that point elsewhere: playlists (HLS),
  concat scripts (which read other files in the spool dir), SDP (which listens on
  the network). So the worker allows only the binary container demuxers of
  ``DEMUXERS`` and the ``file`` protocol, through OpenCV's
  ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` (set at ``create``; an operator's own value
  is kept, with the two whitelists added if it lacks them).
* Frames are pipelined: the call's thread decodes frame n+1 (and n+2) while the
  interpreter pool runs inference on the frames before it, at most one frame in
  flight per interpreter; results are still sent in frame order. On the 2-core
  target, with two 1-thread interpreters, this nearly halves the time for 10
  frames against decode-then-infer (see bench/bench_ssd_video.py). A decoder
  thread alone gained little: decoding a 640x480 frame takes ~1.5 ms against
  ~17 ms of inference.
* A frame is shrunk to 300x300 before its colours are swapped BGR -> RGB:
  resizing works per channel, so the model input is the same, with less to copy.
* Frames skipped by ``stride`` are only grabbed (decoded, never converted).
"""

from __future__ import annotations

import concurrent.futures
import errno
import json
import logging
import math
import os
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from handlers import detection_params
from handlers.base import Function, InvalidInput, Reply, Request, TooLarge

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-ndjson"
DEFAULT_MAX_FRAMES = 10
MAX_FRAMES = 1000
DEFAULT_STRIDE = 1
MAX_STRIDE = 1000
MAX_FRAME_PIXELS = 50_000_000
# FFmpeg demuxers allowed to open an upload: binary containers only (mp4/mov/3gp,
# avi, mkv/webm, MPEG-TS, MPEG-PS, FLV, Ogg, ASF/WMV).
DEMUXERS = "mov,avi,matroska,mpegts,mpeg,flv,ogg,asf"
_CAPTURE_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_KINDS = "mp4, mov, avi, mkv, webm"

PARAMS: Mapping[str, str] = {
    "max_frames": f"frames to analyse, 1..{MAX_FRAMES} (default {DEFAULT_MAX_FRAMES})",
    "stride": f"analyse every Nth frame, 1..{MAX_STRIDE} (default {DEFAULT_STRIDE}: every frame)",
    **detection_params.described("per frame"),
}


def create(options: Mapping[str, Any]) -> Function:
    """Load the model once and return the ready function.

    Options (all optional): ``model_dir``, ``interpreters``, ``threads`` as for
    ``ssd``; ``spool_dir``, where uploads are spooled (default $DCF_SPOOL_DIR, else
    the system temp dir; created if missing).
    """
    from handlers import detector  # heavy imports: load time only

    spool_dir = Path(
        options.get("spool_dir") or os.environ.get("DCF_SPOOL_DIR") or tempfile.gettempdir()
    )
    spool_dir.mkdir(parents=True, exist_ok=True)
    _restrict_ffmpeg()
    model = detector.Detector.from_options(options, "ssd-video")
    # One thread per interpreter: more could only wait for one.
    inference = concurrent.futures.ThreadPoolExecutor(
        max_workers=model.size, thread_name_prefix="ssd-video-infer"
    )

    def handle(request: Request) -> Reply:
        params = request.params
        threshold, max_detections = detection_params.read(params)
        settings = _Settings(
            max_frames=params.get_int("max_frames", DEFAULT_MAX_FRAMES, low=1, high=MAX_FRAMES),
            stride=params.get_int("stride", DEFAULT_STRIDE, low=1, high=MAX_STRIDE),
            threshold=threshold,
            max_detections=max_detections,
        )
        parts = _run(request.chunks, settings, spool_dir, model, inference)
        return Reply(CONTENT_TYPE, parts, partial_results=True)

    def close() -> None:
        inference.shutdown(wait=True, cancel_futures=True)
        model.close()

    return Function(handle=handle, params=PARAMS, collect=collect, close=close)


def collect(parts: Iterable[bytes]) -> bytes:
    """The per-frame documents and the summary as one JSON document, for Invoke."""
    from handlers.detector import compact_json

    frames: list[Any] = []
    summary: dict[str, Any] = {}
    for part in parts:
        document = json.loads(part)
        if "frame" in document:
            frames.append(document)
        else:
            summary = document
    return compact_json({**summary, "frames": frames})


@dataclass(frozen=True)
class _Settings:
    """One call's params, checked."""

    max_frames: int
    stride: int
    threshold: float
    max_detections: int


def _restrict_ffmpeg() -> None:
    """Let FFmpeg open local files of the binary containers in DEMUXERS only.

    OpenCV reads the variable at every open, as ``key;value`` pairs joined by ``|``.
    """
    current = os.environ.get(_CAPTURE_OPTIONS, "")
    pairs = [pair for pair in current.split("|") if pair]
    keys = {pair.split(";", 1)[0] for pair in pairs}
    if "protocol_whitelist" not in keys:
        pairs.append("protocol_whitelist;file")
    if "format_whitelist" not in keys:
        pairs.append(f"format_whitelist;{DEMUXERS}")
    os.environ[_CAPTURE_OPTIONS] = "|".join(pairs)


def _run(
    chunks: Iterator[bytes],
    settings: _Settings,
    spool_dir: Path,
    model: Any,
    inference: concurrent.futures.Executor,
) -> Iterator[bytes]:
    """The parts generator: spool the upload, then decode, detect and yield frame by frame."""
    fd, path = tempfile.mkstemp(prefix="ssd-video-", dir=spool_dir)
    try:
        _spool(fd, chunks)
        yield from _frames(path, settings, model, inference)
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _spool(fd: int, chunks: Iterator[bytes]) -> None:
    """Write each chunk to ``fd`` as it arrives (unbuffered), then close it."""
    size = 0
    try:
        with open(fd, "wb", buffering=0) as out:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[out.write(view):]
                size += len(chunk)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise TooLarge("no space left to spool the video; try again later") from None
        raise
    if size == 0:
        raise InvalidInput(f"empty input: expected a video ({_KINDS})")


def _frames(
    path: str,
    settings: _Settings,
    model: Any,
    inference: concurrent.futures.Executor,
) -> Iterator[bytes]:
    import cv2  # heavy imports: loaded with the detector at create

    from handlers.detector import INPUT_SIZE, compact_json

    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    pending: deque[tuple[int, concurrent.futures.Future[list[dict[str, Any]]]]] = deque()
    try:
        if not capture.isOpened():
            raise InvalidInput(f"input is not a video that can be decoded: expected {_KINDS}")
        declared = (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if declared[0] * declared[1] > MAX_FRAME_PIXELS:
            raise InvalidInput(
                f"video frames are {declared[0]:.0f}x{declared[1]:.0f}; "
                f"the limit is {MAX_FRAME_PIXELS / 1e6:g} megapixels"
            )
        fps = capture.get(cv2.CAP_PROP_FPS)
        size: tuple[int, int] | None = None
        read = analysed = 0
        while analysed < settings.max_frames:
            if read % settings.stride:
                if not _decoded(capture.grab, read, cv2):
                    break
                read += 1
                continue
            frame = _decoded(capture.read, read, cv2)
            if frame is None:
                break
            read += 1
            analysed += 1
            height, width = frame.shape[:2]
            size = size or (width, height)
            small = cv2.resize(frame, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
            job = inference.submit(
                model.detect_resized, small[:, :, ::-1], width, height,
                settings.threshold, settings.max_detections,
            )
            pending.append((read, job))
            # Keep every interpreter busy, no more: decode ahead while they work.
            if len(pending) >= model.size:
                number, done = pending.popleft()
                yield compact_json({"frame": number, "detections": done.result()})
        if size is None:
            raise InvalidInput(f"video has no frame that can be decoded: expected {_KINDS}")
        while pending:
            number, done = pending.popleft()
            yield compact_json({"frame": number, "detections": done.result()})
        yield compact_json({
            "width": size[0],
            "height": size[1],
            "fps": round(fps, 3) if math.isfinite(fps) and fps > 0 else None,
            "frames_read": read,
        })
    finally:
        for _, job in pending:
            job.cancel()
        concurrent.futures.wait([job for _, job in pending])
        capture.release()


def _decoded(step: Any, index: int, cv2: Any) -> Any:
    """``capture.grab()`` (True) or ``capture.read()`` (a BGR frame); falsy at the end.

    A decoding error before the first frame is bad input; after it, the video is
    taken to end there, as a truncated upload gives the frames it has.
    """
    try:
        result = step()
    except cv2.error as exc:
        if index == 0:
            raise InvalidInput(f"cannot decode the video: {_one_line(exc)}") from None
        log.info("video ends at frame %d: %s", index, _one_line(exc))
        return None
    if isinstance(result, tuple):
        ok, frame = result
        return frame if ok and frame is not None and frame.size else None
    return result


def _one_line(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:200]
