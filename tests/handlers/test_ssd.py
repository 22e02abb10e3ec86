"""The ssd function end to end: real model, real photograph, generated variants.

Every expected box comes from a TFLite interpreter the test loads itself and
runs on pixels the test prepares itself, resized the same way the detector
documents (cv2 INTER_LINEAR to 300x300; JPEG draft decode for big JPEGs).
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import matplotlib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from handlers import detector, images, ssd
from handlers.base import Function, Params, Reply, Request
from handlers.errors import InvalidInput
from handlers.model_fetch import LABELS_NAME, MODEL_NAME, default_model_dir

REPO = Path(__file__).resolve().parents[2]
GRACE = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
KEYS = {"class", "label", "confidence", "xmin", "ymin", "xmax", "ymax"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def fn(model_dir: Path) -> Iterator[Function]:
    function = ssd.create({"model_dir": str(model_dir), "interpreters": 2})
    yield function
    function.close()


@pytest.fixture(scope="session")
def reference(model_dir: Path) -> Any:
    """A plain tf.lite.Interpreter with outputs named as the post-process op does."""
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(model_dir / MODEL_NAME), num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


@pytest.fixture(scope="session")
def labels(model_dir: Path) -> dict[int, str]:
    out = {}
    for line in (model_dir / LABELS_NAME).read_text().splitlines():
        number, name = line.split(maxsplit=1)
        out[int(number)] = name
    return out


@pytest.fixture(scope="session")
def grace_bytes() -> bytes:
    assert GRACE.is_file(), f"matplotlib sample photo missing: {GRACE}"
    return GRACE.read_bytes()


@pytest.fixture(scope="session")
def grace_rgb(grace_bytes: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(grace_bytes)) as image:
        return np.asarray(image.convert("RGB"))


# --------------------------------------------------------------------------- helpers


def call(function: Function, data: bytes, **params: Any) -> Reply:
    values = {name: str(value) for name, value in params.items()}
    return function.handle(Request(Params(values), iter([data])))


def detect(function: Function, data: bytes, **params: Any) -> dict[str, Any]:
    reply = call(function, data, **params)
    assert reply.content_type == "application/json"
    body = b"".join(reply.parts)
    parsed = json.loads(body)
    assert body == json.dumps(parsed, separators=(",", ":")).encode(), "JSON must be compact"
    return parsed


Found = list[tuple[int, float, tuple[int, int, int, int]]]


def run_reference(
    interpreter: Any,
    rgb: np.ndarray,
    width: int,
    height: int,
    labels: dict[int, str],
    threshold: float,
) -> Found:
    """What the model says about ``rgb``, in pixels of a width x height image."""
    x = cv2.resize(rgb, (300, 300), interpolation=cv2.INTER_LINEAR)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x[None])
    interpreter.invoke()
    outputs = interpreter.get_output_details()
    named = {d["name"]: interpreter.get_tensor(d["index"]) for d in outputs}
    boxes = named["TFLite_Detection_PostProcess"][0]
    classes = named["TFLite_Detection_PostProcess:1"][0]
    scores = named["TFLite_Detection_PostProcess:2"][0]
    count = int(named["TFLite_Detection_PostProcess:3"][0])
    found, seen = [], set()
    for i in sorted(range(count), key=lambda i: -scores[i]):
        if scores[i] < threshold or int(classes[i]) not in labels:
            continue
        ymin, xmin, ymax, xmax = np.clip(boxes[i], 0, 1)
        box = (round(xmin * width), round(ymin * height), round(xmax * width), round(ymax * height))
        if box[0] < box[2] and box[1] < box[3] and (int(classes[i]), box) not in seen:
            seen.add((int(classes[i]), box))
            found.append((int(classes[i]), round(float(scores[i]), 4), box))
    return found


def as_tuples(detections: list[dict[str, Any]]) -> Found:
    return [
        (d["class"], d["confidence"], (d["xmin"], d["ymin"], d["xmax"], d["ymax"]))
        for d in detections
    ]


def same(got: list[dict[str, Any]], want: Found) -> None:
    def key(t: tuple[int, float, tuple[int, int, int, int]]) -> tuple[Any, ...]:
        return (-t[1], t[0], t[2])

    assert sorted(as_tuples(got), key=key) == sorted(want, key=key)


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries only a few bytes of pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def person(detections: list[dict[str, Any]]) -> dict[str, Any]:
    people = [d for d in detections if d["label"] == "person"]
    assert people, f"no person in {detections}"
    return people[0]


# --------------------------------------------------------------------------- the photo


def test_grace_hopper_is_one_person_over_most_of_the_frame(
    fn: Function, grace_bytes: bytes
) -> None:
    body = detect(fn, grace_bytes)
    assert (body["width"], body["height"]) == (512, 600)
    people = [d for d in body["detections"] if d["label"] == "person"]
    assert len(people) == 1
    hopper = people[0]
    assert hopper["class"] == 0, "labels file and model agree: class 0 is person"
    assert hopper["confidence"] >= 0.5
    area = (hopper["xmax"] - hopper["xmin"]) * (hopper["ymax"] - hopper["ymin"])
    assert area > 0.8 * 512 * 600
    for d in body["detections"]:
        assert set(d) == KEYS
        assert all(type(d[k]) is int for k in ("class", "xmin", "ymin", "xmax", "ymax"))
        assert isinstance(d["confidence"], float) and d["confidence"] == round(d["confidence"], 4)


def test_boxes_match_the_interpreter_run_directly(
    fn: Function, reference: Any, labels: dict[int, str], grace_bytes: bytes, grace_rgb: np.ndarray
) -> None:
    for threshold in (0.0, 0.1, 0.5):
        body = detect(fn, grace_bytes, threshold=threshold)
        same(body["detections"], run_reference(reference, grace_rgb, 512, 600, labels, threshold))


def test_results_are_sorted_filtered_clamped_and_unique(fn: Function, grace_bytes: bytes) -> None:
    everything = detect(fn, grace_bytes, threshold=0, max_detections=100)["detections"]
    assert 2 <= len(everything) <= 20  # the model proposes at most 20
    confidences = [d["confidence"] for d in everything]
    assert confidences == sorted(confidences, reverse=True)
    boxes = [(d["class"], d["xmin"], d["ymin"], d["xmax"], d["ymax"]) for d in everything]
    assert len(set(boxes)) == len(boxes)
    for d in everything:
        assert 0 <= d["xmin"] < d["xmax"] <= 512 and 0 <= d["ymin"] < d["ymax"] <= 600
    top = detect(fn, grace_bytes, threshold=0, max_detections=1)["detections"]
    assert top == everything[:1]
    assert detect(fn, grace_bytes, threshold=1)["detections"] == []
    high = detect(fn, grace_bytes, threshold=0.5)["detections"]
    assert high == [d for d in everything if d["confidence"] >= 0.5]


def test_input_in_many_chunks_gives_the_same_answer(fn: Function, grace_bytes: bytes) -> None:
    chunks = [grace_bytes[i : i + 1000] for i in range(0, len(grace_bytes), 1000)]
    reply = fn.handle(Request(Params({}), iter(chunks)))
    assert json.loads(b"".join(reply.parts)) == detect(fn, grace_bytes)


def test_concurrent_calls_share_the_pool_safely(fn: Function, grace_bytes: bytes) -> None:
    want = detect(fn, grace_bytes, threshold=0.2)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                results.append(detect(fn, grace_bytes, threshold=0.2))
        except BaseException as exc:  # noqa: BLE001 - reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert results == [want] * 20


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("fmt", "kwargs"),
    [
        ("PNG", {}),
        ("BMP", {}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("WEBP", {"lossless": True}),
    ],
)
def test_lossless_formats_match_the_jpeg_pixels(
    fn: Function, grace_bytes: bytes, grace_rgb: np.ndarray, fmt: str, kwargs: dict[str, Any]
) -> None:
    data = encode(Image.fromarray(grace_rgb), fmt, **kwargs)
    assert detect(fn, data, threshold=0.1) == detect(fn, grace_bytes, threshold=0.1)


def test_lossy_webp_still_finds_the_person(
    fn: Function, reference: Any, labels: dict[int, str], grace_rgb: np.ndarray
) -> None:
    data = encode(Image.fromarray(grace_rgb), "WEBP", quality=80)
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB"))
    body = detect(fn, data, threshold=0.3)
    same(body["detections"], run_reference(reference, pixels, 512, 600, labels, 0.3))
    person(body["detections"])


@pytest.mark.parametrize("wrap", ["lines", "one line", "data uri"])
def test_base64_text_of_an_image(fn: Function, grace_bytes: bytes, wrap: str) -> None:
    if wrap == "lines":  # what `base64 x.jpg` prints: 76-column lines
        text = base64.encodebytes(grace_bytes)
    elif wrap == "one line":
        text = base64.b64encode(grace_bytes) + b"\n"
    else:
        text = b"data:image/jpeg;base64," + base64.b64encode(grace_bytes)
    assert detect(fn, text) == detect(fn, grace_bytes)


@pytest.mark.parametrize("size", [1, 3, 4, 7, 1000])
def test_base64_in_pieces_of_any_size_is_decoded_as_it_streams(
    grace_bytes: bytes, size: int
) -> None:
    text = b"data:image/jpeg;base64," + base64.encodebytes(grace_bytes)
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    assert images.read_input(pieces) == grace_bytes
    assert images.read_input([grace_bytes[:5], grace_bytes[5:]]) == grace_bytes


@pytest.mark.parametrize(
    ("first", "message"),
    [
        (b"this is plain text, not base64 at all\n", "not an image"),
        (
            base64.b64encode(b"words, words and more words: no image here"),
            "base64 but not of an image",
        ),
        (b"QUJD=QUJD" * 4, "not an image"),  # padding in the middle
    ],
)
def test_input_that_is_not_an_image_is_refused_at_its_first_bytes(
    first: bytes, message: str
) -> None:
    def upload() -> Iterator[bytes]:
        yield first
        raise AssertionError("read past the bytes that already showed it is not an image")

    with pytest.raises(InvalidInput, match=message):
        images.read_input(upload())


def test_grayscale_and_16_bit_grayscale(
    fn: Function, reference: Any, labels: dict[int, str], grace_rgb: np.ndarray
) -> None:
    grey = np.asarray(Image.fromarray(grace_rgb).convert("L"))
    want = run_reference(reference, np.repeat(grey[:, :, None], 3, axis=2), 512, 600, labels, 0.3)
    eight = encode(Image.fromarray(grey), "PNG")
    sixteen_image = Image.fromarray(grey.astype(np.uint16) * 257)  # full 16-bit range
    sixteen = encode(sixteen_image, "PNG")
    with Image.open(io.BytesIO(sixteen)) as check:
        assert check.mode.startswith("I"), check.mode
    for data in (eight, sixteen):
        body = detect(fn, data, threshold=0.3)
        same(body["detections"], want)
        person(body["detections"])


def test_alpha_is_composited_on_white(
    fn: Function, reference: Any, labels: dict[int, str], grace_rgb: np.ndarray
) -> None:
    alpha = np.full(grace_rgb.shape[:2], 255, np.uint8)
    alpha[:, :100] = 0  # a transparent strip whose hidden colour is black
    rgba = np.dstack([grace_rgb, alpha]).copy()
    rgba[alpha == 0, :3] = 0
    seen = grace_rgb.copy()
    seen[alpha == 0] = 255
    body = detect(fn, encode(Image.fromarray(rgba, "RGBA"), "PNG"), threshold=0.3)
    same(body["detections"], run_reference(reference, seen, 512, 600, labels, 0.3))


def test_gif_uses_the_first_frame(
    fn: Function, reference: Any, labels: dict[int, str], grace_rgb: np.ndarray
) -> None:
    first = Image.fromarray(grace_rgb).quantize(256)
    black = Image.new("P", first.size, 0)
    data = encode(first, "GIF", save_all=True, append_images=[black], duration=100)
    with Image.open(io.BytesIO(data)) as image:
        assert getattr(image, "n_frames", 1) == 2
        pixels = np.asarray(image.convert("RGB"))
    body = detect(fn, data, threshold=0.3)
    same(body["detections"], run_reference(reference, pixels, 512, 600, labels, 0.3))
    person(body["detections"])


# Orientation -> the transpose that shows the stored pixels upright.
ORIENTATIONS = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_270,
    8: Image.Transpose.ROTATE_90,
    5: Image.Transpose.TRANSPOSE,
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_honoured(
    fn: Function,
    reference: Any,
    labels: dict[int, str],
    grace_rgb: np.ndarray,
    orientation: int,
) -> None:
    # Store the photo so that applying the EXIF orientation shows it upright.
    upright = Image.fromarray(grace_rgb)
    inverse = {
        3: Image.Transpose.ROTATE_180,
        6: Image.Transpose.ROTATE_90,
        8: Image.Transpose.ROTATE_270,
        5: Image.Transpose.TRANSPOSE,
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(upright.transpose(inverse), "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as stored:
        shown = np.asarray(stored.convert("RGB").transpose(ORIENTATIONS[orientation]))
    assert shown.shape == grace_rgb.shape  # upright again: 600 rows, 512 columns

    body = detect(fn, data, threshold=0.3)
    assert (body["width"], body["height"]) == (512, 600)
    same(body["detections"], run_reference(reference, shown, 512, 600, labels, 0.3))
    # The box is where the upright photo has it, not where the stored pixels do.
    want = person(detect(fn, encode(upright, "PNG"), threshold=0.3)["detections"])
    got = person(body["detections"])
    for edge, size in (("xmin", 512), ("xmax", 512), ("ymin", 600), ("ymax", 600)):
        assert abs(got[edge] - want[edge]) <= 0.05 * size, (edge, got, want)


def test_exif_rotation_swaps_width_and_height_and_rotates_boxes(
    fn: Function, reference: Any, labels: dict[int, str], grace_rgb: np.ndarray
) -> None:
    """Stored upright but tagged 'rotate 90 clockwise': shown 600 wide, 512 high."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(grace_rgb), "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as stored:
        pixels = np.asarray(stored.convert("RGB"))
    shown = np.ascontiguousarray(np.rot90(pixels, k=-1))  # 90 degrees clockwise
    body = detect(fn, data, threshold=0.2)
    assert (body["width"], body["height"]) == (600, 512)
    same(body["detections"], run_reference(reference, shown, 600, 512, labels, 0.2))
    png = b"".join(call(fn, data, annotate="true").parts)
    with Image.open(io.BytesIO(png)) as drawn:
        assert drawn.size == (600, 512)


def test_big_jpeg_reports_full_size_boxes(
    fn: Function, reference: Any, labels: dict[int, str], grace_rgb: np.ndarray, grace_bytes: bytes
) -> None:
    big = encode(Image.fromarray(grace_rgb).resize((2048, 2400), Image.Resampling.LANCZOS), "JPEG")
    body = detect(fn, big, threshold=0.3)
    assert (body["width"], body["height"]) == (2048, 2400)
    # Same pipeline by hand: libjpeg DCT scaling to >= 300 a side, then INTER_LINEAR.
    with Image.open(io.BytesIO(big)) as image:
        image.draft("RGB", (300, 300))
        assert image.size == (512, 600)
        pixels = np.asarray(image.convert("RGB"))
    same(body["detections"], run_reference(reference, pixels, 2048, 2400, labels, 0.3))
    small = person(detect(fn, grace_bytes, threshold=0.3)["detections"])
    large = person(body["detections"])
    for edge in ("xmin", "ymin", "xmax", "ymax"):
        assert abs(large[edge] / 4 - small[edge]) <= 0.02 * 600, (edge, large, small)


# --------------------------------------------------------------------------- annotate


def test_annotate_returns_a_png_of_the_same_size(
    fn: Function, grace_bytes: bytes, grace_rgb: np.ndarray
) -> None:
    reply = call(fn, grace_bytes, annotate="true", threshold=0.3)
    assert reply.content_type == "image/png"
    png = b"".join(reply.parts)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (512, 600)
        drawn = np.asarray(image.convert("RGB"))
    changed = np.any(drawn != grace_rgb, axis=2)
    assert changed.any(), "boxes were drawn"
    assert changed.mean() < 0.2, "only boxes and labels differ"
    hopper = person(detect(fn, grace_bytes, threshold=0.3)["detections"])
    assert changed[hopper["ymin"] + 50, hopper["xmin"] : hopper["xmax"]].sum() <= 20
    assert changed[(hopper["ymin"] + hopper["ymax"]) // 2, hopper["xmin"]]  # left edge


def test_annotate_with_nothing_found_is_the_image_itself(
    fn: Function, grace_rgb: np.ndarray
) -> None:
    data = encode(Image.fromarray(grace_rgb), "PNG")
    png = b"".join(call(fn, data, annotate="true", threshold=1).parts)
    with Image.open(io.BytesIO(png)) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), grace_rgb)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "params",
    [
        {"threshold": "abc"},
        {"threshold": "2"},
        {"threshold": "-0.1"},
        {"threshold": "nan"},
        {"max_detections": "0"},
        {"max_detections": "101"},
        {"max_detections": "1.5"},
        {"annotate": "maybe"},
    ],
)
def test_bad_params_are_refused_before_reading_input(fn: Function, params: dict[str, str]) -> None:
    def never() -> Iterator[bytes]:
        raise AssertionError("input was read before params were checked")
        yield b""  # pragma: no cover

    name = next(iter(params))
    with pytest.raises(InvalidInput, match=f"param {name}"):
        fn.handle(Request(Params(params), never()))


def bad_inputs(grace_bytes: bytes) -> dict[str, bytes]:
    return {
        "empty": b"",
        "text": b"hello, this is not an image\n",
        "binary noise": bytes(range(256)) * 8,
        "truncated jpeg": grace_bytes[: len(grace_bytes) // 2],
        "jpeg header only": grace_bytes[:200],
        "base64 of text": base64.b64encode(b"just some words, no pixels"),
        "broken base64": base64.b64encode(grace_bytes)[:-3],
        "truncated png": encode(Image.new("RGB", (64, 64), "red"), "PNG")[:60],
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "ppm (not a supported format)": encode(Image.new("RGB", (8, 8)), "PPM"),
    }


@pytest.mark.parametrize("name", list(bad_inputs(b"\xff\xd8" * 200)))
def test_not_an_image_is_invalid_input(fn: Function, grace_bytes: bytes, name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        call(fn, bad_inputs(grace_bytes)[name])
    assert "\n" not in caught.value.message and caught.value.message


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (100_000, 100_000, "decompression bomb"),  # Pillow's own limit trips first
        (8_000, 7_000, "megapixels"),  # 56 MP: over our 50 MP default
        (40_000, 10, "out of range"),  # few pixels, absurd side
    ],
)
def test_huge_declared_dimensions_are_refused_before_decoding(
    fn: Function, width: int, height: int, message: str
) -> None:
    data = png_header_only(width, height)
    assert len(data) < 200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(InvalidInput, match=message):
            call(fn, data)


def test_real_mostly_empty_huge_png_is_refused() -> None:
    data = encode(Image.new("L", (7_500, 7_000), 255), "PNG")  # 52.5 MP of white
    assert len(data) < 200_000
    with pytest.raises(InvalidInput, match="megapixels"):
        images.decode_image(data)


def test_max_pixels_option_lowers_the_limit(grace_bytes: bytes, grace_rgb: np.ndarray) -> None:
    png = encode(Image.fromarray(grace_rgb), "PNG")
    refused = r"512x600 \(0\.3 megapixels\); the limit is 0\.1 megapixels"
    with pytest.raises(InvalidInput, match=refused):
        images.decode_image(png, max_pixels=100_000)
    assert images.decode_image(png, max_pixels=512 * 600).rgb.shape == (600, 512, 3)
    # A JPEG is decoded at the DCT scale that fits instead: 1/2 here, full size kept.
    small = images.decode_image(grace_bytes, max_pixels=100_000)
    assert small.rgb.shape == (300, 256, 3) and (small.width, small.height) == (512, 600)
    with pytest.raises(InvalidInput, match=r"64x75 even at 1/8 scale\); the limit is 0\.001"):
        images.decode_image(grace_bytes, max_pixels=1000)


def test_the_webp_bomb_is_refused_from_its_header() -> None:
    """1.9 KB declaring 16383x3000: refused before a pixel is decoded, JSON or drawn."""
    bomb = encode(Image.new("RGB", (16_383, 3000), (120, 130, 140)), "WEBP", lossless=True)
    assert len(bomb) < 4000
    for picture in (False, True):
        with (
            pytest.raises(InvalidInput, match=r"16383x3000 \(49\.1 megapixels\); the limit is 16"),
            images.decoding(images.read_input([bomb]), picture=picture, reduce_to=300),
        ):
            pass


def test_each_path_is_charged_what_it_holds_at_most() -> None:
    assert images.cost_per_pixel("PNG", picture=False) == images.BYTES_PER_PIXEL == 8
    assert images.cost_per_pixel("JPEG", picture=True) == images.BYTES_PER_PIXEL_DRAWN == 10
    assert images.cost_per_pixel("WEBP", picture=False) == images.BYTES_PER_PIXEL_WEBP == 16
    assert images.cost_per_pixel("WEBP", picture=True) == 16


def test_the_budget_is_held_while_decoding_and_given_back(grace_rgb: np.ndarray) -> None:
    png = encode(Image.fromarray(grace_rgb), "PNG")
    budget = images.MemoryBudget(10 * 512 * 600)
    with images.decoding(png, budget=budget, picture=True) as image:
        assert budget.held == 10 * 512 * 600, "drawn: 10 bytes a pixel"
        assert image.picture is not None and image.picture.size == (512, 600)
    assert budget.held == 0
    with (
        pytest.raises(InvalidInput, match="not an image"),
        images.decoding(b"GIF89a" + b"\x00" * 40, budget=budget),
    ):
        pass
    assert budget.held == 0
    with (
        pytest.raises(InvalidInput, match="MiB to decode"),
        images.decoding(png, budget=images.MemoryBudget(1000)),
    ):
        pass


def test_a_call_that_does_not_fit_waits_its_turn_in_order() -> None:
    budget = images.MemoryBudget(100)
    order: list[str] = []
    release = threading.Event()

    def take(name: str, cost: int) -> None:
        with budget.hold(cost):
            order.append(name)
            if name == "first":
                release.wait(30)

    first = threading.Thread(target=take, args=("first", 80))
    first.start()
    wait_until(lambda: budget.held == 80)
    big = threading.Thread(target=take, args=("big", 60))
    big.start()
    wait_until(lambda: budget.waiting == 1)
    small = threading.Thread(target=take, args=("small", 10))  # fits now, but comes later
    small.start()
    wait_until(lambda: budget.waiting == 2)
    assert order == ["first"]
    release.set()
    for thread in (first, big, small):
        thread.join(30)
    assert order == ["first", "big", "small"] and budget.held == 0


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    try:
        while not condition():
            assert not deadline.wait(0.005), "timed out"
    finally:
        timer.cancel()


def test_annotate_draws_a_jpeg_over_the_cap_at_the_scale_that_fits(
    model_dir: Path, grace_bytes: bytes, grace_rgb: np.ndarray
) -> None:
    function = ssd.create({"model_dir": str(model_dir), "interpreters": 1, "max_pixels": 100_000})
    try:
        png = b"".join(call(function, grace_bytes, annotate="true", threshold=1).parts)
        with Image.open(io.BytesIO(png)) as drawn:
            assert drawn.size == (256, 300)
            with Image.open(io.BytesIO(grace_bytes)) as photo:
                photo.draft("RGB", (256, 300))
                assert np.array_equal(np.asarray(drawn.convert("RGB")), np.asarray(photo))
        with pytest.raises(InvalidInput, match=r"limit is 0\.1 megapixels"):
            call(function, encode(Image.fromarray(grace_rgb), "PNG"), annotate="true")
    finally:
        function.close()


def test_big_pictures_of_any_format_are_reduced_like_a_jpeg(
    fn: Function, reference: Any, labels: dict[int, str], grace_rgb: np.ndarray
) -> None:
    big = Image.fromarray(grace_rgb).resize((2048, 2400), Image.Resampling.LANCZOS)
    body = detect(fn, encode(big, "PNG"), threshold=0.3)
    assert (body["width"], body["height"]) == (2048, 2400)
    reduced = np.asarray(big.reduce(4))  # both sides stay >= 300: 1/4, as a JPEG's draft
    same(body["detections"], run_reference(reference, reduced, 2048, 2400, labels, 0.3))
    person(body["detections"])


def test_decode_memory_option_must_hold_the_costliest_call(model_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"decode_memory_mib \(100\) must be at least 245"):
        ssd.create({"model_dir": str(model_dir), "decode_memory_mib": 100})


def _small_samples() -> list[bytes]:
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    return [
        encode(image, "JPEG"),
        encode(image, "PNG"),
        encode(image.convert("RGBA"), "PNG"),
        encode(image, "GIF"),
        encode(image, "WEBP"),
        encode(image, "TIFF"),
        encode(image, "BMP"),
    ]


SMALL = _small_samples()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, len(SMALL) - 1),
    cut=st.integers(0, 4000),
    flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=6),
)
def test_damaged_files_decode_or_are_invalid_input(
    index: int, cut: int, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(SMALL[index][: max(1, cut)])
    for where, value in flips:
        data[where % len(data)] = value
    try:
        image = images.decode_image(bytes(data))
    except InvalidInput as exc:  # either outcome is right; a refusal says why in one line
        assert exc.message and "\n" not in exc.message  # noqa: PT017
    else:
        assert image.rgb.dtype == np.uint8 and image.rgb.ndim == 3 and image.rgb.shape[2] == 3


# --------------------------------------------------------------------------- loading


def test_missing_model_says_run_make_model(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(detector.ModelMissing, match="run `make model`"):
        ssd.create({"model_dir": str(tmp_path)})
    (tmp_path / LABELS_NAME).write_bytes((model_dir / LABELS_NAME).read_bytes())
    (tmp_path / MODEL_NAME).write_bytes((model_dir / MODEL_NAME).read_bytes()[:1000])
    with pytest.raises(detector.ModelMissing, match=r"1000 bytes.*run `make model`"):
        detector.Detector.load(tmp_path)


def test_a_model_with_one_byte_changed_is_refused_at_load(tmp_path: Path, model_dir: Path) -> None:
    for name in (MODEL_NAME, LABELS_NAME):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    detector.check_model_dir(tmp_path)  # the faithful copy loads
    data = bytearray((tmp_path / MODEL_NAME).read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit of one weight
    (tmp_path / MODEL_NAME).write_bytes(bytes(data))
    with pytest.raises(detector.ModelMissing, match=r"fails its checksum.*run `make model`") as err:
        detector.Detector.load(tmp_path, interpreters=1)
    assert "\n" not in err.value.message and err.value.status == "UNAVAILABLE"


def test_bad_options_are_refused(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="interpreters"):
        ssd.create({"model_dir": str(model_dir), "interpreters": 0})
    with pytest.raises(ValueError, match="max_pixels"):
        ssd.create({"model_dir": str(model_dir), "max_pixels": "lots"})


def test_labels_are_coco_ids_with_gaps(labels: dict[int, str]) -> None:
    parsed = detector.parse_labels((default_model_dir() / LABELS_NAME).read_text())
    assert parsed == labels
    assert len(parsed) == 80 and parsed[0] == "person" and parsed[89] == "toothbrush"
    assert 11 not in parsed and parsed[12] == "stop sign"


def test_importing_handlers_does_not_import_tensorflow() -> None:
    code = (
        "import sys, handlers.ssd, handlers.detector, handlers.model_fetch; "
        "sys.exit('tensorflow' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, timeout=60, check=False)
    assert done.returncode == 0, "importing a handler module must not import tensorflow"


def test_closed_detector_refuses_work(model_dir: Path) -> None:
    model = detector.Detector.load(model_dir, interpreters=1)
    frame = np.zeros((300, 300, 3), np.uint8)
    assert model.detect(frame, 0.5, 20) == []
    model.close()
    with pytest.raises(RuntimeError, match="closed"):
        model.detect(frame, 0.5, 20)
