"""ssd-video at the handler level: real videos of a real photograph, the real model."""

from __future__ import annotations

import fcntl
import io
import json
import os
import subprocess
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import cv2
import matplotlib
import numpy as np
import pytest
from PIL import Image

from handlers import ssd, ssd_video
from handlers.base import Function, Params, Reply, Request
from handlers.errors import Cancelled, InvalidInput
from handlers.model_fetch import default_model_dir
from tests.support.media import make_video

GRACE = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
# (container, fourcc) pairs this OpenCV build writes and reads back.
FORMATS = [("mp4", "mp4v"), ("avi", "MJPG"), ("mkv", "XVID"), ("webm", "VP80")]
CHUNK = 64 * 1024


# --------------------------------------------------------------------------- videos


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """12-frame clips in each container, plus a short and a larger mp4."""
    folder = tmp_path_factory.mktemp("videos")
    made = {
        container: make_video(folder / f"clip.{container}", 12, fourcc=fourcc)
        for container, fourcc in FORMATS
    }
    made["short"] = make_video(folder / "short.mp4", 4)
    made["vga"] = make_video(folder / "vga.mp4", 6, size=(640, 480))
    return made


def decoded_frames(data: bytes, folder: Path) -> list[np.ndarray]:
    """Every frame of a video, BGR, as OpenCV decodes it."""
    path = folder / "decode-me"
    path.write_bytes(data)
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    path.unlink()
    return frames


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spool")


@pytest.fixture(scope="session")
def fn(spool: Path) -> Iterator[Function]:
    function = ssd_video.create({"interpreters": 2, "threads": 1, "spool_dir": str(spool)})
    yield function
    function.close()


@pytest.fixture(autouse=True)
def spool_left_empty(spool: Path) -> Iterator[None]:
    """Whatever a test does, no call leaves a file behind in the spool dir."""
    assert list(spool.iterdir()) == []
    yield
    assert list(spool.iterdir()) == [], "a call left its spool file behind"


def chunked(data: bytes, size: int = CHUNK) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def call(function: Function, data: bytes, **params: Any) -> Reply:
    values = {name: str(value) for name, value in params.items()}
    return function.handle(Request(Params(values), chunked(data)))


def results(function: Function, data: bytes, **params: Any) -> list[dict[str, Any]]:
    reply = call(function, data, **params)
    assert reply.content_type == "application/x-ndjson" and reply.partial_results
    documents = []
    for part in reply.parts:
        document = json.loads(part)
        assert part == json.dumps(document, separators=(",", ":")).encode(), "compact JSON"
        documents.append(document)
    return documents


# --------------------------------------------------------------------------- results


@pytest.mark.parametrize("container", [c for c, _ in FORMATS])
def test_each_frame_gets_its_detections_then_a_summary(fn, videos, container):
    documents = results(fn, videos[container])
    *frames, summary = documents
    assert [f["frame"] for f in frames] == list(range(1, 11)), "the first 10 frames, in order"
    for frame in frames:
        assert set(frame) == {"frame", "detections"}
        person = next(d for d in frame["detections"] if d["label"] == "person")
        assert person["class"] == 0 and 0.5 <= person["confidence"] <= 1
        assert 0 <= person["xmin"] < person["xmax"] <= 320
        assert 0 <= person["ymin"] < person["ymax"] <= 240
        assert person["xmax"] - person["xmin"] > 160, "she fills most of every frame"
    assert summary == {"width": 320, "height": 240, "fps": 25.0, "frames_read": 10}


def test_detections_are_exactly_what_ssd_gives_for_the_frame(fn, videos, tmp_path):
    # The same frames as PNG through the ssd function: the same JSON, box for box.
    image_fn = ssd.create({"interpreters": 1})
    try:
        frames = decoded_frames(videos["vga"], tmp_path)
        documents = results(fn, videos["vga"], threshold=0.3, max_detections=5)
        assert len(documents) == len(frames) + 1
        for index, frame in enumerate(frames):
            png = io.BytesIO()
            Image.fromarray(frame[:, :, ::-1]).save(png, "PNG")
            reply = image_fn.handle(
                Request(Params({"threshold": "0.3", "max_detections": "5"}), iter([png.getvalue()]))
            )
            expected = json.loads(b"".join(reply.parts))
            assert (expected["width"], expected["height"]) == (640, 480)
            assert documents[index] == {"frame": index + 1, "detections": expected["detections"]}
            assert expected["detections"], "a person in every frame"
    finally:
        image_fn.close()


def test_stride_reports_the_index_of_each_frame_read(fn, videos):
    every = results(fn, videos["mp4"], max_frames=12)
    *frames, summary = results(fn, videos["mp4"], stride=3, max_frames=4)
    assert [f["frame"] for f in frames] == [1, 4, 7, 10]
    assert summary["frames_read"] == 10
    for frame in frames:
        assert frame == every[frame["frame"] - 1], "the same frame analysed the same way"


def test_max_frames_limits_the_frames_analysed(fn, videos):
    *frames, summary = results(fn, videos["avi"], max_frames=3)
    assert [f["frame"] for f in frames] == [1, 2, 3]
    assert summary["frames_read"] == 3


def test_a_video_shorter_than_asked_gives_the_frames_it_has(fn, videos):
    *frames, summary = results(fn, videos["short"], max_frames=10)
    assert [f["frame"] for f in frames] == [1, 2, 3, 4]
    assert summary["frames_read"] == 4
    *frames, summary = results(fn, videos["short"], max_frames=10, stride=3)
    assert [f["frame"] for f in frames] == [1, 4]
    assert summary["frames_read"] == 4


def test_a_video_cut_short_gives_the_frames_before_the_cut(fn, videos):
    # AVI keeps its index at the end, but the frames before a cut still decode.
    *frames, summary = results(fn, videos["avi"][: len(videos["avi"]) // 3])
    assert 1 <= len(frames) < 10
    assert [f["frame"] for f in frames] == list(range(1, len(frames) + 1))
    assert summary["frames_read"] == len(frames)


def test_threshold_and_max_detections_apply_to_every_frame(fn, videos):
    *frames, _ = results(fn, videos["mp4"], threshold=0.2, max_detections=1, max_frames=4)
    assert all(len(f["detections"]) == 1 for f in frames)
    *frames, _ = results(fn, videos["mp4"], threshold=0.99, max_frames=4)
    assert all(f["detections"] == [] for f in frames)


def test_collect_gives_one_document(fn, videos):
    parts = list(call(fn, videos["mkv"], max_frames=3).parts)
    document = json.loads(fn.collect(parts))
    assert document == {
        "width": 320,
        "height": 240,
        "fps": 25.0,
        "frames_read": 3,
        "frames": [json.loads(part) for part in parts[:3]],
    }
    assert [f["frame"] for f in document["frames"]] == [1, 2, 3]


# --------------------------------------------------------------------------- bad input


def truncated_mp4(data: bytes) -> bytes:
    """An mp4 cut after its header, before its first frame is complete."""
    return data[:1000]


def truncated_avi(data: bytes) -> bytes:
    return data[:4000]


@pytest.mark.parametrize(
    "make",
    [
        lambda v: b"",
        lambda v: b"this is plain text, not a video\n" * 10,
        lambda v: bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8)),
        lambda v: GRACE.read_bytes(),
        lambda v: truncated_mp4(v["mp4"]),
        lambda v: truncated_avi(v["avi"]),
        lambda v: v["mkv"][:3000],
    ],
    ids=["empty", "text", "noise", "jpeg", "mp4-cut-early", "avi-cut-early", "mkv-cut-early"],
)
def test_not_a_video_is_invalid_input(fn, videos, make):
    with pytest.raises(InvalidInput) as err:
        results(fn, make(videos))
    assert "\n" not in err.value.message and err.value.message


def test_text_formats_that_open_other_files_are_refused(fn, videos, spool):
    # FFmpeg's concat demuxer and HLS playlists would read other files; a real
    # video sits in the spool dir beside the upload that names it.
    other = spool / "someone-elses.mp4"
    other.write_bytes(videos["mp4"])
    try:
        concat = f"ffconcat version 1.0\nfile {other.name}\n".encode()
        playlist = (
            f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{other}\n#EXT-X-ENDLIST\n".encode()
        )
        for script in (concat, playlist):
            with pytest.raises(InvalidInput, match="not a video"):
                results(fn, script)
    finally:
        other.unlink()


@pytest.mark.parametrize(
    "params",
    [
        {"max_frames": "0"},
        {"max_frames": "1001"},
        {"stride": "0"},
        {"stride": "x"},
        {"threshold": "1.5"},
        {"max_detections": "0"},
        {"max_frames": "1000", "stride": "20"},
        {"max_frames": "101", "stride": "10"},
    ],
)
def test_bad_params_fail_before_reading_the_input(fn, params):
    def untouched() -> Iterator[bytes]:
        raise AssertionError("the input must not be read")
        yield b""

    with pytest.raises(InvalidInput, match=next(iter(params))):
        fn.handle(Request(Params(params), untouched()))


def test_frames_decoded_are_bounded_whatever_max_frames_and_stride_say(fn, videos):
    def untouched() -> Iterator[bytes]:
        raise AssertionError("the input must not be read")
        yield b""

    with pytest.raises(InvalidInput) as err:
        fn.handle(Request(Params({"max_frames": "1000", "stride": "20"}), untouched()))
    assert err.value.message == (
        "params max_frames and stride: max_frames x stride = 1000 x 20 = 20000 frames to "
        "decode, over the limit of 1000; ask for fewer frames or a smaller stride"
    )
    # At the bound exactly, the call runs (and this clip ends first).
    *frames, summary = results(fn, videos["short"], max_frames=500, stride=2)
    assert [f["frame"] for f in frames] == [1, 3] and summary["frames_read"] == 4


def test_pixels_decoded_are_bounded_by_what_the_stream_declares():
    def settings(max_frames: int, stride: int) -> Any:
        return ssd_video._Settings(max_frames, stride, 0.5, 20)

    uhd, hd = 3840 * 2160, 1280 * 720
    ssd_video._check_decode_budget(settings(1000, 1), hd, 0)  # 1000 frames of 720p: the bound
    ssd_video._check_decode_budget(settings(500, 2), uhd, 6)  # a 6-frame clip ends first
    ssd_video._check_decode_budget(settings(111, 1), uhd, 0)
    with pytest.raises(InvalidInput) as err:
        ssd_video._check_decode_budget(settings(10, 30), uhd, 2000)
    assert err.value.message == (
        "params max_frames and stride: 10 x 30 asks to decode 300 frames of 8.3 megapixels, "
        "over the limit of 0.92 gigapixels a call; ask for max_frames x stride <= 111"
    )
    with pytest.raises(InvalidInput, match="1001 frames"):
        ssd_video._check_decode_budget(settings(1001, 1), hd, -1)  # no count declared


def test_frame_memory_is_sized_for_4k_in_8_bit_4_2_0():
    assert ssd_video.frame_cost(3840, 2160, b"I420") == ssd_video.FRAME_MEMORY
    assert ssd_video.FRAME_MEMORY == 3840 * 2160 * 33  # 18 frames x 1.5 bytes + 2 BGR copies
    assert ssd_video.frame_cost(1920, 1080, b"") <= ssd_video.FRAME_MEMORY  # unknown: 6 bytes
    assert ssd_video.frame_cost(2560, 1440, b"Y3\x0b\x0a") > ssd_video.FRAME_MEMORY


def test_frames_over_the_memory_bound_are_refused_before_decoding(fn, tmp_path):
    at_bound = make_video(tmp_path / "uhd.mp4", 1, size=(3840, 2160))
    *frames, summary = results(fn, at_bound)
    assert [f["frame"] for f in frames] == [1] and (summary["width"], summary["height"]) == (
        3840,
        2160,
    )
    over = make_video(tmp_path / "over.mp4", 1, size=(4000, 2208))
    with pytest.raises(InvalidInput) as err:
        results(fn, over)
    assert err.value.message == (
        "video frames are 4000x2208 (8.8 megapixels, pixel format 'I420'); the limit is "
        "8.3 megapixels in this format (3840x2160 in 8-bit 4:2:0)"
    )


# --------------------------------------------------------------------------- spooling


def test_the_upload_is_spooled_chunk_by_chunk_to_a_private_file(fn, videos, spool):
    data = videos["vga"]
    seen: list[tuple[int, int]] = []

    def watched() -> Iterator[bytes]:
        given = 0
        for chunk in chunked(data, 10_007):
            yield chunk
            given += len(chunk)
            # The handler asks for the next chunk: the last one is on disk already.
            (spooled,) = spool.iterdir()
            seen.append((given, spooled.stat().st_size))
            assert oct(spooled.stat().st_mode & 0o777) == oct(0o600)
            assert spooled.name.startswith(f"ssd-video-{os.getpid()}-"), "named after its owner"
            with (
                open(spooled, "rb") as other,
                pytest.raises(BlockingIOError),  # and locked by it
            ):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)

    reply = fn.handle(Request(Params({}), watched()))
    assert not seen, "nothing is read before the parts are asked for"
    parts = list(reply.parts)
    assert len(parts) == 7
    assert len(seen) == -(-len(data) // 10_007)
    assert all(given == size for given, size in seen), seen


def test_an_upload_the_host_holds_as_a_file_is_decoded_there_not_copied(
    fn, videos, spool, tmp_path
):
    data = videos["vga"]
    held = tmp_path / "received"
    held.write_bytes(data)

    def unread() -> Iterator[bytes]:
        raise AssertionError("the chunks were read: the upload was copied")
        yield b""  # pragma: no cover - a generator that fails when read

    parts = []
    for part in fn.handle(Request(Params({}), unread(), str(held))).parts:
        assert list(spool.iterdir()) == [], "nothing spooled beside the host's file"
        parts.append(part)
    assert parts == list(call(fn, data).parts)
    assert held.read_bytes() == data  # the host's file is the host's: left as it was


def test_the_spool_file_is_removed_when_the_caller_goes_away(fn, videos, spool):
    # Mid-upload: the host's next chunk raises Cancelled.
    def cut_off() -> Iterator[bytes]:
        yield videos["mp4"][:CHUNK]
        assert len(list(spool.iterdir())) == 1
        raise Cancelled()

    with pytest.raises(Cancelled):
        list(fn.handle(Request(Params({}), cut_off())).parts)
    assert list(spool.iterdir()) == []

    # Mid-results: the host closes the parts generator after the first frame.
    parts = call(fn, videos["mp4"]).parts
    assert isinstance(parts, Generator), "the host closes the parts: they must be a generator"
    try:
        assert json.loads(next(parts))["frame"] == 1
        assert len(list(spool.iterdir())) == 1
    finally:
        parts.close()
    assert list(spool.iterdir()) == []


def test_the_spool_file_is_removed_after_an_error(fn, spool):
    with pytest.raises(InvalidInput):
        results(fn, b"not a video" * 1000)
    assert list(spool.iterdir()) == []


def test_the_sweep_removes_only_files_nobody_holds(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f"ssd-video-{dead.pid}-abandoned"
    left.write_bytes(b"half an upload")
    mine = tmp_path / f"ssd-video-{os.getpid()}-before-a-restart"  # a restarted pid 1's
    mine.write_bytes(b"the upload of the process that had our pid")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        locked = tmp_path / f"ssd-video-{dead.pid}-in-use"  # whatever its name: locked
        locked.write_bytes(b"an upload in progress")
        fresh = tmp_path / f"ssd-video-{sleeper.pid}-just-made"  # live owner, lock to come
        fresh.write_bytes(b"")
        unrelated = tmp_path / "someone-elses.mp4"
        unrelated.write_bytes(b"not ours")
        (tmp_path / "ssd-video-a-directory").mkdir()
        with open(locked, "rb") as holder:
            fcntl.flock(holder, fcntl.LOCK_EX)
            with caplog.at_level("WARNING", logger="handlers.ssd_video"):
                assert ssd_video.sweep_spool(tmp_path) == sorted([left.name, mine.name])
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [locked.name, fresh.name, unrelated.name, "ssd-video-a-directory"]
        )
        assert (
            f"swept 2 spool file(s) left in {tmp_path} by workers that died: "
            + ", ".join(sorted([left.name, mine.name]))
        ) in caplog.text
        assert ssd_video.sweep_spool(tmp_path) == [locked.name], "its holder is gone now"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert ssd_video.sweep_spool(tmp_path) == [fresh.name], "its owner is gone now"


def test_spool_dir_defaults_to_dcf_spool_dir(tmp_path, monkeypatch, videos):
    target = tmp_path / "from-env" / "nested"
    monkeypatch.setenv("DCF_SPOOL_DIR", str(target))
    function = ssd_video.create({"interpreters": 1})
    try:
        reply = call(function, videos["short"], max_frames=1)
        parts = iter(reply.parts)
        next(parts)
        assert [p.name.startswith("ssd-video-") for p in target.iterdir()] == [True]
        assert len(list(parts)) == 1
        assert list(target.iterdir()) == []
    finally:
        function.close()


def test_module_import_is_light():
    # The gateway imports handler modules for their params; keep TensorFlow out.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys, handlers.ssd_video; assert 'tensorflow' not in sys.modules "
                "and 'cv2' not in sys.modules"
            ),
        ],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_the_model_dir_must_hold_the_model(tmp_path):
    from handlers.detector import ModelMissing

    assert default_model_dir().is_dir()
    with pytest.raises(ModelMissing, match="make model"):
        ssd_video.create({"model_dir": str(tmp_path), "spool_dir": str(tmp_path)})
    assert os.listdir(tmp_path) == []
