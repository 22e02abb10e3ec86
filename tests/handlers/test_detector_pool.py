"""The detector's interpreter pool: every core to a lone call, one each to concurrent calls.

Real interpreters of the real model throughout. Which interpreter a call gets is
read from the slot the pool lends (its ``threads``), never from timings.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from handlers import detector, ssd, ssd_video
from handlers.base import Function, Params, Request
from handlers.errors import Cancelled, InvalidInput
from tests.support.media import make_video, photo, photo_as

WIDE = 2  # the lone call's threads in these tests (the 2-core target's), whatever the machine
WAIT = 120  # seconds: generous, for a shared and busy machine


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Iterator[detector.Detector]:
    loaded = detector.Detector.load(model_dir, interpreters=2, threads=1, lone_threads=WIDE)
    yield loaded
    loaded.close()


@pytest.fixture(autouse=True)
def pool_idle_after(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever a test does, the module's pool ends with every interpreter back, no call in it."""
    yield
    if "model" in request.fixturenames:
        pool = request.getfixturevalue("model").pool
        assert (pool.free, pool.calls) == (pool.capacity, 0), "an interpreter or call leaked"


def rgb_of(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def answer(model: detector.Detector, rgb: np.ndarray) -> bytes:
    """The JSON ssd answers for ``rgb``, byte for byte."""
    found = model.detect(rgb, 0.2, 100)
    return detector.compact_json(
        {"width": rgb.shape[1], "height": rgb.shape[0], "detections": found}
    )


# --------------------------------------------------------------------------- who gets what


def test_a_lone_inference_gets_the_wide_interpreter_and_concurrent_ones_narrow_ones(model):
    pool = model.pool
    assert (pool.size, pool.capacity, pool.threads, pool.lone_threads) == (2, 3, 1, WIDE)
    with pool.lend() as first:
        assert first.threads == WIDE, "nothing else in flight: every core"
        with pool.lend() as second, pool.lend() as third:
            assert (second.threads, third.threads) == (1, 1)
            assert second is not third
            assert pool.free == 0
    assert pool.free == 3
    with pool.lend() as again:
        assert again is first, "the wide interpreter is back for the next lone inference"


def test_the_wide_interpreter_is_not_lent_while_another_inference_runs(model):
    # The wide one comes back first, while both narrow ones are still lent: a
    # waiting inference must wait for a narrow one, never add the wide one's threads.
    pool = model.pool
    got: list[detector._Slot] = []
    first_narrow, second_narrow = contextlib.ExitStack(), contextlib.ExitStack()
    with second_narrow, first_narrow:
        with pool.lend() as wide:
            freed = first_narrow.enter_context(pool.lend())
            second_narrow.enter_context(pool.lend())
        assert wide.threads == WIDE and pool.free == 1

        def waiter() -> None:
            with pool.lend() as slot:
                got.append(slot)

        thread = threading.Thread(target=waiter)
        thread.start()
        first_narrow.close()
        thread.join(WAIT)
        assert not thread.is_alive()
    assert got == [freed] and freed.threads == 1


def test_calls_in_flight_decide_not_only_inferences(model):
    pool = model.pool
    with pool.call():
        assert pool.calls == 1 and pool.in_flight_per_call() == 1
        with pool.lend() as slot:
            assert slot.threads == WIDE, "the one call in flight gets every core"
        with pool.call():
            # Another call is decoding: this inference gets one core, so the other's
            # inference will find one free.
            assert pool.calls == 2 and pool.in_flight_per_call() == pool.size
            with pool.lend() as slot:
                assert slot.threads == 1
    assert pool.calls == 0


def test_without_a_wide_interpreter_the_narrow_ones_serve_every_call(model_dir):
    flat = detector.Detector.from_options(
        {"model_dir": str(model_dir), "interpreters": 2, "threads": 1, "lone_threads": 1}, "ssd"
    )
    try:
        pool = flat.pool
        assert (pool.size, pool.capacity, pool.lone_threads) == (2, 2, 1)
        with pool.call():
            assert pool.in_flight_per_call() == 2, "a lone video keeps both busy"
            with pool.lend() as slot:
                assert slot.threads == 1
    finally:
        flat.close()


def test_lone_threads_defaults_to_every_core_and_is_checked(model_dir):
    default = detector.Detector.from_options({"model_dir": str(model_dir), "interpreters": 1}, "x")
    try:
        cores = detector.usable_cores()
        assert default.pool.lone_threads == max(1, cores)
        assert default.pool.capacity == (2 if cores > 1 else 1)
    finally:
        default.close()
    with pytest.raises(ValueError, match="ssd option lone_threads: expected >= 1, got 0"):
        detector.Detector.from_options({"model_dir": str(model_dir), "lone_threads": 0}, "ssd")


# --------------------------------------------------------------------------- same answers


def test_answers_are_the_same_bytes_whichever_interpreter_ran(model):
    rng = np.random.default_rng(16)
    pictures = [
        rgb_of(photo()),
        rgb_of(photo_as("PNG", size=(300, 300))),
        rgb_of(photo_as("JPEG", size=(640, 480), quality=40)),
        *(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(3)),
    ]
    for rgb in pictures:
        with model.pool.lend() as held:
            assert held.threads == WIDE
            on_narrow = answer(model, rgb)  # the wide one is held: a narrow one runs it
        on_wide = answer(model, rgb)  # alone again: the wide one runs it
        assert on_wide == on_narrow
    found = json.loads(answer(model, pictures[0]))["detections"]
    assert "person" in [box["label"] for box in found]


# --------------------------------------------------------------------------- always returned


def test_an_interpreter_comes_back_after_an_error(model):
    pool = model.pool
    with pytest.raises(ValueError, match="Dimension mismatch"):  # a wrong-shaped input
        model.detect_resized(np.zeros((10, 10, 3), np.uint8), 10, 10, 0.5, 20)
    assert pool.free == pool.capacity
    with pytest.raises(KeyError), pool.call(), pool.lend():
        raise KeyError("a fault while an interpreter is lent")
    assert (pool.free, pool.calls) == (pool.capacity, 0)


def test_closing_wakes_an_inference_waiting_for_an_interpreter(model_dir):
    small = detector.Detector.load(model_dir, interpreters=1, threads=1, lone_threads=1)
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            small.infer(np.zeros((300, 300, 3), np.uint8))
        except RuntimeError as exc:
            errors.append(exc)

    with small.pool.lend():
        thread = threading.Thread(target=waiter)
        thread.start()
        small.close()
    thread.join(WAIT)
    assert not thread.is_alive(), "a waiting inference must not hang once closed"
    assert [str(e) for e in errors] == ["the detector is closed"]


def test_no_deadlock_at_concurrency_16_with_faults(model):
    # 16 threads at once, each a call: most detect, some fail inside the pool.
    pool = model.pool
    rgb = rgb_of(photo())
    expected = answer(model, rgb)

    def one(index: int) -> bytes | None:
        with model.call():
            if index % 4 == 3:
                with pytest.raises(RuntimeError), pool.lend():
                    raise RuntimeError("a fault mid-inference")
                return None
            return answer(model, rgb)

    with ThreadPoolExecutor(16) as threads:
        answers = list(threads.map(one, range(64), timeout=WAIT))
    assert [a for a in answers if a is not None] == [expected] * 48
    assert (pool.free, pool.calls) == (pool.capacity, 0)


# --------------------------------------------------------------------------- the functions


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_video(tmp_path_factory.mktemp("clip") / "clip.mp4", 8)


def chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("lone_threads", [1, WIDE], ids=["frames-side-by-side", "wide-one"])
def test_ssd_video_at_concurrency_16_with_cancellations(clip, tmp_path, lone_threads):
    # Whole calls, calls whose caller goes away mid-upload or after a frame (the host
    # closes the parts), and broken uploads, 16 at a time: every whole call answers
    # what a lone call answers, byte for byte, and nothing hangs or is left behind.
    # With a wide interpreter, a lone call's frames run on it one at a time.
    function = ssd_video.create(
        {"interpreters": 2, "threads": 1, "lone_threads": lone_threads, "spool_dir": str(tmp_path)}
    )
    try:
        lone = list(function.handle(Request(Params({}), chunks(clip))).parts)
        assert len(lone) == 9 and json.loads(lone[0])["frame"] == 1

        def gone_mid_upload() -> Iterator[bytes]:
            yield clip[:1000]
            raise Cancelled()

        def one(index: int) -> list[bytes] | str:
            kind = index % 4
            if kind == 1:
                with pytest.raises(Cancelled):
                    list(function.handle(Request(Params({}), gone_mid_upload())).parts)
                return "cancelled"
            if kind == 2:
                parts: Any = function.handle(Request(Params({}), chunks(clip))).parts
                first = next(parts)
                parts.close()  # what the host does when the caller goes away
                return [first]
            if kind == 3:
                with pytest.raises(InvalidInput):
                    list(function.handle(Request(Params({}), iter([b"not a video" * 99]))).parts)
                return "refused"
            return list(function.handle(Request(Params({}), chunks(clip))).parts)

        with ThreadPoolExecutor(16) as threads:
            outcomes = list(threads.map(one, range(32), timeout=WAIT))
        expected: list[list[bytes] | str] = [lone, "cancelled", [lone[0]], "refused"]
        for index, outcome in enumerate(outcomes):
            assert outcome == expected[index % 4], index
        assert list(tmp_path.iterdir()) == [], "every spool file removed"
        assert list(function.handle(Request(Params({}), chunks(clip))).parts) == lone
    finally:
        function.close()


def test_ssd_answers_the_same_bytes_alone_and_under_load():
    function: Function = ssd.create({"interpreters": 2, "threads": 1, "lone_threads": WIDE})
    try:

        def one(_: int) -> bytes:
            return b"".join(function.handle(Request(Params({}), iter([photo()]))).parts)

        lone = one(0)
        with ThreadPoolExecutor(8) as threads:
            assert list(threads.map(one, range(24), timeout=WAIT)) == [lone] * 24
        assert "person" in [box["label"] for box in json.loads(lone)["detections"]]
    finally:
        function.close()


def test_ssd_video_builds_no_wide_interpreter_unless_asked(tmp_path, caplog):
    # A lone video is faster with its frames side by side on the 1-thread interpreters
    # (handlers/ssd_video.py), so only ssd gets one of every core by default.
    with caplog.at_level("INFO", logger="handlers.detector"):
        ssd_video.create({"interpreters": 2, "threads": 1, "spool_dir": str(tmp_path)}).close()
        ssd_video.create(
            {"interpreters": 2, "threads": 1, "lone_threads": 3, "spool_dir": str(tmp_path)}
        ).close()
    assert [r.getMessage() for r in caplog.records if "loaded" in r.getMessage()] == [
        "SSD model loaded: 2 interpreters x 1 threads",
        "SSD model loaded: 2 interpreters x 1 threads, and one of 3 threads for a lone call",
    ]
