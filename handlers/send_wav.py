"""send-wav (alias stft): a WAV file in, its spectrogram as a PNG out.

The picture keeps the original service's meaning (Hann-window STFT, 1024-sample
frames at 50% overlap, 20*log10(|X| / 1e-5) dB, jet, time left to right, 0 Hz at
the bottom, a dB colorbar, 1500 x 750) but not its method: the original drew the
full STFT with matplotlib and let Agg resample it, which costs seconds on long
files and drops short events when thousands of frames share a pixel column. Here
the STFT is reduced straight to the output grid by max-pooling (a click survives
however long the file), coloured through a palette, and written as a palette PNG.

Frames are cut and transformed in blocks with one batched float32 rfft instead of
``scipy.signal.ShortTimeFFT.stft``, which loops over frames in Python and returns
complex128 (8x slower on 5 minutes of audio); the framing is the same (frame p
centred on sample p * hop, zero padded at the ends), and the tests check the
magnitudes against ShortTimeFFT.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageDraw, ImageFont

from handlers.base import Function, InvalidInput, Params, Reply, Request
from handlers.wav import read_wav

PARAMS: Mapping[str, str] = {
    "binsize": "STFT frame length in samples, 16..32768 (default 1024)",
    "overlap": "fraction of a frame shared with the next, 0..0.95 (default 0.5)",
    "scale": "frequency axis: linear or log (default linear)",
    "colormap": "any matplotlib colormap name (default jet)",
    "width": "picture width in pixels, 16..8192 (default 1500)",
    "height": "picture height in pixels, 16..8192 (default 750)",
    "colorbar": "true for a dB colorbar and labelled axes, false for the bare "
                "spectrogram filling the picture (default true)",
    "channel": "0-based channel to show (default: the mean of all channels)",
}

# Palette layout: the colormap's levels, then a ramp of greys for the axes, ticks
# and antialiased text drawn around the plot. One byte per pixel keeps the PNG
# small and quick to compress; 248 levels are indistinguishable from 256.
LEVELS = 248
GREYS = 256 - LEVELS
DB_REF = 1e-5  # dB = 20 * log10(|X| / DB_REF), the original's reference
# Power floor: silence becomes -100 dB instead of log10(0) = -inf.
POWER_FLOOR = 1e-20
# Colours span the data's max down to its min like matplotlib's auto-scaling, but
# at most this many dB: a single frame of digital silence would otherwise squeeze
# the whole recording into the top of the colormap.
DYNAMIC_RANGE_DB = 120.0
BLOCK_SAMPLES = 1 << 21  # frames are transformed ~2M samples at a time
PART_BYTES = 256 * 1024
# Encoding dominates the cost. Measured on the default 1500 x 750 picture of 10 s:
# palette PNG at level 1 11 ms / 441 KiB, level 6 (default) 35 ms / 443 KiB,
# optimize 41 ms; the same as RGB at level 1 62 ms / 1051 KiB, default 184 ms.
PNG_COMPRESS_LEVEL = 1
MIN_PLOT = 32  # below this the labelled layout leaves no room: draw the bare plot


@dataclass(frozen=True)
class Settings:
    binsize: int
    hop: int
    scale: str
    colormap: str
    width: int
    height: int
    colorbar: bool
    channel: int | None

    @classmethod
    def from_params(cls, params: Params) -> Settings:
        unknown = sorted(set(params) - set(PARAMS))
        if unknown:
            raise InvalidInput(f"unknown param {unknown[0]}: expected one of {', '.join(PARAMS)}")
        binsize = params.get_int("binsize", 1024, low=16, high=32768)
        overlap = params.get_float("overlap", 0.5, low=0.0, high=0.95)
        return cls(
            binsize=binsize,
            hop=max(1, round(binsize * (1.0 - overlap))),
            scale=params.get_str("scale", "linear", ("linear", "log")),
            colormap=params.get_str("colormap", "jet"),
            width=params.get_int("width", 1500, low=16, high=8192),
            height=params.get_int("height", 750, low=16, high=8192),
            colorbar=params.get_bool("colorbar", True),
            channel=params.get_int("channel", 0, low=0) if "channel" in params else None,
        )


def create(options: Mapping[str, Any]) -> Function:
    """Build the function; options are unused (everything is a per-call param).

    Palettes are cached per colormap name in this closure: building one imports
    matplotlib and samples the colormap, which is worth doing once per worker.
    The default is built here so the first call does not pay for it.
    """
    palettes: dict[str, bytes] = {}

    def palette(name: str) -> bytes:
        cached = palettes.get(name)
        if cached is None:
            cached = palettes[name] = build_palette(name)
        return cached

    palette("jet")

    def handle(request: Request) -> Reply:
        settings = Settings.from_params(request.params)
        colours = palette(settings.colormap)
        png = render(request.read(), settings, colours)
        parts = [png[i:i + PART_BYTES] for i in range(0, len(png), PART_BYTES)]
        return Reply(content_type="image/png", parts=parts)

    return Function(handle=handle, params=PARAMS)


def build_palette(name: str) -> bytes:
    """768 bytes of RGB: LEVELS colormap entries, then GREYS greys from black to white."""
    import matplotlib  # deferred: only colormaps are needed, and only once per name

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise InvalidInput(f"param colormap: unknown matplotlib colormap {name!r}") from None
    rgba = cmap(np.linspace(0.0, 1.0, LEVELS))
    colours = np.rint(rgba[:, :3] * 255.0).astype(np.uint8)
    greys = np.repeat(np.rint(np.linspace(0.0, 255.0, GREYS)).astype(np.uint8)[:, None], 3, 1)
    return np.concatenate([colours, greys]).tobytes()


def render(data: bytes, settings: Settings, palette: bytes) -> bytes:
    """WAV bytes to PNG bytes; the same input and settings always give the same bytes."""
    wav = read_wav(data)
    if settings.channel is not None and settings.channel >= wav.channels:
        raise InvalidInput(
            f"param channel: {settings.channel} is out of range, the file has "
            f"{wav.channels} channel{'s' if wav.channels != 1 else ''} (0-based)"
        )
    samples = wav.mono(settings.channel)
    axes = Axes.plan(settings, wav.rate, len(samples))
    layout = Layout.plan(settings, axes) if settings.colorbar else None
    plot_w, plot_h = (layout.plot_size if layout else (settings.width, settings.height))
    power = column_power(samples, settings.binsize, settings.hop, plot_w)
    power = rows_power(power, axes.row_bins(plot_h))  # (plot_h, columns), row 0 = 0 Hz
    power = expand_columns(power, plot_w)
    decibels = 10.0 * np.log10(np.maximum(power, np.float32(POWER_FLOOR))) + np.float32(
        -20.0 * math.log10(DB_REF)
    )
    low, high = colour_range(decibels)
    levels = to_levels(decibels[::-1], low, high)  # flip: row 0 of the picture is Nyquist
    if layout is None:
        indices = levels
    else:
        indices = layout.draw(levels, axes, low, high)
    image = Image.fromarray(indices)
    image.putpalette(palette, "RGB")
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


# -- the STFT, reduced to the output grid -------------------------------------------------


def column_power(samples: np.ndarray, binsize: int, hop: int, columns: int) -> np.ndarray:
    """|STFT|^2 as (groups, bins): one group per output column when there are more
    frames than columns (the max over its frames, so peaks survive), else one per frame.

    Frame p is centred on sample p * hop for p in [0, ceil(n / hop)), zero padded
    at both ends, as ShortTimeFFT frames it; work is done BLOCK_SAMPLES at a time
    so a long file never holds its whole STFT.
    """
    n = len(samples)
    frames = -(-n // hop)
    half = binsize // 2
    padded = np.zeros((frames - 1) * hop + binsize, dtype=np.float32)
    copied = min(n, len(padded) - half)
    padded[half:half + copied] = samples[:copied]
    framed = sliding_window_view(padded, binsize)[::hop]
    window = periodic_hann(binsize)
    edges = frame_edges(frames, columns)
    grid = np.zeros((len(edges) - 1, binsize // 2 + 1), dtype=np.float32)
    block = max(1, BLOCK_SAMPLES // binsize)
    for start in range(0, frames, block):
        stop = min(frames, start + block)
        spectrum = scipy.fft.rfft(framed[start:stop] * window, axis=1)
        power = np.square(spectrum.real)
        power += np.square(spectrum.imag)
        first = int(np.searchsorted(edges, start, side="right")) - 1
        last = int(np.searchsorted(edges, stop - 1, side="right")) - 1
        if last - first + 1 == stop - start:
            reduced = power  # one frame per group: nothing to pool
        else:
            local = np.concatenate(([start], edges[first + 1:last + 1])) - start
            reduced = np.maximum.reduceat(power, local, axis=0)
        # A group cut by the block boundary gets its max from both blocks.
        np.maximum(grid[first:last + 1], reduced, out=grid[first:last + 1])
    return grid


def periodic_hann(size: int) -> np.ndarray:
    """scipy's hann(size, sym=False), written out: importing scipy.signal costs ~0.4 s."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(size) / size)).astype(np.float32)


def frame_edges(frames: int, columns: int) -> np.ndarray:
    """Group boundaries in frames: W near-equal runs if there are W or more frames,
    else one frame per group (expanded to columns later by expand_columns)."""
    if frames >= columns:
        return (np.arange(columns + 1, dtype=np.int64) * frames) // columns
    return np.arange(frames + 1, dtype=np.int64)


def expand_columns(power: np.ndarray, columns: int) -> np.ndarray:
    """Nearest-neighbour widening when there were fewer frames than columns."""
    groups = power.shape[1]
    if groups == columns:
        return power
    index = ((np.arange(columns) + 0.5) * (groups / columns)).astype(np.int64)
    return power[:, index]


def rows_power(grid: np.ndarray, bins: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(groups, bins) to (rows, groups): each row is the max over its [start, stop) bins."""
    starts, stops = bins
    if np.all(stops - starts == 1):
        return np.ascontiguousarray(grid[:, starts].T)  # one bin per row: a gather
    padded = np.pad(grid, ((0, 0), (0, 1)))  # reduceat needs stop == bins to be an index
    pairs = np.empty(2 * len(starts), dtype=np.int64)
    pairs[0::2] = starts
    pairs[1::2] = stops
    return np.ascontiguousarray(np.maximum.reduceat(padded, pairs, axis=1)[:, 0::2].T)


# -- axes: which bins and frames land where ------------------------------------------------


@dataclass(frozen=True)
class Axes:
    """The mapping between pixels and seconds / hertz, shared by the plot and its labels.

    Bin k is drawn as the band [k, k + 1) in "bin units" (centred on k + 0.5), as
    imshow draws one bin per cell, so 0 Hz sits half a bin above the bottom edge
    and Nyquist half a bin below the top.
    """

    rate: int
    binsize: int
    hop: int
    frames: int
    log: bool

    @classmethod
    def plan(cls, settings: Settings, rate: int, samples: int) -> Axes:
        return cls(rate=rate, binsize=settings.binsize, hop=settings.hop,
                   frames=-(-samples // settings.hop), log=settings.scale == "log")

    @property
    def bins(self) -> int:
        return self.binsize // 2 + 1

    @property
    def bin_hz(self) -> float:
        return self.rate / self.binsize

    @property
    def nyquist(self) -> float:
        return self.rate / 2.0

    @property
    def log_floor_hz(self) -> float:
        """Bottom of a log axis: 20 Hz (or the first bin if coarser), never near Nyquist."""
        return min(max(20.0, self.bin_hz), self.nyquist / 4.0)

    @property
    def seconds(self) -> float:
        return self.frames * self.hop / self.rate

    def row_bins(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Per row, bottom up, the [start, stop) of the bins whose centres fall in it;
        a row narrower than a bin gets the bin nearest its centre."""
        edges_f = np.arange(rows + 1, dtype=np.float64) / rows
        if self.log:
            low = self.log_floor_hz
            hz = low * (self.nyquist / low) ** edges_f
            edges = hz / self.bin_hz + 0.5
            centre = np.sqrt(hz[:-1] * hz[1:]) / self.bin_hz + 0.5
        else:
            edges = edges_f * self.bins
            centre = (edges[:-1] + edges[1:]) / 2.0
        starts = np.clip(np.ceil(edges[:-1] - 0.5), 0, self.bins).astype(np.int64)
        stops = np.clip(np.ceil(edges[1:] - 0.5), 0, self.bins).astype(np.int64)
        empty = stops <= starts
        nearest = np.clip(np.floor(centre), 0, self.bins - 1).astype(np.int64)
        starts[empty] = nearest[empty]
        stops[empty] = nearest[empty] + 1
        return starts, stops

    def hz_to_fraction(self, hz: float) -> float:
        """Height of a frequency above the plot's bottom edge, as a fraction of the plot."""
        if self.log:
            low = self.log_floor_hz
            return math.log(hz / low) / math.log(self.nyquist / low)
        return (hz / self.bin_hz + 0.5) / self.bins

    def seconds_to_fraction(self, seconds: float) -> float:
        return (seconds * self.rate / self.hop + 0.5) / self.frames

    def hz_ticks(self, count: int) -> list[float]:
        if not self.log:
            return nice_ticks(0.0, self.nyquist, count)
        low, ticks = self.log_floor_hz, []
        for decade in range(math.floor(math.log10(low)), math.ceil(math.log10(self.nyquist)) + 1):
            for mantissa in (1, 2, 5):
                hz = mantissa * 10.0 ** decade
                if low <= hz <= self.nyquist:
                    ticks.append(hz)
        return ticks


# -- colour --------------------------------------------------------------------------------


def colour_range(decibels: np.ndarray) -> tuple[float, float]:
    """The data's min..max (matplotlib's auto-scaling), at most DYNAMIC_RANGE_DB deep.

    Flat data (silence) gets a full-depth range starting at its value, so it shows
    as the colormap's lowest colour rather than dividing by zero.
    """
    high = float(decibels.max())
    low = max(float(decibels.min()), high - DYNAMIC_RANGE_DB)
    if high - low < 1e-3:
        high = low + DYNAMIC_RANGE_DB
    return low, high


def to_levels(decibels: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (decibels - np.float32(low)) * np.float32(LEVELS / (high - low))
    return np.clip(scaled, 0, LEVELS - 1).astype(np.uint8)


def nice_ticks(low: float, high: float, count: int) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart) within [low, high], about count."""
    span = high - low
    if span <= 0 or count < 1:
        return [low]
    raw = span / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
    return [k * step for k in range(first, last + 1)]


def tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    text = f"{value:.{decimals}f}"
    return "0" if text.strip("-0.") == "" else text


# -- the labelled layout ------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where the plot, the colorbar and their labels go in a colorbar=true picture.

    Everything outside the plot and the colorbar is drawn once into a greyscale
    canvas with PIL's default font, then mapped onto the palette's grey ramp, so
    the text stays antialiased in a one-byte-per-pixel image.
    """

    width: int
    height: int
    font_size: int
    left: int
    top: int
    right: int  # x of the plot's right edge
    bottom: int  # y of the plot's bottom edge
    bar_left: int
    bar_right: int

    @property
    def plot_size(self) -> tuple[int, int]:
        return self.right - self.left, self.bottom - self.top

    @classmethod
    def plan(cls, settings: Settings, axes: Axes) -> Layout | None:
        """None when the picture is too small for labels (the bare plot is drawn)."""
        width, height = settings.width, settings.height
        size = int(min(max(9, round(min(height / 50, width / 80))), 32))
        font = ImageFont.load_default(size=size)
        tick, gap = max(3, size // 3), max(2, size // 3)
        line = size + gap
        hz_labels = [_hz_label(hz) for hz in axes.hz_ticks(_count(height, size))]
        label_width = max(font.getlength(text) for text in hz_labels + ["00000"])
        left = int(gap + line + label_width + gap + tick)
        top = size
        bottom = height - (tick + gap + line + line + gap)
        bar_width = max(8, width // 60)
        db_width = font.getlength("-000")
        bar_right = int(width - (gap + line + gap + db_width + gap + tick))
        bar_left = bar_right - bar_width
        right = bar_left - 2 * size
        if right - left < MIN_PLOT or bottom - top < MIN_PLOT:
            return None
        return cls(width, height, size, left, top, right, bottom, bar_left, bar_right)

    def draw(self, levels: np.ndarray, axes: Axes, low: float, high: float) -> np.ndarray:
        """The whole picture as palette indices, with the plot's levels in place."""
        canvas = Image.new("L", (self.width, self.height), 255)
        draw = ImageDraw.Draw(canvas)
        font = ImageFont.load_default(size=self.font_size)
        tick, gap = max(3, self.font_size // 3), max(2, self.font_size // 3)
        plot_w, plot_h = self.plot_size
        for box in ((self.left, self.right), (self.bar_left, self.bar_right)):
            draw.rectangle((box[0] - 1, self.top - 1, box[1], self.bottom), outline=0)

        count_x = max(2, plot_w // (8 * self.font_size))
        seconds = nice_ticks(0.0, axes.seconds, count_x)
        step = seconds[1] - seconds[0] if len(seconds) > 1 else 1.0
        for value in seconds:
            x = self.left + round(axes.seconds_to_fraction(value) * plot_w)
            if self.left <= x <= self.right:
                draw.line((x, self.bottom, x, self.bottom + tick), fill=0)
                draw.text((x, self.bottom + tick + gap), tick_label(value, step), fill=0,
                          font=font, anchor="mt")
        draw.text(((self.left + self.right) // 2, self.height - gap), "time (s)", fill=0,
                  font=font, anchor="md")

        for hz in axes.hz_ticks(_count(self.height, self.font_size)):
            y = self.bottom - round(axes.hz_to_fraction(hz) * plot_h)
            if self.top <= y <= self.bottom:
                draw.line((self.left - 1 - tick, y, self.left - 1, y), fill=0)
                draw.text((self.left - 1 - tick - gap, y), _hz_label(hz), fill=0, font=font,
                          anchor="rm")
        _vertical_text(canvas, "frequency (Hz)", font, gap, (self.top + self.bottom) // 2)

        decibels = nice_ticks(low, high, _count(self.height, self.font_size))
        step = decibels[1] - decibels[0] if len(decibels) > 1 else 1.0
        for value in decibels:
            y = self.bottom - round((value - low) / (high - low) * plot_h)
            if self.top <= y <= self.bottom:
                draw.line((self.bar_right, y, self.bar_right + tick, y), fill=0)
                draw.text((self.bar_right + tick + gap, y), tick_label(value, step), fill=0,
                          font=font, anchor="lm")
        _vertical_text(canvas, "dB", font, self.width - gap - self.font_size,
                       (self.top + self.bottom) // 2)

        grey = np.asarray(canvas)
        indices = _GREY_INDEX[grey]
        indices[self.top:self.bottom, self.left:self.right] = levels
        ramp = ((np.arange(plot_h)[::-1] + 0.5) * (LEVELS / plot_h)).astype(np.uint8)
        indices[self.top:self.bottom, self.bar_left:self.bar_right] = ramp[:, None]
        return indices


def _count(length: int, font_size: int) -> int:
    return max(2, length // (4 * font_size))


def _hz_label(hz: float) -> str:
    return f"{hz:.0f}" if hz >= 1 or hz == 0 else f"{hz:.2g}"


def _vertical_text(canvas: Image.Image, text: str, font: Any, x: int, centre_y: int) -> None:
    """Text turned a quarter counter-clockwise, its top at x, centred on centre_y."""
    box = font.getbbox(text)
    strip = Image.new("L", (box[2] + 2, box[3] + 2), 255)
    ImageDraw.Draw(strip).text((1, 1), text, fill=0, font=font)
    turned = strip.transpose(Image.Transpose.ROTATE_90)
    canvas.paste(turned, (x, centre_y - turned.height // 2))


# Greys 0..255 of the label canvas to the palette's grey ramp (read-only table).
_GREY_INDEX = (LEVELS + np.rint(np.arange(256) * ((GREYS - 1) / 255.0))).astype(np.uint8)
_GREY_INDEX.setflags(write=False)
