"""Fuzzing every function through the gateway: bad bytes and bad params never break it.

Against the running service (the session ``dcf`` fixture), each function gets:
hand-made hostile inputs (wrong formats, zero bytes, headers declaring absurd
sizes, a damaged MP4 index, input over the limit), hypothesis-driven mutations
of real inputs (truncations, bit flips, overwritten size fields, inserted,
deleted and repeated runs), random params, and malformed Call streams; each
input goes through Invoke or Call (cut into chunks of varying size). Every
answer must be OK (with a well-formed output), INVALID_ARGUMENT, or
RESOURCE_EXHAUSTED, within a per-call timeout; never INTERNAL, UNKNOWN,
UNAVAILABLE or a hang. Afterwards each function is still SERVING, answers a good
input correctly, no worker restarted, and the log holds no traceback.

Hypothesis runs derandomized (a fixed seed per test), without a database and
without shrinking, so CI sees the same cases every time and a failure reports
the readable recipe of its input (seed file and mutations), not raw bytes.
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from tests.support import Service, media
from tests.support.reliability import (
    ACCEPTABLE,
    Outcome,
    call,
    health,
    invoke,
    log_since,
    log_size,
    pieces,
    worker_starts,
)

TIMEOUT = 60.0  # per call; a hang shows as DEADLINE_EXCEEDED, which fails the test
FUNCTIONS = ("hello-dcf", "ssd", "send-wav", "ssd-video")
# Params every call of a function starts from, to keep the work per case small.
BASE_PARAMS: dict[str, dict[str, str]] = {
    "hello-dcf": {},
    "ssd": {},
    "send-wav": {"width": "256", "height": "128"},
    "ssd-video": {"max_frames": "2"},
}
FUZZ: dict[str, Any] = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "phases": (Phase.explicit, Phase.generate),
    "suppress_health_check": list(HealthCheck),
    "report_multiple_bugs": False,
}
MUTATIONS = {"hello-dcf": 30, "ssd": 80, "send-wav": 80, "ssd-video": 60}
PARAM_CASES = {"hello-dcf": 15, "ssd": 40, "send-wav": 45, "ssd-video": 35}


@pytest.fixture(scope="module")
def gateway(dcf: Service) -> Iterator[dcf_pb2_grpc.GatewayStub]:
    with dcf.channel() as channel:
        yield dcf.gateway(channel)


# -- real inputs to start from -----------------------------------------------------------


@cache
def seeds(function: str) -> dict[str, bytes]:
    small = (96, 112)
    if function == "hello-dcf":
        return {"text": b"hello, dcf\n" * 20, "binary": bytes(range(256)) * 8}
    if function == "ssd":
        return {
            "grace.jpg": media.photo(),
            "small.png": media.photo_as("PNG", small),
            "small.gif": media.photo_as("GIF", small),
            "small.bmp": media.photo_as("BMP", small),
            "small.webp": media.photo_as("WEBP", small),
            "small.tiff": media.photo_as("TIFF", small),
            "small.jpg.b64": base64.b64encode(media.photo_as("JPEG", small)),
        }
    if function == "send-wav":
        rate = 8000
        burst = media.tone(440, 0.2, rate)
        return {
            "int16.wav": media.wav(burst, rate),
            "uint8-stereo.wav": media.wav(np.stack([burst, burst[::-1]], 1), rate, np.uint8),
            "float32.wav": media.wav(burst, rate, np.float32),
            "int32.wav": media.wav(burst, rate, np.int32),
        }
    if function == "ssd-video":
        return {
            "clip.mp4": media.video(4, (160, 120)),
            "clip.avi": media.video(3, (160, 120), "MJPG", ".avi"),
        }
    raise KeyError(function)


# -- what a correct OK answer looks like ---------------------------------------------------


def output_problem(
    function: str, data: bytes, params: Mapping[str, str], outcome: Outcome, partial: bool
) -> str | None:
    """Why an OK answer is malformed, or None if it is a proper answer."""
    try:
        if function == "hello-dcf":
            return None if outcome.body == data else "the echo differs from the input"
        if function == "ssd":
            if params.get("annotate", "").strip().lower() in ("1", "true", "yes", "on"):
                Image.open(io.BytesIO(outcome.body)).verify()
                return None if outcome.content_type == "image/png" else outcome.content_type
            document = json.loads(outcome.body)
            assert document["width"] >= 1 and document["height"] >= 1
            for box in document["detections"]:
                assert 0 <= box["xmin"] <= box["xmax"] <= document["width"], box
                assert 0 <= box["ymin"] <= box["ymax"] <= document["height"], box
            return None
        if function == "send-wav":
            picture = Image.open(io.BytesIO(outcome.body))
            want = (int(params.get("width", 1500)), int(params.get("height", 750)))
            assert picture.format == "PNG" and picture.size == want, (picture.format, picture.size)
            return None
        if function == "ssd-video":
            if partial:
                documents = [json.loads(part) for part in outcome.results]
                frames, summary = documents[:-1], documents[-1]
            else:
                summary = json.loads(outcome.body)
                frames = summary["frames"]
            assert {"width", "height", "fps", "frames_read"} <= set(summary), summary
            assert all("frame" in f and "detections" in f for f in frames), frames
            assert 1 <= len(frames) <= int(params.get("max_frames", 10))
            return None
    except Exception as exc:  # noqa: BLE001 - any malformation is the finding
        return f"malformed {function} output: {type(exc).__name__}: {exc}"
    return None


def send(
    stub: dcf_pb2_grpc.GatewayStub,
    function: str,
    data: bytes,
    params: Mapping[str, str],
    via: str,
    chunk: int = 65536,
    collect: bool = False,
) -> tuple[Outcome, str | None]:
    """One fuzz case: its outcome, and what is wrong with it (None if nothing)."""
    if via == "invoke":
        outcome = invoke(stub, function, data, params, TIMEOUT)
    else:
        outcome = call(stub, function, pieces(data, chunk), params, TIMEOUT, collect=collect)
    if outcome.code not in ACCEPTABLE:
        return outcome, f"{function} via {via}: {outcome}"
    if outcome.code == "OK":
        partial = via == "call" and not collect
        problem = output_problem(function, data, params, outcome, partial)
        if problem:
            return outcome, f"{function} via {via}: {problem}"
    return outcome, None


def assert_all_acceptable(stub, function: str, cases, vias=("invoke", "call")) -> dict[str, int]:
    """Send every (label, data, params) case through each front; one report of every failure."""
    failures: list[str] = []
    seen: dict[str, int] = {}
    for label, data, params in cases:
        for via in vias:
            outcome, problem = send(stub, function, data, {**BASE_PARAMS[function], **params}, via)
            seen[outcome.code] = seen.get(outcome.code, 0) + 1
            if problem:
                failures.append(f"{label}: {problem}")
    assert not failures, "\n".join(failures)
    return seen


# -- the service after the fuzz -------------------------------------------------------------


@dataclass
class Mark:
    log_offset: int
    starts: int


def mark(dcf: Service) -> Mark:
    return Mark(log_size(dcf), worker_starts(dcf))


GOOD_ANSWERS = {
    "hello-dcf": lambda stub: invoke(stub, "hello-dcf", b"still here").body == b"still here",
    "ssd": lambda stub: any(
        d["label"] == "person" and d["confidence"] > 0.5
        for d in json.loads(invoke(stub, "ssd", media.photo()).body or b"{}").get("detections", [])
    ),
    "send-wav": lambda stub: (
        Image.open(
            io.BytesIO(
                invoke(
                    stub, "send-wav", media.chirp_wav(0.5), {"width": "300", "height": "200"}
                ).body
            )
        ).size
        == (300, 200)
    ),
    "ssd-video": lambda stub: (
        len(
            json.loads(
                invoke(stub, "ssd-video", seeds("ssd-video")["clip.mp4"], {"max_frames": "3"}).body
                or b"{}"
            ).get("frames", [])
        )
        == 3
    ),
}
# Call log lines (the gateway's and the workers') end with the call's status.
_BAD_CALL = re.compile(r"call \S+ (\S+) (INTERNAL|UNKNOWN|UNAVAILABLE|DEADLINE_EXCEEDED) ")


def assert_healthy(dcf: Service, stub, function: str, before: Mark) -> None:
    status = health(dcf, [function])
    assert status == {function: "SERVING"}, status
    assert GOOD_ANSWERS[function](stub), f"{function} no longer answers a good input correctly"
    assert worker_starts(dcf) == before.starts, "a worker died and was restarted during the fuzz"
    log = log_since(dcf, before.log_offset)
    assert "Traceback" not in log, log[max(0, log.index("Traceback") - 2000) :][:6000]
    bad = [m.group(0) for m in _BAD_CALL.finditer(log)]
    assert not bad, bad[:10]


# -- hand-made hostile inputs ----------------------------------------------------------------


def hostile(function: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """Wrong formats, zero bytes and absurd declared sizes, by function."""
    clip = seeds("ssd-video")["clip.mp4"] if function == "ssd-video" else b""
    noise = np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    common: list[tuple[str, bytes, dict[str, str]]] = [
        ("zero bytes", b"", {}),
        ("one NUL", b"\x00", {}),
        ("text", b"this is plain text, not media\n" * 10, {}),
        ("64 KiB of NUL", bytes(65536), {}),
        ("random bytes", noise, {}),
        ("a JPEG", media.photo(), {}),
        ("a WAV", media.chirp_wav(0.3), {}),
        ("an MP4", seeds("ssd-video")["clip.mp4"], {}),
        ("base64 of a WAV", base64.b64encode(media.chirp_wav(0.1)), {}),
    ]
    if function == "ssd":
        big = media.photo()
        return [
            *common,
            ("PNG declaring 100000x100000", media.png_header_only(100_000, 100_000), {}),
            (
                "PNG declaring 32768x1500, 16-bit RGB",
                media.png_header_only(32_768, 1500, 16, 2),
                {},
            ),
            ("PNG declaring 0x0", media.png_header_only(0, 0), {}),
            ("JPEG declaring 65000x65000", media.jpeg_with_size(big, 65_000, 65_000), {}),
            ("JPEG declaring 7000x7000", media.jpeg_with_size(big, 7000, 7000), {}),
            ("JPEG declaring 0x0", media.jpeg_with_size(big, 0, 0), {}),
            ("GIF declaring 60000x60000", media.gif_header_only(60_000, 60_000), {}),
            ("BMP declaring 30000x30000", media.bmp_header_only(30_000, 30_000), {}),
            ("BMP declaring negative height", media.bmp_header_only(100, -(2**31)), {}),
            ("BMP declaring 32 bits of 1x1", media.bmp_header_only(1, 1, 32), {}),
            ("a real 7000x7000 PNG (49 MP, compresses to little)", _flat_png(7000, 7000), {}),
            ("annotate on a truncated JPEG", big[: len(big) // 3], {"annotate": "true"}),
            (
                "a data: URI around base64 of a GIF",
                b"data:image/gif;base64," + base64.b64encode(media.photo_as("GIF", (40, 40))),
                {},
            ),
        ]
    if function == "send-wav":
        payload = b"\x80" * (65535 * 3)
        nan = struct.pack("<4f", 0, float("nan"), 1, 2)
        huge = struct.pack("<4d", 1e308, -1e308, 0, 1)
        return [
            *common,
            ("WAV declaring 4 GB of data", media.wav_header(data_size=0xFFFFFFFF), {}),
            ("WAV declaring 4 GB RIFF", media.wav_header(riff_size=0xFFFFFFFF), {}),
            (
                "WAV with 65535 channels of 8 bits",
                media.wav_header(channels=65535, bits=8, payload=payload),
                {},
            ),
            ("WAV with 65535 channels of 16 bits", media.wav_header(channels=65535), {}),
            ("WAV with 0 channels", media.wav_header(channels=0), {}),
            ("WAV at 0 Hz", media.wav_header(rate=0), {}),
            ("WAV at 4294967295 Hz", media.wav_header(rate=0xFFFFFFFF), {}),
            ("WAV at 1 Hz, log scale", media.wav_header(rate=1), {"scale": "log"}),
            ("WAV with block align 0", media.wav_header(block_align=0), {}),
            ("WAV of 64-bit PCM", media.wav_header(bits=64), {}),
            ("WAV of 0-bit PCM", media.wav_header(bits=0), {}),
            ("WAV of mu-law", media.wav_header(tag=7, bits=8), {}),
            ("WAV of float with NaN", media.wav_header(tag=3, bits=32, payload=nan), {}),
            ("WAV of float64 at 1e308", media.wav_header(tag=3, bits=64, payload=huge), {}),
            ("WAV with fmt chunk declaring 4 GB", media.wav_header(fmt_size=0xFFFFFFFF), {}),
            ("WAV with half a frame", media.wav_header(channels=2, payload=b"\x01\x02"), {}),
            ("WAV with no data chunk", media.wav_header()[:36], {}),
            ("RIFX (big-endian) WAV", b"RIFX" + media.wav_header()[4:], {}),
            (
                "one-sample WAV, widest picture",
                media.wav_header(payload=b"\x00\x40"),
                {"width": "8192", "height": "64"},
            ),
            (
                "WAV with a 32768 frame on 10 samples",
                media.wav_header(payload=b"\x10\x00" * 10),
                {"binsize": "32768", "overlap": "0.95"},
            ),
        ]
    if function == "ssd-video":
        avi = seeds("ssd-video")["clip.avi"]
        mdat, _ = media.mp4_atoms(clip)[b"mdat"]
        huge_mdat = bytearray(clip)
        struct.pack_into(">I", huge_mdat, mdat, 0xFFFFFFFF)
        return [
            *common,
            ("MP4 with moov claiming 4 GB", media.mp4_broken_moov(clip, "size"), {}),
            ("MP4 with moov zeroed", media.mp4_broken_moov(clip, "zero"), {}),
            ("MP4 without moov", media.mp4_broken_moov(clip, "cut"), {}),
            ("MP4 with moov garbled", media.mp4_broken_moov(clip, "garble"), {}),
            ("MP4 with mdat claiming 4 GB", bytes(huge_mdat), {}),
            ("MP4 cut in half", clip[: len(clip) // 2], {}),
            ("MP4 header only", clip[:64], {}),
            ("MP4 declaring 65535x65535 frames", media.mp4_with_size(clip, 65535, 65535), {}),
            ("MP4 declaring 0x0 frames", media.mp4_with_size(clip, 0, 0), {}),
            (
                "MJPEG AVI declaring 16000x16000 frames",
                media.mjpeg_with_size(avi, 16_000, 16_000),
                {},
            ),
            ("MJPEG AVI declaring 7000x7000 frames", media.mjpeg_with_size(avi, 7000, 7000), {}),
            ("MJPEG AVI declaring 1x1 frames", media.mjpeg_with_size(avi, 1, 1), {}),
            ("AVI cut after its header", avi[:2048], {}),
            (
                "an HLS playlist",
                b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n",
                {},
            ),
            ("an ffconcat script", b"ffconcat version 1.0\nfile '/etc/passwd'\n", {}),
            (
                "an SDP description",
                b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nm=video 9 RTP/AVP 96\n",
                {},
            ),
            ("MP4, every frame, stride 1000", clip, {"max_frames": "1000", "stride": "1000"}),
        ]
    return common


@cache
def _flat_png(width: int, height: int) -> bytes:
    """A real, fully valid greyscale PNG of one colour: large picture, small file."""
    row = b"\x00" + b"\x80" * width
    compressor = zlib.compressobj(6)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + media.png_chunk(b"IHDR", ihdr)
        + media.png_chunk(b"IDAT", body)
        + media.png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("function", FUNCTIONS)
def test_hostile_inputs(dcf, gateway, function):
    before = mark(dcf)
    seen = assert_all_acceptable(gateway, function, hostile(function))
    if function != "hello-dcf":
        # Not a rubber stamp: the hostile inputs are mostly refused, and zero bytes always are.
        assert seen.get("INVALID_ARGUMENT", 0) > seen.get("OK", 0), seen
        empty, _ = send(gateway, function, b"", BASE_PARAMS[function], "call")
        assert empty.code == "INVALID_ARGUMENT", empty
    assert_healthy(dcf, gateway, function, before)


@pytest.mark.parametrize("function", ["hello-dcf", "ssd", "ssd-video"])
def test_input_over_the_limit_is_resource_exhausted(dcf, gateway, function):
    """Over the function's limit through Call, and over the Invoke message limit."""
    before = mark(dcf)
    entry = dcf.document["functions"][function]
    limit = _bytes(entry.get("max_input_bytes", 0))
    if limit and limit <= 256 << 20:
        chunk = bytes(1 << 20)
        outcome = call(
            gateway,
            function,
            (chunk for _ in range(limit // len(chunk) + 1)),
            BASE_PARAMS[function],
            TIMEOUT,
        )
        assert outcome.code == "RESOURCE_EXHAUSTED", outcome
        assert str(limit) in outcome.message, outcome
    invoke_limit = _bytes(dcf.document["server"].get("max_invoke_bytes", "64MiB"))
    too_big = bytes(invoke_limit + (1 << 17))
    outcome = invoke(gateway, function, too_big, BASE_PARAMS[function], TIMEOUT)
    assert outcome.code == "RESOURCE_EXHAUSTED", outcome
    assert_healthy(dcf, gateway, function, before)


def _bytes(value) -> int:
    if isinstance(value, int):
        return value
    text = str(value).strip()
    for suffix, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


# -- mutations of real inputs ------------------------------------------------------------------

# Values that size fields love to be fed: 0, 1, signed and unsigned extremes.
ABSURD = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


@dataclass(frozen=True)
class Recipe:
    """A seed input and the mutations applied to it, in order: readable in a failure report."""

    seed: str
    mutations: tuple[tuple, ...]

    def apply(self, function: str) -> bytes:
        data = bytearray(seeds(function)[self.seed])
        for op, *args in self.mutations:
            size = len(data)
            if op == "truncate":
                del data[args[0] % (size + 1) :]
                continue
            if size == 0:
                continue
            pos = args[0] % size
            if op == "flip":
                data[pos] ^= 1 << args[1]
            elif op == "byte":
                data[pos] = args[1]
            elif op == "zero":
                data[pos : pos + args[1]] = bytes(len(data[pos : pos + args[1]]))
            elif op == "insert":
                data[pos:pos] = args[1]
            elif op == "delete":
                del data[pos : pos + args[1]]
            elif op == "repeat":
                data[pos:pos] = bytes(data[pos : pos + args[1]]) * args[2]
            elif op in ("u16le", "u16be", "u32le", "u32be"):
                fmt = {"u16le": "<H", "u16be": ">H", "u32le": "<I", "u32be": ">I"}[op]
                value = args[1] & (0xFFFF if "16" in op else 0xFFFFFFFF)
                if pos + struct.calcsize(fmt) <= size:
                    struct.pack_into(fmt, data, pos, value)
        return bytes(data)


@st.composite
def recipes(draw, function: str) -> Recipe:
    names = sorted(seeds(function))
    seed = draw(st.sampled_from(names))
    size = len(seeds(function)[seed])
    # Most damage lands in the first 512 bytes, where the headers are.
    position = st.one_of(st.integers(0, min(size, 512) - 1), st.integers(0, size - 1))
    op = st.one_of(
        st.tuples(st.just("truncate"), st.integers(0, size)),
        st.tuples(st.just("flip"), position, st.integers(0, 7)),
        st.tuples(st.just("byte"), position, st.integers(0, 255)),
        st.tuples(st.just("zero"), position, st.integers(1, 4096)),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("delete"), position, st.integers(1, 4096)),
        st.tuples(st.just("repeat"), position, st.integers(1, 512), st.integers(1, 8)),
        st.tuples(
            st.sampled_from(["u16le", "u16be", "u32le", "u32be"]), position, st.sampled_from(ABSURD)
        ),
    )
    return Recipe(seed, tuple(draw(st.lists(op, min_size=1, max_size=4))))


FRONTS = st.one_of(
    st.just(("invoke", 0, False)),
    st.tuples(st.just("call"), st.sampled_from([1000, 4096, 65536, 1 << 20]), st.booleans()),
)


def run_mutations(dcf, gateway, function: str) -> None:
    before = mark(dcf)
    seen: dict[str, int] = {}

    @settings(max_examples=MUTATIONS[function], **FUZZ)
    @given(recipe=recipes(function), front=FRONTS)
    def case(recipe: Recipe, front: tuple[str, int, bool]) -> None:
        via, chunk, collect = front
        data = recipe.apply(function)
        outcome, problem = send(
            gateway, function, data, BASE_PARAMS[function], via, chunk or 65536, collect
        )
        seen[outcome.code] = seen.get(outcome.code, 0) + 1
        assert problem is None, f"{problem}\ninput: {recipe} ({len(data)} bytes)"

    case()
    print("SEEN", function, seen)
    assert sum(seen.values()) >= MUTATIONS[function] // 2, seen
    assert_healthy(dcf, gateway, function, before)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_mutated_inputs(dcf, gateway, function):
    run_mutations(dcf, gateway, function)


# -- random params -------------------------------------------------------------------------------

NASTY_VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "0",
            "-0",
            "1",
            "-1",
            "0.5",
            "0.95",
            "0.951",
            "1.0000001",
            "16",
            "15",
            "32768",
            "32769",
            "8192",
            "8193",
            "100",
            "101",
            "1000",
            "1001",
            "1e3",
            "1e309",
            "-1e309",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "1e-320",
            "99999999999999999999999",
            "0x10",
            "1_000",
            " 5 ",
            "5.0",
            "٣",
            "½",
            "2147483648",
            "-2147483649",
            "true",
            "false",
            "TRUE",
            "yes",
            "no",
            "on",
            "maybe",
            "\x00",
            "jet",
            "viridis",
            "gray",
            "jet_r",
            "Greys",
            "nope",
            "log",
            "linear",
            "LOG",
            "\u202e12",
            "a" * 2000,
        ]
    ),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=20),
)


def _number(low: float, high: float) -> st.SearchStrategy[str]:
    return st.floats(low, high).map(lambda x: f"{x:.3g}")


def _whole(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(str)


_BOOLEAN = st.sampled_from(["true", "false", "1", "0", "yes", "off"])
# Each param's values within its documented range (kept moderate where cost grows with it).
PARAM_VALUES: dict[str, dict[str, st.SearchStrategy[str]]] = {
    "hello-dcf": {"threshold": _number(0, 1), "anything": st.just("1")},
    "ssd": {"threshold": _number(0, 1), "max_detections": _whole(1, 100), "annotate": _BOOLEAN},
    "send-wav": {
        "binsize": _whole(16, 32768),
        "overlap": _number(0, 0.95),
        "scale": st.sampled_from(["linear", "log"]),
        "colormap": st.sampled_from(["jet", "viridis", "gray", "magma_r", "tab20", "flag"]),
        "width": _whole(16, 1024),
        "height": _whole(16, 1024),
        "colorbar": _BOOLEAN,
        "channel": _whole(0, 2),
    },
    "ssd-video": {
        "max_frames": _whole(1, 20),
        "stride": _whole(1, 5),
        "threshold": _number(0, 1),
        "max_detections": _whole(1, 100),
    },
}


@st.composite
def param_sets(draw, function: str) -> dict[str, str]:
    """Some of the function's params, each in range or (one time in three) not."""
    values = PARAM_VALUES[function]
    chosen = draw(
        st.lists(st.sampled_from(sorted(values)), min_size=1, max_size=len(values), unique=True)
    )
    params = {
        name: draw(NASTY_VALUES if draw(st.integers(0, 2)) == 0 else values[name])
        for name in chosen
    }
    if draw(st.integers(0, 9)) == 0:
        params[draw(st.text(min_size=1, max_size=12))] = draw(NASTY_VALUES)  # a name it lacks
    return params


def good_input(function: str) -> bytes:
    return {
        "hello-dcf": b"params only",
        "ssd": media.photo_as("JPEG", (160, 180)),
        "send-wav": media.wav(media.tone(1000, 0.5, 16000), 16000),
        "ssd-video": seeds("ssd-video")["clip.mp4"],
    }[function]


@pytest.mark.parametrize("function", FUNCTIONS)
def test_random_params(dcf, gateway, function):
    before = mark(dcf)
    data = good_input(function)
    seen: dict[str, int] = {}

    @settings(max_examples=PARAM_CASES[function], **FUZZ)
    @given(params=param_sets(function), front=FRONTS)
    def case(params: dict[str, str], front: tuple[str, int, bool]) -> None:
        via, chunk, collect = front
        merged = {**BASE_PARAMS[function], **params}
        outcome, problem = send(gateway, function, data, merged, via, chunk or 65536, collect)
        seen[outcome.code] = seen.get(outcome.code, 0) + 1
        assert problem is None, f"{problem}\nparams: {merged!r}"
        if outcome.code == "INVALID_ARGUMENT":
            # The reason names the param at fault, in one line.
            assert "\n" not in outcome.message
            # (a name with a line break in it is named up to the break)
            named = [(name.splitlines() or [""])[0] for name in merged]
            assert any(name in outcome.message for name in named), (merged, outcome.message)

    case()
    print("SEEN", function, seen)
    assert seen.get("INVALID_ARGUMENT", 0) > 0, seen
    if function != "hello-dcf":  # it takes no params: every set is refused
        assert seen.get("OK", 0) > 0, seen
    assert_healthy(dcf, gateway, function, before)


# -- malformed Call streams ----------------------------------------------------------------------


def header(function: str, **params: str) -> dcf_pb2.CallRequest:
    head = dcf_pb2.CallHeader(function=function)
    head.params.update(params)
    return dcf_pb2.CallRequest(header=head)


def chunk(data: bytes) -> dcf_pb2.CallRequest:
    return dcf_pb2.CallRequest(chunk=data)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_malformed_streams(dcf, gateway, function):
    before = mark(dcf)
    data = good_input(function)
    streams = {
        "no messages": ([], "INVALID_ARGUMENT"),
        "a chunk first": ([chunk(data), header(function)], "INVALID_ARGUMENT"),
        "a header naming nothing": ([header("")], "INVALID_ARGUMENT"),
        "a second header": (
            [header(function), chunk(data[:100]), header(function)],
            "INVALID_ARGUMENT",
        ),
        "a second header before any chunk": (
            [header(function), header(function)],
            "INVALID_ARGUMENT",
        ),
        "an empty message": ([header(function), dcf_pb2.CallRequest()], "INVALID_ARGUMENT"),
        "an unknown function": ([header(function + "-nope"), chunk(data)], "NOT_FOUND"),
        "empty chunks around the input": (
            [header(function), chunk(b""), chunk(data), chunk(b"")],
            "OK",
        ),
    }
    failures = []
    for label, (messages, want) in streams.items():
        outcome = call(gateway, function, [], timeout=TIMEOUT, stream=iter(messages))
        if outcome.code != want:
            failures.append(f"{label}: wanted {want}, got {outcome}")
        elif want != "OK" and "\n" in outcome.message:
            failures.append(f"{label}: a reason of more than one line: {outcome.message!r}")
    assert not failures, "\n".join(failures)
    assert_healthy(dcf, gateway, function, before)
