"""send-wav, called as the worker host calls it: bytes and params in, PNG parts out.

Audio is generated here (scipy's writer, the wave module, or headers packed by
hand), and pictures are checked by where the energy lands, computed from the
spec (0 Hz at the bottom, Nyquist at the top, bin k drawn as the band centred on
(k + 0.5) / bins of the height), not from the handler's own mapping code.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import wave

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.io import wavfile
from scipy.signal import ShortTimeFFT
from scipy.signal.windows import hann

from handlers import send_wav
from handlers.base import InvalidInput, Params, Request
from handlers.wav import read_wav
from tests.media import tone, wav  # shared with the other tests

RATE = 44100
BINS = 513  # binsize 1024


@pytest.fixture(scope="module")
def fn():
    return send_wav.create({})


def call(fn, data: bytes, **params: str) -> bytes:
    reply = fn.handle(Request(Params(params), iter([data])))
    assert reply.content_type == "image/png"
    return b"".join(reply.parts)


def picture(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


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


def test_silence_renders_without_nan_or_warnings(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            bare = call(fn, wav(np.zeros(RATE)), colorbar="false")
            labelled = call(fn, wav(np.zeros(RATE)))
    assert len(np.unique(np.asarray(picture(bare)))) == 1
    assert picture(labelled).size == (1500, 750)


def test_long_file_keeps_a_short_burst(fn):
    """5 min at 8 kHz squeezed into 300 columns (~16 frames each): a 20 ms burst must
    survive as the brightest thing at its time, which picking frames would likely miss."""
    rate, seconds, at = 8000, 300.0, 201.3
    rng = np.random.default_rng(7)
    samples = 0.001 * rng.standard_normal(int(seconds * rate))
    start = int(at * rate)
    samples[start:start + 160] += tone(2000.0, 0.02, rate, 0.9)
    png = call(fn, wav(samples, rate), colorbar="false", colormap="gray", width="300",
               height="200")
    image = grey(png)
    row = round(expected_row(2000.0, 200, rate))
    band = image[row - 1:row + 2].max(axis=0)
    assert band.max() == image.max()
    assert abs(int(np.argmax(band)) - at / seconds * 300) <= 2
    assert np.median(band) < band.max() / 2


def test_same_input_gives_the_same_bytes(fn):
    data = wav(tone(1000.0) + 0.01 * np.random.default_rng(1).standard_normal(RATE))
    first = call(fn, data)
    assert call(fn, data) == first
    assert call(send_wav.create({}), data) == first
    assert call(fn, data, scale="log", colormap="viridis") == call(
        send_wav.create({}), data, scale="log", colormap="viridis")


def test_concurrent_calls_match_serial_ones(fn):
    """The host calls one Function from several worker threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(wav(tone(hz, 0.5)), {"colormap": cmap, "scale": scale})
            for hz in (500.0, 3000.0) for cmap in ("jet", "magma") for scale in ("linear", "log")]
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
    assert palette[:3] == [0, 0, 0]


# -- sample formats and channels -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_sample_formats_render_the_tone(fn, dtype):
    png = call(fn, wav(tone(5000.0), dtype=dtype), colorbar="false", colormap="gray")
    assert_tone_row(png, 5000.0)


def test_24_bit_renders_the_tone(fn):
    data = wav24(tone(1000.0))
    assert read_wav(data).raw.shape[1:] == (1, 3)
    assert_tone_row(call(fn, data, colorbar="false", colormap="gray"), 1000.0)


def test_24_bit_stereo_decodes_exactly():
    values = np.array([[0, 1], [-1, 2**23 - 1], [-(2**23), 12345]], dtype=np.int64)
    decoded = read_wav(wav24(values / (2**23 - 1)))
    assert np.allclose(decoded.mono(1), values[:, 1] / 2**23, atol=1e-6)
    assert np.allclose(decoded.mono(0), values[:, 0] / 2**23, atol=1e-6)


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
    with pytest.raises(InvalidInput, match="channel.*2 channels"):
        call(fn, data, channel="5")
    with pytest.raises(InvalidInput, match="channel"):
        call(fn, wav(tone(1000.0)), channel="1")
    with pytest.raises(InvalidInput, match="channel"):
        call(fn, data, channel="-1")


# -- refused input -------------------------------------------------------------------------


def _one_line(error: InvalidInput) -> str:
    message = error.message
    assert "\n" not in message and "Traceback" not in message and message
    return message


@pytest.mark.parametrize(
    "data, reason",
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


def test_data_cut_mid_frame_renders_what_is_there(fn):
    data = wav(np.stack([tone(1000.0)] * 2, axis=1), dtype=np.int16)
    cut = data[: len(data) // 2 + 3]  # not a whole 4-byte frame
    assert read_wav(cut).frames == (len(cut) - 44) // 4
    assert_tone_row(call(fn, cut, colorbar="false", colormap="gray"), 1000.0)


def test_a_single_sample_renders(fn):
    assert picture(call(fn, wav(np.array([0.5])))).size == (1500, 750)


@pytest.mark.parametrize(
    "params, name",
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
    assert set(fn.params) == {"binsize", "overlap", "scale", "colormap", "width", "height",
                              "colorbar", "channel"}


# -- the STFT and the WAV reader against scipy ---------------------------------------------


@pytest.mark.parametrize("binsize, hop", [(1024, 512), (1000, 1000), (256, 13), (33, 16)])
def test_stft_power_matches_scipy_short_time_fft(binsize, hop):
    samples = np.random.default_rng(3).standard_normal(5000).astype(np.float32)
    frames = -(-len(samples) // hop)
    ours = send_wav.column_power(samples, binsize, hop, columns=frames)
    stft = ShortTimeFFT(hann(binsize, sym=False), hop=hop, fs=RATE)
    reference = np.abs(stft.stft(samples.astype(np.float64), p0=0, p1=frames).T) ** 2
    assert ours.shape == reference.shape
    assert np.allclose(ours, reference, rtol=1e-3, atol=1e-3 * reference.max())


def test_window_is_scipys_periodic_hann():
    for size in (16, 33, 1024):
        assert np.allclose(send_wav.periodic_hann(size), hann(size, sym=False), atol=1e-7)


def test_column_pooling_is_a_max_even_across_blocks():
    """binsize 16384 makes blocks of 128 frames, so most column groups span two blocks."""
    samples = np.random.default_rng(4).standard_normal(300 * 8192).astype(np.float32)
    frames = 300
    pooled = send_wav.column_power(samples, 16384, 8192, columns=7)
    full = send_wav.column_power(samples, 16384, 8192, columns=frames)
    edges = (np.arange(8) * frames) // 7
    assert np.array_equal(pooled, np.maximum.reduceat(full, edges[:-1], axis=0))


_FORMATS = st.sampled_from([np.uint8, np.int16, np.int32, np.float32, np.float64])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=_FORMATS, channels=st.integers(1, 4), frames=st.integers(1, 300),
       seed=st.integers(0, 2**32 - 1), rate=st.integers(1, 192000))
def test_reader_agrees_with_scipy(dtype, channels, frames, seed, rate):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        raw = rng.uniform(-1, 1, (frames, channels)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        raw = rng.integers(info.min, info.max, (frames, channels), endpoint=True, dtype=dtype)
    out = io.BytesIO()
    wavfile.write(out, rate, raw)
    parsed = read_wav(out.getvalue())
    _, reference = wavfile.read(io.BytesIO(out.getvalue()))
    reference = reference.reshape(frames, channels).astype(np.float64)
    if dtype == np.uint8:
        reference = (reference - 128) / 128
    elif not np.issubdtype(dtype, np.floating):
        reference = reference / 2.0 ** (8 * np.dtype(dtype).itemsize - 1)
    assert parsed.rate == rate and parsed.channels == channels and parsed.frames == frames
    for channel in range(channels):
        assert np.allclose(parsed.mono(channel), reference[:, channel], atol=1e-6)
    assert np.allclose(parsed.mono(), reference.mean(axis=1), atol=1e-6)


_VALID = wav(np.stack([tone(440.0, 0.01), tone(880.0, 0.01)], axis=1))


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(0, len(_VALID)), edits=st.lists(
    st.tuples(st.integers(0, 79), st.integers(0, 255)), max_size=6))
def test_damaged_files_are_read_or_refused_never_crash(cut, edits):
    data = bytearray(_VALID[:cut])
    for position, value in edits:
        if position < len(data):
            data[position] = value
    try:
        parsed = read_wav(bytes(data))
    except InvalidInput as error:
        _one_line(error)
        return
    samples = parsed.mono()
    assert samples.dtype == np.float32 and len(samples) >= 1
    assert np.isfinite(samples).all() and np.abs(samples).max() <= 1.0
