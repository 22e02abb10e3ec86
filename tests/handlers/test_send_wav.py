"""send-wav, called as the worker host calls it and through a served instance.

The picture is checked against the original procedure (tests/support/original_send_wav.py,
matplotlib's "plotstft"): the served PNG's plot area beside the original's, the
colorbar's numbers read back from the pixels (the glyphs are matched against the
font they are drawn in) beside the original's colour range, and the colour of a
tone of known amplitude read back through that colorbar beside the decibels the
original's formula gives it. Where the energy lands is computed from the spec (0 Hz
at the bottom, Nyquist at the top, bin k drawn as the band centred on (k + 0.5) /
bins of the height), not from the handler's own mapping code. Audio is generated
here (scipy's writer, the wave module, or headers packed by hand).
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import wave
from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFont
from scipy.io import wavfile
from scipy.signal import ShortTimeFFT
from scipy.signal.windows import hann

from handlers import send_wav
from handlers import spectrogram as engine
from handlers.base import Params, Request
from handlers.errors import FunctionError, InvalidInput, TooLarge
from handlers.wav import FLOAT_LIMIT, open_wav, read_wav
from tests.support import call_requests, collect_call
from tests.support import original_send_wav as original
from tests.support.media import tone, wav  # shared with the other tests

RATE = 44100
BINS = 513  # binsize 1024
CHUNK = 64 * 1024  # the input is fed in pieces, as the host feeds it
# Plot areas of ours and the original's, box-averaged to this grid (time x frequency),
# differ on average by at most this much per colour channel (0..255), and no cell
# by more than MAX_CELL_DIFFERENCE. Measured: 1.8 and 23 (int16, float32, int32).
GRID = (60, 30)
MEAN_DIFFERENCE = 5.0
MAX_CELL_DIFFERENCE = 48.0


@pytest.fixture(scope="module")
def fn():
    function = send_wav.create({})
    yield function
    function.close()


def pieces(data: bytes, size: int = CHUNK) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def call(fn, data: bytes, **params: str) -> bytes:
    reply = fn.handle(Request(Params(params), iter(pieces(data))))
    assert reply.content_type == "image/png"
    return b"".join(reply.parts)


def picture(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def rgb_of(png: bytes) -> np.ndarray:
    return np.asarray(picture(png).convert("RGB")).astype(np.int64)


def grey(png: bytes) -> np.ndarray:
    return np.asarray(picture(png).convert("L"), dtype=np.float64)


def wav24(samples: np.ndarray, rate: int = RATE) -> bytes:
    """24-bit PCM through the wave module: three little-endian bytes per sample."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    ints = np.round(frames * (2**23 - 1)).astype("<i4")
    packed = ints.view(np.uint8).reshape(*ints.shape, 4)[..., :3].tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(frames.shape[1])
        writer.setsampwidth(3)
        writer.setframerate(rate)
        writer.writeframes(packed)
    return out.getvalue()


def extensible(samples: np.ndarray, rate: int = RATE) -> bytes:
    """16-bit mono PCM in a WAVE_FORMAT_EXTENSIBLE header, packed by hand."""
    data = np.round(samples * 32767).astype("<i2").tobytes()
    subformat = struct.pack("<IHH", 1, 0x0000, 0x0010) + bytes.fromhex("800000aa00389b71")
    fmt = struct.pack("<HHIIHH", 0xFFFE, 1, rate, rate * 2, 2, 16)
    fmt += struct.pack("<HHI", 22, 16, 0x4) + subformat  # cbSize, valid bits, mask: centre
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def with_data_size(data: bytes, size: int) -> bytes:
    """The WAV with its data chunk's declared size replaced (scipy writes it at 40)."""
    assert data[36:40] == b"data"
    return data[:40] + struct.pack("<I", size) + data[44:]


def structured(seconds: float = 4.0, dtype=np.int16, rate: int = RATE) -> bytes:
    """Something with structure: a chirp from 200 Hz to 8 kHz, steady tones at 3 and
    12 kHz, and digital silence from 37.5% to 50% of the time."""
    t = np.arange(int(seconds * rate)) / rate
    samples = 0.4 * np.sin(2 * np.pi * (200 * t + 0.5 * (8000 - 200) / seconds * t * t))
    samples += 0.1 * np.sin(2 * np.pi * 3000 * t) + 0.01 * np.sin(2 * np.pi * 12000 * t)
    samples[int(0.375 * len(t)) : int(0.5 * len(t))] = 0.0
    if dtype == "int24":
        return wav24(samples, rate)
    return wav(samples, rate, dtype)


def expected_row(hz: float, height: int, rate: int = RATE, binsize: int = 1024) -> float:
    """Picture row (0 = top) of a frequency on the linear axis."""
    bins = binsize // 2 + 1
    centre = (hz / (rate / binsize) + 0.5) / bins  # fraction of the height above the bottom
    return height - centre * height


def brightest_row(png: bytes) -> int:
    return int(np.argmax(grey(png).mean(axis=1)))


def assert_tone_row(png: bytes, hz: float, height: int = 750, rate: int = RATE) -> None:
    one_bin = height / BINS
    row = brightest_row(png)
    assert abs(row - expected_row(hz, height, rate)) <= one_bin + 1, (row, hz)


# -- reading a labelled picture back: the plot, the colorbar and its numbers ------------


def plot_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the plot inside its black frame: the frame's
    vertical lines are the first columns that are black over most of the height."""
    black = rgb.max(axis=2) < 60
    columns = np.flatnonzero(black.mean(axis=0) > 0.5)
    left, right = int(columns[0]) + 1, int(columns[1])
    rows = np.flatnonzero(black[:, left:right].mean(axis=1) > 0.5)
    return left, int(rows[0]) + 1, right, int(rows[1])


def reduced(rgb: np.ndarray) -> np.ndarray:
    """A plot area box-averaged to GRID, as float."""
    image = Image.fromarray(rgb.astype(np.uint8)).resize(GRID, Image.Resampling.BOX)
    return np.asarray(image).astype(np.float64)


def plot_difference(ours_png: bytes, theirs: original.OriginalPicture) -> np.ndarray:
    """Per cell of GRID, the mean over RGB of |ours - original| in their plot areas."""
    ours = rgb_of(ours_png)
    left, top, right, bottom = plot_box(ours)
    o_left, o_top, o_right, o_bottom = theirs.plot_box
    original_rgb = rgb_of(theirs.png)[o_top:o_bottom, o_left:o_right]
    return np.abs(reduced(ours[top:bottom, left:right]) - reduced(original_rgb)).mean(axis=2)


@dataclass(frozen=True)
class Colorbar:
    """The colorbar as drawn: its colour per row, and its ticks read back as numbers."""

    top: int  # first row of the bar
    bottom: int  # one past its last row
    colours: np.ndarray  # (bottom - top, 3), the bar's colour on each row
    ticks: list[tuple[int, float]]  # (row, value) per tick mark, top to bottom

    def decibels_at(self, row: float) -> float:
        """The dB value of a row, by a line through the ticks (residuals checked)."""
        rows, values = np.array(self.ticks, dtype=np.float64).T
        slope, intercept = np.polyfit(rows, values, 1)
        return float(slope * row + intercept)

    def residual_rows(self) -> float:
        rows, values = np.array(self.ticks, dtype=np.float64).T
        slope, intercept = np.polyfit(rows, values, 1)
        return float(np.max(np.abs((values - intercept) / slope - rows)))

    def low_high(self) -> tuple[float, float]:
        """The dB at the bar's bottom edge and at its top edge."""
        return self.decibels_at(self.bottom), self.decibels_at(self.top)

    def decibels_of(self, colours: np.ndarray) -> np.ndarray:
        """dB of each colour: the row of the bar with the nearest colour, through the ticks."""
        distance = ((colours[:, None, :] - self.colours[None, :, :]) ** 2).sum(axis=2)
        rows = self.top + np.argmin(distance, axis=1) + 0.5
        return np.array([self.decibels_at(row) for row in rows])


def read_colorbar(rgb: np.ndarray) -> Colorbar:
    coloured = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])
    columns = np.flatnonzero(coloured.mean(axis=0) > 0.5)
    runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
    bar_left, bar_right = int(runs[-1][0]), int(runs[-1][-1]) + 1  # the rightmost run
    rows = np.flatnonzero(coloured[:, (bar_left + bar_right) // 2])
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    black = rgb.max(axis=2) < 60
    coverage = np.pad(255.0 - rgb.mean(axis=2), ((24, 24), (0, 0)))  # room above and below
    ticks = []
    for row in np.flatnonzero(black[:, bar_right + 1]):
        x = bar_right
        while black[row, x]:
            x += 1
        band = coverage[row : row + 49, x + 1 :]  # rows row - 24 .. row + 24 of the picture
        ticks.append((int(row), float(read_label(band, 24))))
    colours = rgb[top:bottom, (bar_left + bar_right) // 2].astype(np.float64)
    return Colorbar(top, bottom, colours, ticks)


LABEL_GLYPHS = "0123456789-."


@cache
def label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _ink_columns(coverage: np.ndarray) -> np.ndarray:
    return np.flatnonzero((coverage > 60).any(axis=0))


def _rendered(text: str, size: int, shape: tuple[int, int], row: int, ink_x: int) -> np.ndarray:
    """text drawn in the handler's font, anchored left-middle on ``row``, its ink from ink_x."""
    image = Image.new("L", (shape[1] + 64, shape[0]), 0)
    ImageDraw.Draw(image).text((32, row), text, fill=255, font=label_font(size), anchor="lm")
    coverage = np.asarray(image, dtype=np.float64)
    start = int(_ink_columns(coverage)[0]) - ink_x
    return coverage[:, start : start + shape[1]]


def _mismatch(coverage: np.ndarray, text: str, size: int, row: int, ink_x: int) -> float:
    return float(np.abs(coverage - _rendered(text, size, coverage.shape, row, ink_x)).sum())


def read_label(coverage: np.ndarray, row: int) -> str:
    """The number drawn in ``coverage`` (ink 0..255) anchored on ``row``: glyph by glyph,
    the character whose rendering in PIL's default font matches best, at the font size
    whose digits are as tall as the ink."""
    ink = _ink_columns(coverage)
    gaps = np.flatnonzero(np.diff(ink) > 5)  # anything further right is another label
    coverage = coverage[:, : int(ink[gaps[0]] if len(gaps) else ink[-1]) + 3]
    rows = np.flatnonzero((coverage > 60).any(axis=1))
    height = int(rows[-1] - rows[0] + 1)
    best: tuple[float, str] | None = None
    for size in range(9, 33):
        box = label_font(size).getbbox("0")
        if abs((box[3] - box[1]) - height) > 1:
            continue
        text, error = "", float(np.abs(coverage).sum())
        while len(text) < 8:
            tried = min(
                (_mismatch(coverage, text + glyph, size, row, int(ink[0])), glyph)
                for glyph in LABEL_GLYPHS
            )
            if tried[0] >= error:
                break
            error, text = tried[0], text + tried[1]
        if best is None or error < best[0]:
            best = (error, text)
    assert best is not None and best[1], "no label could be read"
    return best[1]


# -- the picture beside the original's --------------------------------------------------


@pytest.fixture(scope="module")
def served_structured(dcf):
    """The structured WAV through a served instance (streamed in chunks), and the
    original procedure's picture of it."""
    data = structured()
    with dcf.channel() as channel:
        stub = dcf.gateway(channel)
        content_type, png, _ = collect_call(
            stub.Call(call_requests("send-wav", pieces(data)), timeout=60)
        )
    assert content_type == "image/png"
    return data, png, original.original_picture(data)


def test_served_picture_matches_the_original(served_structured, fn):
    data, png, theirs = served_structured
    assert png == call(fn, data)  # served and in-process: the same bytes
    difference = plot_difference(png, theirs)
    assert difference.mean() <= MEAN_DIFFERENCE, difference.mean()
    assert difference.max() <= MAX_CELL_DIFFERENCE, difference.max()
    # The silence is white in both (no energy: -inf dB is left out of the colours).
    ours = rgb_of(png)
    left, top, right, bottom = plot_box(ours)
    width = right - left
    assert (ours[top:bottom, left + round(0.4 * width) : left + round(0.47 * width)] == 255).all()


def test_served_colorbar_numbers_are_the_originals_range(served_structured):
    _, png, theirs = served_structured
    bar = read_colorbar(rgb_of(png))
    values = [value for _, value in bar.ticks]
    assert len(values) >= 4
    steps = np.diff(values)
    assert np.allclose(steps, steps[0]) and steps[0] < 0, values  # evenly spaced, top down
    assert bar.residual_rows() <= 1.0, bar.ticks  # each label sits at its value's height
    low, high = bar.low_high()
    assert abs(low - theirs.vmin) <= 0.5, (low, theirs.vmin)
    assert abs(high - theirs.vmax) <= 0.5, (high, theirs.vmax)


@pytest.mark.parametrize("dtype", [np.float32, np.int32, "int24"])
def test_picture_matches_the_original_in_other_sample_formats(fn, dtype):
    data = structured(2.0, dtype)
    png, theirs = call(fn, data), original.original_picture(data)
    difference = plot_difference(png, theirs)
    assert difference.mean() <= MEAN_DIFFERENCE, difference.mean()
    low, high = read_colorbar(rgb_of(png)).low_high()
    assert abs(low - theirs.vmin) <= 0.5 and abs(high - theirs.vmax) <= 0.5, (
        low,
        high,
        theirs.vmin,
        theirs.vmax,
    )


def test_a_tone_of_known_amplitude_shows_its_decibels(fn):
    """Two tones on bin centres: 0.5 of full scale at bin 70 and 0.005 at bin 300. Each
    shows |X| = amplitude * 32766 * sum(hann) / 2 in 16-bit units, which is
    20 * log10(|X| / 1e-5) dB: 232.4 and 192.4. Their colours, read back through the
    colorbar, must say so."""
    window_gain = float(np.hanning(1024).sum()) / 2.0
    t = np.arange(2 * RATE) / RATE
    tones = {70: 0.5, 300: 0.005}
    samples = np.sum(
        [amp * np.sin(2 * np.pi * (k * RATE / 1024) * t) for k, amp in tones.items()], axis=0
    )
    png = call(fn, wav(samples))
    rgb = rgb_of(png)
    bar = read_colorbar(rgb)
    left, top, right, bottom = plot_box(rgb)
    height = bottom - top
    middle = slice(left + (right - left) // 4, right - (right - left) // 4)
    for k, amplitude in tones.items():
        expected = 20.0 * math.log10(amplitude * 32766 * window_gain / 1e-5)
        row = top + round(expected_row(k * RATE / 1024, height))
        near = rgb[row - 2 : row + 3, middle].astype(np.float64)
        shown = bar.decibels_of(near.reshape(-1, 3)).reshape(near.shape[:2]).max(axis=0)
        assert abs(float(np.median(shown)) - expected) <= 1.5, (k, np.median(shown), expected)


# -- the picture -------------------------------------------------------------------------


@pytest.mark.parametrize("hz", [1000.0, 5000.0])
def test_pure_tone_lands_on_its_row(fn, hz):
    png = call(fn, wav(tone(hz)), colorbar="false", colormap="gray")
    assert picture(png).size == (1500, 750)
    assert_tone_row(png, hz)


def test_default_is_1500x750_palette_png_with_colorbar(fn):
    png = call(fn, wav(tone(1000.0)))
    image = picture(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.size == (1500, 750)
    assert image.mode == "P"
    # The margins are white and the plot is not: labels and a colorbar surround it.
    rgb = np.asarray(image.convert("RGB"))
    assert (rgb[:, :5] == 255).all() and (rgb[-3:, :] == 255).all()
    assert len(np.unique(rgb[375, :].reshape(-1, 3), axis=0)) > 10


def test_colorbar_false_fills_the_picture_with_spectrogram(fn):
    rgb = np.asarray(picture(call(fn, wav(tone(1000.0)), colorbar="false")).convert("RGB"))
    assert not (rgb == 255).all(axis=2).any()  # jet has no white: no margin anywhere


@pytest.mark.parametrize("colorbar", ["true", "false"])
def test_width_and_height_set_the_size(fn, colorbar):
    png = call(fn, wav(tone(1000.0)), width="640", height="200", colorbar=colorbar)
    assert picture(png).size == (640, 200)


def test_tiny_picture_with_colorbar_still_renders(fn):
    assert picture(call(fn, wav(tone(1000.0)), width="16", height="16")).size == (16, 16)


@pytest.mark.parametrize("height", [300, 2000])
def test_tone_row_holds_when_rows_pool_or_repeat_bins(fn, height):
    png = call(fn, wav(tone(5000.0)), colorbar="false", colormap="gray", height=str(height))
    assert_tone_row(png, 5000.0, height)


def test_log_scale_puts_a_tone_on_a_log_axis(fn):
    # The axis starts at 20 Hz, or at the first bin when that is coarser (43 Hz here).
    height, low, nyquist = 750, max(20.0, RATE / 1024), RATE / 2
    png = call(fn, wav(tone(1000.0)), colorbar="false", colormap="gray", scale="log")
    fraction = math.log(1000.0 / low) / math.log(nyquist / low)
    one_bin = height * math.log(1 + (RATE / 1024) / 1000.0) / math.log(nyquist / low)
    assert abs(brightest_row(png) - (height - fraction * height)) <= one_bin + 1
    assert picture(call(fn, wav(tone(1000.0)), scale="log")).size == (1500, 750)


def test_silence_renders_white_without_nan_or_warnings(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            bare = call(fn, wav(np.zeros(RATE)), colorbar="false")
            labelled = call(fn, wav(np.zeros(RATE)))
    assert (rgb_of(bare) == 255).all()  # no energy anywhere: white, as the original leaves it
    assert picture(labelled).size == (1500, 750)


def test_long_file_keeps_a_short_burst(fn):
    """5 min at 8 kHz squeezed into 300 columns (~16 frames each): a 20 ms burst must
    survive as the brightest thing at its time, which picking frames would likely miss."""
    rate, seconds, at = 8000, 300.0, 201.3
    rng = np.random.default_rng(7)
    samples = 0.001 * rng.standard_normal(int(seconds * rate))
    start = int(at * rate)
    samples[start : start + 160] += tone(2000.0, 0.02, rate, 0.9)
    data = wav(samples, rate)
    for sent in (data, with_data_size(data, 0xFFFFFFFF)):  # length known, and not
        png = call(fn, sent, colorbar="false", colormap="gray", width="300", height="200")
        image = grey(png)
        row = round(expected_row(2000.0, 200, rate))
        band = image[row - 1 : row + 2].max(axis=0)
        assert band.max() == image.max()
        assert abs(int(np.argmax(band)) - at / seconds * 300) <= 2
        assert band.max() - np.median(band) > 60  # it stands out of the noise around it


def test_same_input_gives_the_same_bytes(fn):
    data = wav(tone(1000.0) + 0.01 * np.random.default_rng(1).standard_normal(RATE))
    first = call(fn, data)
    assert call(fn, data) == first
    other = send_wav.create({})
    assert call(other, data) == first
    assert call(fn, data, scale="log", colormap="viridis") == call(
        other, data, scale="log", colormap="viridis"
    )
    other.close()


def test_how_the_input_is_cut_does_not_change_the_picture(fn):
    """The WAV is read as it streams in: chunks that split the header, a frame or a
    sample give the same bytes as the whole file in one piece."""
    data = wav(np.stack([tone(1000.0, 0.2), tone(3000.0, 0.2)], axis=1))
    whole = b"".join(fn.handle(Request(Params({}), iter([data]))).parts)
    for size in (1, 3, 7, 4093, 65536):
        assert call_in(fn, pieces(data, size)) == whole, size


def call_in(fn, chunks: list[bytes], **params: str) -> bytes:
    return b"".join(fn.handle(Request(Params(params), iter(chunks))).parts)


def test_a_length_the_header_does_not_know_gives_the_same_picture(fn):
    """A streaming writer's placeholder size (0xFFFFFFFF): the file is read to its end;
    up to twice as many frames as columns the pooling is exactly the known length's."""
    data = wav(tone(1000.0) + 0.01 * np.random.default_rng(2).standard_normal(RATE))
    assert call(fn, with_data_size(data, 0xFFFFFFFF)) == call(fn, data)


def test_concurrent_calls_match_serial_ones(fn):
    """The host calls one Function from several worker threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [
        (wav(tone(hz, 0.5)), {"colormap": cmap, "scale": scale})
        for hz in (500.0, 3000.0)
        for cmap in ("jet", "magma")
        for scale in ("linear", "log")
    ]
    serial = [call(fn, data, **params) for data, params in jobs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda job: call(fn, job[0], **job[1]), jobs))
    assert parallel == serial


def test_overlap_and_binsize_change_the_picture(fn):
    data = wav(tone(1000.0))
    default = call(fn, data, colorbar="false")
    assert call(fn, data, colorbar="false", overlap="0") != default
    png = call(fn, data, colorbar="false", colormap="gray", binsize="4096", overlap="0.9")
    row = brightest_row(png)
    assert abs(row - expected_row(1000.0, 750, binsize=4096)) <= 750 / 2049 + 1


def test_other_colormaps_are_used(fn):
    data = wav(tone(1000.0))
    assert call(fn, data, colormap="viridis") != call(fn, data)
    palette = picture(call(fn, data, colormap="gray", colorbar="false")).getpalette()
    assert palette[:6] == [255, 255, 255, 0, 0, 0]  # white for no energy, then gray's black


def test_a_big_picture_is_a_valid_png(fn):
    """Big pictures are deflated in pieces at once: the pieces make one valid stream."""
    data = wav(0.1 * np.random.default_rng(5).standard_normal(RATE))
    png = call(fn, data, width="2000", height="1000")
    image = picture(png)
    assert image.size == (2000, 1000)
    assert call(fn, data, width="2000", height="1000", colorbar="false") != png


# -- the budget --------------------------------------------------------------------------


def untouched_input():
    raise AssertionError("the input was read")
    yield b""  # pragma: no cover - makes this a generator


def test_a_picture_over_the_pixel_budget_is_refused_before_the_input_is_read(fn):
    with pytest.raises(TooLarge) as caught:
        fn.handle(Request(Params({"width": "8192", "height": "8192"}), untouched_input()))
    message = _one_line(caught.value)
    assert "width x height" in message and "8192 x 8192" in message
    assert str(send_wav.MAX_PIXELS) in message
    assert caught.value.status == "RESOURCE_EXHAUSTED"
    # Right at the budget is fine.
    png = call(fn, wav(tone(1000.0, 0.1)), width="8192", height="2048", colorbar="false")
    assert picture(png).size == (8192, 2048)


def test_the_pixel_budget_is_an_option():
    small = send_wav.create({"max_pixels": 640 * 480})
    try:
        with pytest.raises(TooLarge, match="307200"):
            small.handle(Request(Params({"width": "641", "height": "480"}), untouched_input()))
        assert picture(call(small, wav(tone(1000.0, 0.1)), width="640", height="480")).size == (
            640,
            480,
        )
    finally:
        small.close()
    with pytest.raises(ValueError, match="max_pixels"):
        send_wav.create({"max_pixels": 10})


# -- sample formats and channels -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_sample_formats_render_the_tone(fn, dtype):
    png = call(fn, wav(tone(5000.0), dtype=dtype), colorbar="false", colormap="gray")
    assert_tone_row(png, 5000.0)


def test_24_bit_renders_the_tone(fn):
    data = wav24(tone(1000.0))
    assert read_wav(data)[0].sample_bytes == 3
    assert_tone_row(call(fn, data, colorbar="false", colormap="gray"), 1000.0)


def test_24_bit_stereo_decodes_as_scipy_reads_it():
    values = np.array([[0, 1], [-1, 2**23 - 1], [-(2**23), 12345]], dtype=np.int64)
    data = wav24(values / (2**23 - 1))
    _, reference = wavfile.read(io.BytesIO(data))  # left-justified in int32
    for channel in (0, 1):
        assert np.array_equal(read_wav(data, channel)[1], reference[:, channel])
        assert np.array_equal(reference[:, channel], values[:, channel] * 256)


def test_wave_format_extensible_renders(fn):
    data = extensible(tone(1000.0))
    assert struct.unpack_from("<H", data, 20)[0] == 0xFFFE
    assert_tone_row(call(fn, data, colorbar="false", colormap="gray"), 1000.0)


def test_stereo_mixes_by_default_and_channel_picks_one(fn):
    stereo = np.stack([tone(5000.0), tone(1000.0)], axis=1)
    data = wav(stereo)
    assert_tone_row(call(fn, data, colorbar="false", colormap="gray", channel="1"), 1000.0)
    assert_tone_row(call(fn, data, colorbar="false", colormap="gray", channel="0"), 5000.0)
    mixed = grey(call(fn, data, colorbar="false", colormap="gray")).mean(axis=1)
    for hz in (1000.0, 5000.0):
        assert mixed[round(expected_row(hz, 750))] > 0.9 * mixed.max()


def test_channel_out_of_range_is_invalid(fn):
    data = wav(np.stack([tone(1000.0)] * 2, axis=1))
    with pytest.raises(InvalidInput, match=r"channel.*2 channels"):
        call(fn, data, channel="5")
    with pytest.raises(InvalidInput, match="channel"):
        call(fn, wav(tone(1000.0)), channel="1")
    with pytest.raises(InvalidInput, match="channel"):
        call(fn, data, channel="-1")


# -- refused input -------------------------------------------------------------------------


def _one_line(error: FunctionError) -> str:
    message = error.message
    assert "\n" not in message and "Traceback" not in message and message
    return message


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not a WAV"),
        (b"hello, world" * 20, "not a WAV"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a WAV"),
        (b"RIFF\x00\x00\x00\x00AVI " + bytes(100), "not a WAV"),
        (wav(tone(1000.0))[:30], "truncated header"),
        (wav(tone(1000.0))[:20], "truncated"),
        (wav(tone(1000.0))[:44], "no samples"),
        (wav(np.zeros(0)), "no samples"),
        (wav(np.zeros((0, 2))), "no samples"),
    ],
)
def test_bad_input_is_invalid_with_a_one_line_reason(fn, data, reason):
    with pytest.raises(InvalidInput) as caught:
        call(fn, data)
    assert reason in _one_line(caught.value)


def test_unsupported_encodings_are_invalid(fn):
    data = bytearray(wav(tone(1000.0)))
    data[20:22] = struct.pack("<H", 0x0007)  # mu-law
    with pytest.raises(InvalidInput, match="mu-law"):
        call(fn, bytes(data))
    with pytest.raises(InvalidInput, match="NaN"):
        call(fn, wav(np.array([0.0, np.nan, 0.5] * 100), dtype=np.float32))
    with pytest.raises(InvalidInput, match="not audio"):
        call(fn, wav(np.array([0.0, 1e35, 0.5] * 100), dtype=np.float64))


def test_data_cut_mid_frame_renders_what_is_there(fn):
    data = wav(np.stack([tone(1000.0)] * 2, axis=1), dtype=np.int16)
    cut = data[: len(data) // 2 + 3]  # not a whole 4-byte frame
    assert len(read_wav(cut)[1]) == (len(cut) - 44) // 4
    assert_tone_row(call(fn, cut, colorbar="false", colormap="gray"), 1000.0)


def test_chunks_before_the_data_are_skipped_without_being_held(fn):
    """A 1 MiB LIST chunk (tags, cover art) between fmt and data changes nothing."""
    data = wav(tone(1000.0, 0.5))
    listing = b"LIST" + struct.pack("<I", 1 << 20) + bytes(1 << 20)
    body = data[12:36] + listing + data[36:]
    padded = b"RIFF" + struct.pack("<I", len(body) + 4) + b"WAVE" + body
    assert call(fn, padded) == call(fn, data)


def test_a_single_sample_renders(fn):
    assert picture(call(fn, wav(np.array([0.5])))).size == (1500, 750)


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"colormap": "no-such-map"}, "colormap"),
        ({"scale": "mel"}, "scale"),
        ({"width": "wide"}, "width"),
        ({"width": "9000"}, "width"),
        ({"height": "8"}, "height"),
        ({"binsize": "8"}, "binsize"),
        ({"overlap": "0.99"}, "overlap"),
        ({"overlap": "nan"}, "overlap"),
        ({"colorbar": "maybe"}, "colorbar"),
        ({"channel": "left"}, "channel"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_params_are_invalid_and_named(fn, params, name):
    with pytest.raises(InvalidInput) as caught:
        call(fn, wav(tone(1000.0, 0.1)), **params)
    assert name in _one_line(caught.value)


def test_function_lists_its_params(fn):
    assert set(fn.params) == {
        "binsize",
        "overlap",
        "scale",
        "colormap",
        "width",
        "height",
        "colorbar",
        "channel",
    }


# -- the streamed STFT against the original's and scipy's ---------------------------------


def streamed(
    samples: np.ndarray, binsize: int, hop: int, columns: int, frames: int | None, seed: int = 0
) -> engine.Pooled:
    """The handler's STFT of ``samples``, fed in blocks of random sizes, one band a bin."""
    bins = np.arange(binsize // 2 + 1)
    spectrogram = engine.Spectrogram(
        binsize, hop, engine.Bands.of_rows(bins, bins + 1), columns, frames
    )
    rng, start = np.random.default_rng(seed), 0
    while start < len(samples):
        stop = start + int(rng.integers(1, 3 * binsize))
        spectrogram.add(samples[start:stop])
        start = stop
    return spectrogram.finish()


@pytest.mark.parametrize(("binsize", "overlap"), [(1024, 0.5), (1000, 0.0), (256, 0.95), (33, 0.5)])
def test_streamed_stft_is_the_originals(binsize, overlap):
    samples = np.round(np.random.default_rng(3).standard_normal(5000) * 3000)
    samples[1000:2500] = 0.0  # digital silence: -inf dB, left out of the range
    reference = original.stft(samples, binsize, overlap)
    hop = binsize - math.floor(overlap * binsize)
    assert engine.stft_frames(len(samples), binsize, hop) == len(reference)
    with np.errstate(divide="ignore"):
        expected = 20.0 * np.log10(np.abs(reference) / 1e-5)
    pooled = streamed(samples, binsize, hop, columns=len(reference), frames=len(reference))
    assert pooled.groups.shape == expected.shape
    assert np.array_equal(np.isneginf(pooled.groups), np.isneginf(expected))
    finite = np.isfinite(expected)
    assert np.allclose(pooled.groups[finite], expected[finite], atol=1e-3)
    assert engine.decibels(pooled.high_power) == pytest.approx(expected[finite].max(), abs=1e-9)
    assert engine.decibels(pooled.low_power) == pytest.approx(expected[finite].min(), abs=1e-9)


def test_streamed_stft_agrees_with_scipy_short_time_fft():
    """An independent framing: scipy's ShortTimeFFT with the symmetric Hann window."""
    binsize, hop = 1024, 512
    samples = np.random.default_rng(4).standard_normal(20000)
    frames = engine.stft_frames(len(samples), binsize, hop)
    stft = ShortTimeFFT(hann(binsize, sym=True), hop=hop, fs=RATE)
    reference = np.abs(stft.stft(samples, p0=0, p1=frames).T)
    pooled = streamed(samples, binsize, hop, columns=frames, frames=frames, seed=5)
    assert np.allclose(pooled.groups, 20.0 * np.log10(reference / 1e-5), atol=1e-3)


def test_column_pooling_is_a_max_even_across_blocks():
    """binsize 16384 makes blocks of 16 frames, so most column groups span several."""
    samples = np.random.default_rng(4).standard_normal(300 * 8192)
    binsize, hop = 16384, 8192
    frames = engine.stft_frames(len(samples), binsize, hop)
    full = streamed(samples, binsize, hop, columns=frames, frames=frames).groups
    pooled = streamed(samples, binsize, hop, columns=7, frames=frames).groups
    edges = (np.arange(8) * frames) // 7
    assert np.array_equal(pooled, np.maximum.reduceat(full, edges[:-1], axis=0))


def test_unknown_length_pools_in_doubling_groups():
    """Without a known length, groups of 2^k frames, as few as keep them under twice the
    columns; the picture's columns are then whole groups."""
    samples = np.random.default_rng(6).standard_normal(301 * 512)
    binsize, hop, columns = 1024, 512, 10
    frames = engine.stft_frames(len(samples), binsize, hop)
    full = streamed(samples, binsize, hop, columns=frames, frames=frames).groups
    pooled = streamed(samples, binsize, hop, columns=columns, frames=None).groups
    width = 1
    while -(-frames // width) > 2 * columns:
        width *= 2
    assert width == 16
    expected = np.maximum.reduceat(full, np.arange(0, frames, width), axis=0)
    assert np.array_equal(pooled, expected)


# -- the WAV reader against scipy ------------------------------------------------------------


_FORMATS = st.sampled_from([np.uint8, np.int16, np.int32, np.float32, np.float64])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=_FORMATS,
    channels=st.integers(1, 4),
    frames=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    rate=st.integers(1, 192000),
    chunk=st.integers(1, 700),
)
def test_reader_agrees_with_scipy(dtype, channels, frames, seed, rate, chunk):
    """Samples in scipy's units (8-bit less its 128), however the input is cut."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        raw = rng.uniform(-1, 1, (frames, channels)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        raw = rng.integers(info.min, info.max, (frames, channels), endpoint=True, dtype=dtype)
    out = io.BytesIO()
    wavfile.write(out, rate, raw)
    data = out.getvalue()
    _, reference = wavfile.read(io.BytesIO(data))
    reference = reference.reshape(frames, channels).astype(np.float64)
    if dtype == np.uint8:
        reference -= 128.0
    reader = open_wav(pieces(data, chunk))
    assert (reader.format.rate, reader.format.channels, reader.format.frames) == (
        rate,
        channels,
        frames,
    )
    assert np.array_equal(np.concatenate(list(reader.samples())), reference.mean(axis=1))
    for channel in range(channels):
        assert np.array_equal(read_wav(data, channel)[1], reference[:, channel])


_VALID = wav(np.stack([tone(440.0, 0.01), tone(880.0, 0.01)], axis=1))


@settings(max_examples=300, deadline=None)
@given(
    cut=st.integers(0, len(_VALID)),
    edits=st.lists(st.tuples(st.integers(0, 79), st.integers(0, 255)), max_size=6),
)
def test_damaged_files_are_read_or_refused_never_crash(cut, edits):
    data = bytearray(_VALID[:cut])
    for position, value in edits:
        if position < len(data):
            data[position] = value
    try:
        _, samples = read_wav(bytes(data))
    except InvalidInput as error:
        _one_line(error)
        return
    assert samples.dtype == np.float64 and len(samples) >= 1
    assert np.isfinite(samples).all() and np.abs(samples).max() <= FLOAT_LIMIT
