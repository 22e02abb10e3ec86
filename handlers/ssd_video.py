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

Bounds, checked before the work they bound:

* **Frames decoded.** A call decodes ``max_frames`` x ``stride`` frames at most
  (skipped frames are decoded too), so that product may be at most
  ``MAX_DECODED_FRAMES`` (1000): anything more is refused with INVALID_ARGUMENT,
  naming both params, before the input is read. Time grows with pixels, not
  frames (here a skipped 4K frame took 30 ms, an analysed one 60 ms; a skipped
  640x480 frame 1.5 ms), so the pixels decoded are bounded too:
  ``DECODE_PIXELS``, 1000 frames of 1280x720 (111 of 3840x2160), checked from the
  size and frame count the stream declares before the first frame is decoded, and
  counted as frames are decoded, should a stream hold more than it declared.
  Refusing beats stopping at the bound: the caller learns before any work, and
  never gets an answer that looks whole but covers less than asked. A call's work
  is then at most 1000 decodes of 720p, or their equal in bigger frames, and 1000
  inferences: measured on the 2-core target under a load of 5 to 7, 27 ms per
  analysed 720p frame (27 s for 1000) and 60 ms per 4K one (6.7 s for 111).
* **Memory per frame.** FFmpeg holds the frame it decodes and the frames it may
  refer to: H.264 and HEVC allow 16, so ``FRAME_BUFFERS`` (18, with the frame
  OpenCV keeps) frames of the stream's pixel format (1.5 bytes a pixel for 8-bit
  4:2:0, up to 6 for 16-bit 4:4:4; formats OpenCV cannot name count as 6), plus
  two BGR copies (OpenCV's and the array it returns, 3 bytes a pixel each). That
  must fit ``FRAME_MEMORY`` (261 MiB: a 3840x2160 8-bit 4:2:0 stream, 4K UHD, at
  33 bytes a pixel), from the size and pixel format the stream declares, before
  the first frame is decoded; each decoded frame is checked again, so a stream
  whose frames grow midway is stopped at the first that does not fit. Decoding
  is single-threaded (``CAP_PROP_N_THREADS`` 1): frame threading would hold a
  frame per thread more, and the pipeline below already keeps both cores busy.
  With ``max_concurrency`` 4 in the registry, a worker holds at most 4 x 261 =
  1044 MiB of frames, over its 794 MiB baseline (TensorFlow and two
  interpreters): 1838 MiB, under docker/k8s's 2 Gi limit with 10% to spare.
  The pipeline below adds one 300x300 input per frame in flight or decoded
  ahead (270 KB each): a call lets go of a decoded frame once it is shrunk.

Choices, and why:

* Each call spools its upload to its own file (``mkstemp`` in the ``spool_dir``
  option, else $DCF_SPOOL_DIR, else the system temp dir), chunk by chunk as it
  arrives, never the whole video in memory. The whole file must be there before
  decoding starts: an MP4 may keep its index (moov) at the end. The file is
  created and removed inside the parts generator, so success, an error and a
  cancelled call (the host closes the generator) all remove it. No extension is
  needed: FFmpeg finds the container from the content. An upload the worker
  holds on disk already (one over the 2 MiB it keeps in memory, received whole
  before the call took a slot) comes with a path (``Request.path``) and is
  decoded from there: a large video is on disk once, not twice.
* A worker killed outright (SIGKILL, the OOM killer) removes nothing, so each
  worker sweeps its spool dir when it starts. A spool file is named
  ``ssd-video-<pid>-...`` after its owner and stays locked (``flock``) by it while
  it exists; the sweep removes only ``ssd-video-*`` files whose lock it can take,
  since the kernel drops a lock when its owner dies however it dies. The lock,
  not the pid, is the test: pids are reused, and workers in other containers
  that share the directory (compose's spool volume) have pids of their own
  namespace. The pid only spares the file of another live process here in the
  instant between its creation and its lock; our own pid is no such process (a
  restarted container's worker is often pid 1 again, like the one that died).
* FFmpeg would also open text "videos" that point elsewhere: playlists (HLS),
  concat scripts (which read other files in the spool dir), SDP (which listens on
  the network). So the worker allows only the binary container demuxers of
  ``DEMUXERS`` and the ``file`` protocol, through OpenCV's
  ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` (set at ``create``; an operator's own value
  is kept, with the two whitelists added if it lacks them).
* Frames are pipelined: the call's thread decodes frame n+1 while the
  interpreter pool runs inference on the frames before it; results are still
  sent in frame order, and at most one decoded frame waits for a place in flight.
  How many frames are in flight follows the pool (``in_flight_per_call``): one
  per 1-thread interpreter, so that a call alone keeps every core busy with
  frames side by side. No interpreter of every core by default
  (``lone_threads`` = ``threads``): for 10 frames, two frames at a time on two
  1-thread interpreters beat one at a time on a 2-thread one (measured on the
  2-core target, alternating: 0.91x to 0.99x of the plain loop on every core
  against 0.94x to 1.13x), since a 2-thread interpreter spends about a tenth
  more CPU per frame. With ``lone_threads`` set higher, a call alone runs its
  frames one at a time on that interpreter instead (its first result comes
  sooner), never beside a 1-thread one. Against the plain loop (decode, then
  infer, frame after frame) the decoding is hidden: a 640x480 frame takes ~1.5
  ms to decode against ~20 ms to infer on one thread. A decoder thread alone
  gained little.
* A frame is shrunk to 300x300 before its colours are swapped BGR -> RGB:
  resizing works per channel, so the model input is the same, with less to copy.
* Frames skipped by ``stride`` are only grabbed (decoded, never converted).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import stat
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers import detection_params, memory, steps
from handlers.base import Function, Param, Params, Reply, Request, declare
from handlers.errors import InvalidInput, Overloaded

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-ndjson"
DEFAULT_MAX_FRAMES = 10
MAX_FRAMES = 1000
DEFAULT_STRIDE = 1
MAX_STRIDE = 1000
MAX_DECODED_FRAMES = 1000  # max_frames x stride
DECODE_PIXELS = MAX_DECODED_FRAMES * 1280 * 720  # pixels decoded per call
FRAME_BUFFERS = 18  # 16 reference frames (H.264, HEVC), the frame decoded, the one OpenCV keeps
BGR_BYTES = 6  # OpenCV's BGR frame and the array read() returns, 3 bytes a pixel each
FRAME_MEMORY = 3840 * 2160 * (FRAME_BUFFERS * 3 // 2 + BGR_BYTES)  # 4K UHD, 8-bit 4:2:0
UNKNOWN_FORMAT_BYTES = 6.0  # 16-bit 4:4:4, the widest format of codecs with references
# Bytes a pixel of the decoder's own frames, by the pixel format tag OpenCV reports
# (CAP_PROP_CODEC_PIXEL_FORMAT, FFmpeg's raw tags); others count as UNKNOWN_FORMAT_BYTES.
PIXEL_FORMAT_BYTES: Mapping[bytes, float] = {
    **dict.fromkeys((b"I420", b"IYUV", b"YV12", b"NV12", b"NV21", b"Y41B"), 1.5),
    **dict.fromkeys((b"Y42B", b"YV16", b"P422", b"YUY2", b"YUYV", b"UYVY", b"HDYC"), 2.0),
    **dict.fromkeys((b"444P", b"YV24", b"BGR\x18", b"RGB\x18"), 3.0),
    **dict.fromkeys((b"Y800", b"Y8  ", b"GREY"), 1.0),
}
SPOOL_PREFIX = "ssd-video-"
# FFmpeg demuxers allowed to open an upload: binary containers only (mp4/mov/3gp,
# avi, mkv/webm, MPEG-TS, MPEG-PS, FLV, Ogg, ASF/WMV).
DEMUXERS = "mov,avi,matroska,mpegts,mpeg,flv,ogg,asf"
_CAPTURE_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_KINDS = "mp4, mov, avi, mkv, webm"

MAX_FRAMES_PARAM = Param(
    "max_frames",
    "integer",
    "frames to analyse",
    default=DEFAULT_MAX_FRAMES,
    low=1,
    high=MAX_FRAMES,
    note=f"max_frames x stride at most {MAX_DECODED_FRAMES}, fewer for frames over 1280x720",
)
STRIDE = Param(
    "stride", "integer", "analyse every Nth frame", default=DEFAULT_STRIDE, low=1, high=MAX_STRIDE
)
MAX_DETECTIONS = detection_params.max_detections("per frame")
PARAMS = declare(MAX_FRAMES_PARAM, STRIDE, detection_params.THRESHOLD, MAX_DETECTIONS)


def create(options: Mapping[str, Any]) -> Function:
    """Load the model once and return the ready function.

    Options (all optional): ``model_dir``, ``interpreters``, ``threads``,
    ``lone_threads`` as for ``ssd``, except that ``lone_threads`` defaults to
    ``threads`` (no interpreter of every core: see the module docstring);
    ``spool_dir``, where uploads are spooled (default $DCF_SPOOL_DIR, else the
    system temp dir; created if missing, and swept of what dead workers left).
    """
    from handlers import detector  # heavy imports: load time only

    spool_dir = Path(
        options.get("spool_dir") or os.environ.get("DCF_SPOOL_DIR") or tempfile.gettempdir()
    )
    spool_dir.mkdir(parents=True, exist_ok=True)
    sweep_spool(spool_dir)
    _restrict_ffmpeg()
    memory.map_large_blocks()  # pictures and frames mapped and unmapped: handlers/memory.py
    # A lone call is fastest with its frames side by side on the 1-thread
    # interpreters (module docstring): no interpreter of every core unless asked.
    defaults = {"lone_threads": options.get("threads", 1)}
    model = detector.Detector.from_options({**defaults, **options}, "ssd-video")
    # One thread per interpreter: more could only wait for one.
    inference = concurrent.futures.ThreadPoolExecutor(
        max_workers=model.size, thread_name_prefix="ssd-video-infer"
    )

    def handle(request: Request) -> Reply:
        parts = _run(request, _settings(request.params), spool_dir, model, inference)
        return Reply(CONTENT_TYPE, parts, partial_results=True)

    def close() -> None:
        inference.shutdown(wait=True, cancel_futures=True)
        model.close()

    return Function(handle=handle, params=PARAMS, check=_settings, collect=collect, close=close)


def _settings(params: Params) -> _Settings:
    """The call's settings from its params; InvalidInput for a value out of bounds, or for
    more frames to decode than a call may (checked before any input is read)."""
    threshold, max_detections = detection_params.read(params, MAX_DETECTIONS)
    settings = _Settings(
        max_frames=MAX_FRAMES_PARAM.integer(params),
        stride=STRIDE.integer(params),
        threshold=threshold,
        max_detections=max_detections,
    )
    decoded = settings.max_frames * settings.stride
    if decoded > MAX_DECODED_FRAMES:
        raise InvalidInput(
            f"params max_frames and stride: max_frames x stride = {settings.max_frames} x "
            f"{settings.stride} = {decoded} frames to decode, over the limit of "
            f"{MAX_DECODED_FRAMES}; ask for fewer frames or a smaller stride"
        )
    return settings


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
    request: Request,
    settings: _Settings,
    spool_dir: Path,
    model: Any,
    inference: concurrent.futures.Executor,
) -> Iterator[bytes]:
    """The parts generator: the upload as a file, then decode, detect and yield frame by frame."""
    with _input_file(request, spool_dir) as path, model.call():
        yield from _frames(path, settings, model, inference)


@contextlib.contextmanager
def _input_file(request: Request, spool_dir: Path) -> Iterator[str]:
    """A path to the whole upload: the host's own file when it has one (``request.path``,
    never copied), else a spool file written from the chunks and removed on exit.

    The spool file carries our pid and stays locked while it exists (see the module
    docstring): it is unlinked before its descriptor, and so its lock, is let go.
    """
    if request.path is not None:
        yield request.path
        return
    fd, path = tempfile.mkstemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", dir=spool_dir)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with steps.step("spool"):
            _spool(fd, request.chunks)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def sweep_spool(spool_dir: Path) -> list[str]:
    """Remove the spool files of workers that are gone; return their names.

    A file is theirs to remove when nobody holds its lock: every live worker locks
    its files for as long as they exist, and the kernel drops the lock of a process
    that dies, SIGKILL included. Files that are not ours by name, not regular, not
    removable (another user's), or named after another live process (which may be
    about to lock it) are left alone.
    """
    swept = []
    for path in sorted(spool_dir.glob(f"{SPOOL_PREFIX}*")):
        owner = _owner(path.name)
        if owner is not None and owner != os.getpid() and _alive(owner):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue  # gone already, a symlink, or not ours to read
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live worker's upload
            try:
                path.unlink()
            except OSError:
                continue
            swept.append(path.name)
        finally:
            os.close(fd)
    if swept:
        log.warning(
            "swept %d spool file(s) left in %s by workers that died: %s",
            len(swept),
            spool_dir,
            ", ".join(swept),
        )
    return swept


def _owner(name: str) -> int | None:
    """The pid a spool file is named after (``ssd-video-<pid>-...``), if any."""
    pid, _, rest = name[len(SPOOL_PREFIX) :].partition("-")
    return int(pid) if pid.isdigit() and rest else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _spool(fd: int, chunks: Iterator[bytes]) -> None:
    """Write each chunk to ``fd`` as it arrives (unbuffered); ``fd`` stays open (its lock)."""
    size = 0
    try:
        with open(fd, "wb", buffering=0, closefd=False) as out:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[out.write(view) :]
                size += len(chunk)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise Overloaded("no space left to spool the video; try again later") from None
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

    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    pending: deque[tuple[int, concurrent.futures.Future[list[dict[str, Any]]]]] = deque()
    try:
        if not capture.isOpened():
            raise InvalidInput(f"input is not a video that can be decoded: expected {_KINDS}")
        pixel_format = _fourcc(capture.get(cv2.CAP_PROP_CODEC_PIXEL_FORMAT))
        _check_frame_size(
            int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            pixel_format,
            "video frames are",
        )
        declared = (
            int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
        _check_decode_budget(
            settings, declared[0] * declared[1], int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        )
        fps = capture.get(cv2.CAP_PROP_FPS)
        size: tuple[int, int] | None = None
        read = analysed = 0
        checked = (0, 0)  # the last frame size found to fit
        pixels = 0  # decoded so far
        while analysed < settings.max_frames:
            if read % settings.stride:
                if not _decoded(capture.grab, read, cv2):
                    break
                read += 1
                # A skipped frame is decoded too: its size is the capture's now.
                width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
                height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
                frame = None
            else:
                with steps.step("decode", frame=read + 1):
                    frame = _decoded(capture.read, read, cv2)
                if frame is None:
                    break
                read += 1
                analysed += 1
                height, width = frame.shape[:2]
            if (width, height) != checked:
                _check_frame_size(width, height, pixel_format, f"frame {read} is")
                checked = (width, height)
            pixels += width * height
            if pixels > DECODE_PIXELS:
                raise InvalidInput(
                    f"frame {read}: the video holds more pixels than it declared, over the "
                    f"limit of {DECODE_PIXELS / 1e9:.2f} gigapixels decoded a call"
                )
            if frame is None:
                continue
            size = size or (width, height)
            with steps.step("resize", frame=read):
                small = cv2.resize(frame, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
            del frame
            # This frame was decoded while the earlier ones were inferred; it waits,
            # the one frame decoded ahead, until a place in flight is free.
            while len(pending) >= model.pool.in_flight_per_call():
                number, done = pending.popleft()
                yield compact_json({"frame": number, "detections": done.result()})
            job = inference.submit(
                steps.bound("inference", model.detect_resized, frame=read),
                small[:, :, ::-1],
                width,
                height,
                settings.threshold,
                settings.max_detections,
            )
            pending.append((read, job))
        if size is None:
            raise InvalidInput(f"video has no frame that can be decoded: expected {_KINDS}")
        while pending:
            number, done = pending.popleft()
            yield compact_json({"frame": number, "detections": done.result()})
        yield compact_json(
            {
                "width": size[0],
                "height": size[1],
                "fps": round(fps, 3) if math.isfinite(fps) and fps > 0 else None,
                "frames_read": read,
            }
        )
    finally:
        for _, job in pending:
            job.cancel()
        concurrent.futures.wait([job for _, job in pending])
        capture.release()


def _check_decode_budget(settings: _Settings, frame_pixels: int, frame_count: int) -> None:
    """Refuse, before decoding, params that would decode more than DECODE_PIXELS.

    The frames decoded are max_frames x stride, or fewer when the stream declares
    fewer (a container may lie: the decode loop counts what it really decodes).
    """
    frames = settings.max_frames * settings.stride
    if frame_count > 0:
        frames = min(frames, frame_count)
    if frame_pixels <= 0 or frames * frame_pixels <= DECODE_PIXELS:
        return
    most = max(1, DECODE_PIXELS // frame_pixels)
    raise InvalidInput(
        f"params max_frames and stride: {settings.max_frames} x {settings.stride} asks to "
        f"decode {frames} frames of {frame_pixels / 1e6:.1f} megapixels, over the limit of "
        f"{DECODE_PIXELS / 1e9:.2f} gigapixels a call; ask for max_frames x stride <= {most}"
    )


def frame_cost(width: int, height: int, pixel_format: bytes) -> int:
    """The most bytes decoding frames of this size and pixel format holds (module docstring)."""
    per_pixel = PIXEL_FORMAT_BYTES.get(pixel_format, UNKNOWN_FORMAT_BYTES)
    return math.ceil(width * height * (FRAME_BUFFERS * per_pixel + BGR_BYTES))


def _check_frame_size(width: int, height: int, pixel_format: bytes, what: str) -> None:
    """Refuse frames whose decoding could hold more than FRAME_MEMORY."""
    cost = frame_cost(width, height, pixel_format)
    if cost <= FRAME_MEMORY:
        return
    per_pixel = PIXEL_FORMAT_BYTES.get(pixel_format, UNKNOWN_FORMAT_BYTES)
    largest = FRAME_MEMORY / (FRAME_BUFFERS * per_pixel + BGR_BYTES)
    name = pixel_format.decode("ascii", "replace").strip("\x00") or "unknown"
    name = "".join(c if c.isprintable() else "?" for c in name)
    raise InvalidInput(
        f"{what} {width}x{height} ({width * height / 1e6:.1f} megapixels, pixel format "
        f"{name!r}); the limit is {largest / 1e6:.1f} megapixels in this format "
        f"(3840x2160 in 8-bit 4:2:0)"
    )


def _fourcc(value: float) -> bytes:
    """OpenCV's fourcc number as its four bytes (b"" when it has none)."""
    number = int(value) & 0xFFFFFFFF if math.isfinite(value) and value > 0 else 0
    return number.to_bytes(4, "little") if number else b""


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
