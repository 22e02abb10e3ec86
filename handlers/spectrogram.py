"""send-wav's method: a WAV, read as it streams, to a spectrogram PNG in bounded memory.

Its method is not the original's. The original held the whole file, its whole
complex STFT and a matplotlib figure, and let Agg resample the image: seconds on
long files, memory in proportion to the input, and short events dropped when
thousands of frames share a pixel column. Here the WAV is read as it streams in
(handlers/wav.py), transformed in blocks of frames, and each block's power is
max-pooled at once onto the picture's grid (a click survives however long the
file), coloured through a palette and written as a palette PNG.

The numbers are the original's (handlers/send_wav.py says which); the memory each
step holds is counted there too (``worst_case_bytes``).
"""

from __future__ import annotations

import math
import os
import struct
import types
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageDraw, ImageFont

from handlers import steps
from handlers.errors import InvalidInput
from handlers.wav import open_wav

deflate_library: types.ModuleType
try:  # ISA-L's deflate, when installed: level 1 in a tenth of zlib's time, as small
    from isal import isal_zlib as deflate_library
except ImportError:  # pragma: no cover - depends on what is installed
    deflate_library = zlib


if TYPE_CHECKING:
    from handlers.send_wav import Settings

# Palette layout: white first (cells with no energy, -inf dB, and the margins), the
# colormap's levels, then a ramp of greys for the axes, ticks and antialiased text
# drawn around the plot. One byte per pixel keeps the PNG small and quick to
# compress; 248 levels are indistinguishable from 256. White sorting below every
# level lets pooling take the max of indices as it takes the max of decibels.
SILENT = 0
FIRST_LEVEL = 1
LEVELS = 248
GREYS = 256 - FIRST_LEVEL - LEVELS  # black up to the grey just short of white
DB_REF = 1e-5  # dB = 20 * log10(|X| / DB_REF), the original's reference ("10e-6")
# Powers within this range keep their meaning in float32 (no zero, no infinity): their
# decibels are taken in float32, to within a millionth of a dB.
FLOAT32_POWER = (1e-30, 1e30)
# Frames are transformed this many values (frames x binsize) at a time: one block's
# frames, spectrum and power stay within a few MiB whatever the binsize.
FRAME_VALUES = 1 << 18
# Deflating the PNG is the largest single cost. Measured on the default 1500 x 750
# picture of 10 s of noisy audio (1.1 MB of scanlines): zlib level 1 14 ms / 452 KiB,
# Z_RLE 14 ms / 638 KiB, zlib-ng level 1 10 ms / 644 KiB, ISA-L level 1 2 ms /
# 480 KiB; cv2 (adaptive filters) 22 ms / 202 KiB; as RGB, three times the bytes. So
# level 1, ISA-L's if installed, in PNG_PIECES pieces deflated at once on
# PNG_THREADS threads.
PNG_COMPRESS_LEVEL = 1
PNG_PIECES = 4  # fixed, so the bytes do not depend on the machine's cores
PNG_PIECE_MIN = 1 << 18  # smaller pictures are deflated whole
PNG_THREADS = max(0, min(PNG_PIECES, os.cpu_count() or 1) - 1)  # beside the caller's own
PART_BYTES = 1 << 20  # the host's chunk size: answers go out in parts up to about this
MIN_PLOT = 32  # below this the labelled layout leaves no room: draw the bare plot


def coalesced(chunks: list[bytes]) -> list[bytes]:
    """The PNG's chunks joined into parts of PART_BYTES or more where they are smaller:
    each part is a message on the way out, and a default picture is one, not six.
    A chunk that big already is passed on as it is, uncopied."""
    parts: list[bytes] = []
    pending: list[bytes] = []
    size = 0
    for chunk in chunks:
        if not pending and len(chunk) >= PART_BYTES:
            parts.append(chunk)
            continue
        pending.append(chunk)
        size += len(chunk)
        if size >= PART_BYTES:
            parts.append(b"".join(pending))
            pending, size = [], 0
    if pending:
        parts.append(b"".join(pending))
    return parts


def then(parts: list[bytes], after: Callable[[], Any]) -> Iterator[bytes]:
    """The parts, each let go of as it is taken, then ``after`` (also if the caller left)."""
    try:
        while parts:
            yield parts.pop(0)
    finally:
        after()


def build_palette(name: str) -> bytes:
    """768 bytes of RGB: white, LEVELS colormap entries, then GREYS greys from black up.

    Level k stands for the k-th of LEVELS equal slices of the colour range; it gets
    the colour matplotlib gives the middle of that slice (its colormaps are 256-entry
    tables), so the picture's colours are matplotlib's to within one of its entries.
    """
    import matplotlib  # deferred: only colormaps are needed, and only once per name

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise InvalidInput(f"param colormap: unknown matplotlib colormap {name!r}") from None
    rgba = cmap((np.arange(LEVELS) + 0.5) / LEVELS)
    colours = np.rint(rgba[:, :3] * 255.0).astype(np.uint8)
    greys = np.repeat(
        np.rint(np.arange(GREYS) * (255.0 / (GREYS + 1))).astype(np.uint8)[:, None], 3, 1
    )
    white = np.full((1, 3), 255, dtype=np.uint8)
    return np.concatenate([white, colours, greys]).tobytes()


def render(
    chunks: Iterable[bytes],
    settings: Settings,
    palette: bytes,
    lettering: Lettering,
    deflaters: Executor | None = None,
) -> tuple[list[bytes], int]:
    """The input's chunks, read as they come, to the PNG's chunks (join them for the
    file) and the bytes of samples read; the same input and settings always give the
    same bytes."""
    reader = open_wav(chunks)
    wav = reader.format
    if settings.channel is not None and settings.channel >= wav.channels:
        raise InvalidInput(
            f"param channel: {settings.channel} is out of range, the file has "
            f"{wav.channels} channel{'s' if wav.channels != 1 else ''} (0-based)"
        )
    axes = Axes(
        rate=wav.rate,
        binsize=settings.binsize,
        hop=settings.hop,
        frames=1,
        log=settings.scale == "log",
    )
    layout = Layout.plan(settings, axes, lettering) if settings.colorbar else None
    plot_w, plot_h = layout.plot_size if layout else (settings.width, settings.height)
    expected = (
        None if wav.frames is None else stft_frames(wav.frames, settings.binsize, settings.hop)
    )
    bands = Bands.of_rows(*axes.row_bins(plot_h))
    spectrogram = Spectrogram(settings.binsize, settings.hop, bands, plot_w, expected)
    # Reading the WAV and transforming it take turns, block by block (handlers/steps.py).
    with steps.tally("read") as read, steps.tally("stft") as stft:
        for samples in read.each(reader.samples(settings.channel)):
            with stft.timing():
                spectrogram.add(samples)
        with stft.timing():
            pooled = spectrogram.finish()
    del spectrogram  # the pooled grid is all that is left of it
    with steps.step("draw"):
        axes = replace(axes, frames=pooled.frames)
        low, high = colour_range(pooled.low_power, pooled.high_power)
        cells = colour_cells(pooled.release(), low, high, pooled.columns)
        levels = to_levels(cells, pooled.row_band, pooled.columns)
        del cells
        if layout is not None:
            levels = layout.draw(levels, axes, low, high, lettering)
    with steps.step("png"):
        png = encode_png(levels, palette, deflaters)
    return png, reader.frames_read * wav.frame_bytes


def stft_frames(samples: int, binsize: int, hop: int) -> int:
    """Frames of the STFT of ``samples``, counted as the original counted them:
    ceil((half a frame of zeros + samples - binsize) / hop) + 1, and at least one.
    At 50% overlap that is one frame centred on every hop-th sample."""
    return max(1, -(-(samples + binsize // 2 - binsize) // hop) + 1)


def decibels(power: np.ndarray | float) -> np.ndarray | float:
    """20 * log10(|X| / DB_REF) of a power |X|^2; 0 gives -inf."""
    return 10.0 * np.log10(power) - 20.0 * math.log10(DB_REF)


# -- the STFT, streamed and reduced to the output grid ------------------------------------


@dataclass
class Pooled:
    """The spectrogram on the plot's grid, and the range of the unpooled STFT."""

    groups: np.ndarray  # (groups, bands) float32 dB; -inf where there was no energy
    row_band: np.ndarray  # the band drawn on each row, row 0 = 0 Hz
    columns: int
    frames: int
    low_power: float  # the smallest non-zero |X|^2 of any frame and bin (inf if none)
    high_power: float  # the largest (0 if none)

    def release(self) -> np.ndarray:
        """The grid, handed over: this object lets go of it, so it is freed once used."""
        groups, self.groups = self.groups, np.empty((0, 0), dtype=np.float32)
        return groups


@dataclass(frozen=True)
class Bands:
    """The distinct bin ranges the rows show: rows that show the same bins (a bin
    taller than a row) share one band, so the grid is never taller than the STFT."""

    starts: np.ndarray  # per band, its [start, stop) bins
    stops: np.ndarray
    row_band: np.ndarray  # per row, bottom up, its band

    @classmethod
    def of_rows(cls, starts: np.ndarray, stops: np.ndarray) -> Bands:
        keys = starts * (int(stops.max()) + 1) + stops
        _, first, row_band = np.unique(keys, return_index=True, return_inverse=True)
        return cls(starts[first], stops[first], row_band.astype(np.int64))

    def __len__(self) -> int:
        return len(self.starts)

    def power(self, power: np.ndarray) -> np.ndarray:
        """(frames, bins) to (frames, bands): each band the max over its bins."""
        if np.all(self.stops - self.starts == 1):
            if len(self.starts) == power.shape[1]:  # every bin its own band, in order
                return power
            return power[:, self.starts]  # one bin a band: a gather
        padded = np.pad(power, ((0, 0), (0, 1)))  # reduceat needs stop == bins to be an index
        pairs = np.empty(2 * len(self.starts), dtype=np.int64)
        pairs[0::2] = self.starts
        pairs[1::2] = self.stops
        return np.maximum.reduceat(padded, pairs, axis=1)[:, 0::2]


class ColumnPool:
    """Max-pools consecutive frames into groups, one group per output column at most.

    When the number of frames is known (the WAV header says it), the groups are the
    columns' exact runs of frames. When it is not (a header written before the
    length was known), groups start one frame wide and double, merging pairs,
    whenever twice the columns are full; at the end whole groups are pooled into
    columns, which is exact up to 2 x columns frames and, beyond, places a column's
    edges within one group (under one column) of where they belong.
    """

    def __init__(self, columns: int, rows: int, frames: int | None) -> None:
        self.columns = columns
        if frames is None:
            self._edges: np.ndarray | None = None
            capacity = 2 * columns
        else:
            self._edges = frame_edges(frames, columns)
            capacity = len(self._edges) - 1
        self._width = 1  # frames per group, when the count is unknown
        self._grid = np.full((capacity, rows), -np.inf, dtype=np.float32)
        self._used = 0

    def groups_of(self, first: int, count: int) -> np.ndarray:
        """The group of each of frames [first, first + count), making room if need be."""
        frames = np.arange(first, first + count, dtype=np.int64)
        if self._edges is not None:
            ids = np.searchsorted(self._edges, frames, side="right") - 1
            return np.minimum(ids, len(self._grid) - 1)  # a file longer than it said
        while (first + count - 1) // self._width >= len(self._grid):
            self._merge()
        return frames // self._width

    def _merge(self) -> None:
        """Pairs of groups into one, in place, a few rows at a time (no copy of the grid)."""
        half = len(self._grid) // 2
        step = max(1, (1 << 20) // max(1, self._grid.shape[1]))
        for start in range(0, half, step):
            stop = min(half, start + step)
            # rows [start, stop) are written from rows [2 * start, 2 * stop): only the
            # first slice overlaps its source, and np.maximum has read it by then
            self._grid[start:stop] = np.maximum(
                self._grid[2 * start : 2 * stop : 2], self._grid[2 * start + 1 : 2 * stop : 2]
            )
        self._grid[half:] = -np.inf
        self._width *= 2
        self._used = -(-self._used // 2)

    def add(self, groups: np.ndarray, decibels: np.ndarray) -> None:
        """Pool rows of ``decibels`` (one per group in ``groups``, ascending) into the grid."""
        first, last = int(groups[0]), int(groups[-1])
        target = self._grid[first : last + 1]
        np.maximum(target, decibels, out=target)
        self._used = max(self._used, last + 1)

    def finish(self) -> np.ndarray:
        """The groups that hold frames, (groups, rows)."""
        return self._grid[: self._used]


class Spectrogram:
    """The STFT of samples fed in blocks, max-pooled onto the plot's grid as it goes.

    Frame p covers samples [p * hop - binsize // 2, + binsize), zero padded at both
    ends, for p in [0, stft_frames(samples)): the original's framing. Only the samples
    that frames still to come need are kept.
    """

    def __init__(
        self, binsize: int, hop: int, bands: Bands, columns: int, frames: int | None
    ) -> None:
        self._binsize = binsize
        self._hop = hop
        self._window = np.hanning(binsize)
        self._bands = bands
        self._pool = ColumnPool(columns, len(bands), frames)
        self._block = max(1, FRAME_VALUES // binsize)
        self._signal = np.zeros(binsize // 2)  # the padded signal, from padded sample _origin
        self._origin = 0
        self._next = 0  # the next frame to transform
        self._samples = 0
        self._low_power = math.inf
        self._high_power = 0.0

    def add(self, samples: np.ndarray) -> None:
        self._samples += len(samples)
        self._signal = np.concatenate(
            (self._signal[self._next * self._hop - self._origin :], samples)
        )
        self._origin = self._next * self._hop
        end = self._origin + len(self._signal)
        self._transform((end - self._binsize) // self._hop + 1)  # frames wholly received

    def finish(self) -> Pooled:
        frames = stft_frames(self._samples, self._binsize, self._hop)
        end = (frames - 1) * self._hop + self._binsize  # the zeros at the end
        missing = end - (self._origin + len(self._signal))
        if missing > 0:
            self._signal = np.concatenate((self._signal, np.zeros(missing)))
        self._transform(frames)
        return Pooled(
            self._pool.finish(),
            self._bands.row_band,
            self._pool.columns,
            frames,
            self._low_power,
            self._high_power,
        )

    def _transform(self, stop: int) -> None:
        while self._next < stop:
            count = min(self._block, stop - self._next)
            start = self._next * self._hop - self._origin
            span = self._signal[start : start + (count - 1) * self._hop + self._binsize]
            framed = sliding_window_view(span, self._binsize)[:: self._hop]
            spectrum = scipy.fft.rfft(framed * self._window, axis=1)
            power = np.square(spectrum.real)
            power += np.square(spectrum.imag)
            del spectrum
            low, high = self._track_range(power)
            groups = self._pool.groups_of(self._next, count)
            changes = np.flatnonzero(np.diff(groups)) + 1
            if len(changes) + 1 < count:  # several frames share a group: keep each one's max
                power = np.maximum.reduceat(power, np.concatenate(([0], changes)), axis=0)
                groups = groups[np.concatenate(([0], changes))]
            power = self._bands.power(power)
            if FLOAT32_POWER[0] <= low and high <= FLOAT32_POWER[1]:
                power = power.astype(np.float32)  # its log is four times quicker, as exact
            with np.errstate(divide="ignore"):
                self._pool.add(groups, np.asarray(decibels(power), dtype=np.float32))
            self._next += count

    def _track_range(self, power: np.ndarray) -> tuple[float, float]:
        """The colour range is the unpooled STFT's, as the original's figure saw it.
        Returns this block's smallest non-zero power and its largest."""
        high = float(power.max())
        low = float(power.min())
        if low == 0.0:  # digital silence: -inf dB is drawn white, not counted
            low = float(np.min(power, initial=math.inf, where=power > 0.0))
        self._high_power = max(self._high_power, high)
        self._low_power = min(self._low_power, low)
        return low, high


def frame_edges(frames: int, columns: int) -> np.ndarray:
    """Group boundaries in frames: W near-equal runs if there are W or more frames,
    else one frame per group (repeated to fill the columns at the end)."""
    if frames >= columns:
        return (np.arange(columns + 1, dtype=np.int64) * frames) // columns
    return np.arange(frames + 1, dtype=np.int64)


# -- axes: which bins and frames land where ------------------------------------------------


@dataclass(frozen=True)
class Axes:
    """The mapping between pixels and seconds / hertz, shared by the plot and its labels.

    Bin k is drawn as the band [k, k + 1) in "bin units" (centred on k + 0.5), as
    imshow draws one bin per cell, so 0 Hz sits half a bin above the bottom edge
    and Nyquist half a bin below the top; frame p likewise spans [p, p + 1) of the
    time axis. (The original's limits, xlim(0, frames - 1) and ylim(0, bins), cut half
    of the first and last frames and of bin 0 and left half a bin blank at the top:
    under a pixel apart at the default size.)
    """

    rate: int
    binsize: int
    hop: int
    frames: int  # of the STFT; the time axis spans them (known once the input has been read)
    log: bool

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
                hz = mantissa * 10.0**decade
                if low <= hz <= self.nyquist:
                    ticks.append(hz)
        return ticks


# -- colour --------------------------------------------------------------------------------


def colour_range(low_power: float, high_power: float) -> tuple[float, float]:
    """The dB the colormap spans, as the original's figure chose it: imshow scales to the
    data's min and max, leaving out -inf (no energy), and the colorbar widens a range
    of no width (silence; one value) as matplotlib's ``transforms.nonsingular`` does with
    its expander of 0.1 (written out: that function is deprecated in Matplotlib 3.11)."""
    if high_power > 0.0:
        low, high = float(decibels(low_power)), float(decibels(high_power))
    else:
        low = high = 0.0  # nothing but silence: matplotlib's fully masked image
    if high - low <= max(abs(low), abs(high)) * 1e-15:
        if low == 0.0 and high == 0.0:
            return -0.1, 0.1
        return low - 0.1 * abs(low), high + 0.1 * abs(high)
    return low, high


def colour_cells(grid: np.ndarray, low: float, high: float, columns: int) -> np.ndarray:
    """Palette indices of the grid's cells, its groups pooled to ``columns`` if there are
    more: (min(groups, columns), bands).

    dB d gets level floor((d - low) / (high - low) * LEVELS), clipped, as matplotlib
    indexes its colormaps, and -inf gets SILENT; pooling takes the max of indices,
    which the palette's order makes the max of decibels. Done a million cells at a
    time, whole columns at a time, so beside the grid only the result is held.
    """
    groups, bands = grid.shape
    if groups <= columns:
        cells = np.empty(grid.shape, dtype=np.uint8)
        step = max(1, (1 << 20) // max(1, bands))
        for start in range(0, groups, step):
            cells[start : start + step] = _levels(grid[start : start + step], low, high)
        return cells
    edges = (np.arange(columns + 1, dtype=np.int64) * groups) // columns
    pooled = np.empty((columns, bands), dtype=np.uint8)
    step = max(1, (1 << 20) // max(1, bands * -(-groups // columns)))  # columns at a time
    for first in range(0, columns, step):
        last = min(columns, first + step)
        levels = _levels(grid[edges[first] : edges[last]], low, high)
        pooled[first:last] = np.maximum.reduceat(levels, edges[first:last] - edges[first], axis=0)
    return pooled


def _levels(decibels: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (decibels - np.float32(low)) * np.float32(LEVELS / (high - low))
    np.clip(scaled, 0, LEVELS - 1, out=scaled)
    scaled += FIRST_LEVEL
    levels = scaled.astype(np.uint8)  # truncation: the floor of values >= 0
    levels[np.isneginf(decibels)] = SILENT
    return levels


def to_levels(cells: np.ndarray, row_band: np.ndarray, columns: int) -> np.ndarray:
    """The plot as palette indices, (rows, columns) with row 0 at the top (Nyquist): the
    cells repeated (nearest) to the plot's columns if there are fewer, and the bands
    repeated to its rows."""
    groups = len(cells)
    if groups < columns:
        cells = cells[((np.arange(columns) + 0.5) * (groups / columns)).astype(np.int64)]
    by_band = np.ascontiguousarray(cells.T)
    del cells
    return by_band[row_band[::-1]]


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
    def plan(cls, settings: Settings, axes: Axes, lettering: Lettering) -> Layout | None:
        """None when the picture is too small for labels (the bare plot is drawn)."""
        width, height = settings.width, settings.height
        size = int(min(max(9, round(min(height / 50, width / 80))), 32))
        font = lettering.font(size)
        tick, gap = max(3, size // 3), max(2, size // 3)
        line = size + gap
        hz_labels = [_hz_label(hz) for hz in axes.hz_ticks(_count(height, size))]
        label_width = max(font.getlength(text) for text in [*hz_labels, "00000"])
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

    def draw(
        self, levels: np.ndarray, axes: Axes, low: float, high: float, lettering: Lettering
    ) -> np.ndarray:
        """The whole picture as palette indices, with the plot's levels in place."""
        canvas = Image.new("L", (self.width, self.height), 255)
        draw = ImageDraw.Draw(canvas)
        size = self.font_size
        tick, gap = max(3, size // 3), max(2, size // 3)
        plot_w, plot_h = self.plot_size
        for box in ((self.left, self.right), (self.bar_left, self.bar_right)):
            draw.rectangle((box[0] - 1, self.top - 1, box[1], self.bottom), outline=0)

        count_x = max(2, plot_w // (8 * size))
        seconds = nice_ticks(0.0, axes.seconds, count_x)
        step = seconds[1] - seconds[0] if len(seconds) > 1 else 1.0
        for value in seconds:
            x = self.left + round(axes.seconds_to_fraction(value) * plot_w)
            if self.left <= x <= self.right:
                draw.line((x, self.bottom, x, self.bottom + tick), fill=0)
                lettering.write(
                    canvas, (x, self.bottom + tick + gap), tick_label(value, step), size, "mt"
                )
        lettering.write(
            canvas, ((self.left + self.right) // 2, self.height - gap), "time (s)", size, "md"
        )

        for hz in axes.hz_ticks(_count(self.height, size)):
            y = self.bottom - round(axes.hz_to_fraction(hz) * plot_h)
            if self.top <= y <= self.bottom:
                draw.line((self.left - 1 - tick, y, self.left - 1, y), fill=0)
                lettering.write(canvas, (self.left - 1 - tick - gap, y), _hz_label(hz), size, "rm")
        lettering.write(
            canvas, (gap, (self.top + self.bottom) // 2), "frequency (Hz)", size, turned=True
        )

        decibels = nice_ticks(low, high, _count(self.height, size))
        step = decibels[1] - decibels[0] if len(decibels) > 1 else 1.0
        for value in decibels:
            y = self.bottom - round((value - low) / (high - low) * plot_h)
            if self.top <= y <= self.bottom:
                draw.line((self.bar_right, y, self.bar_right + tick, y), fill=0)
                lettering.write(
                    canvas, (self.bar_right + tick + gap, y), tick_label(value, step), size, "lm"
                )
        lettering.write(
            canvas,
            (self.width - gap - size, (self.top + self.bottom) // 2),
            "dB",
            size,
            turned=True,
        )

        mapped = canvas.point(_GREY_INDEX)
        del canvas
        indices = np.array(mapped)
        del mapped
        indices[self.top : self.bottom, self.left : self.right] = levels
        ramp = FIRST_LEVEL + (np.arange(plot_h)[::-1] + 0.5) * (LEVELS / plot_h)
        indices[self.top : self.bottom, self.bar_left : self.bar_right] = ramp.astype(np.uint8)[
            :, None
        ]
        return indices


def _count(length: int, font_size: int) -> int:
    return max(2, length // (4 * font_size))


def _hz_label(hz: float) -> str:
    return f"{hz:.0f}" if hz >= 1 or hz == 0 else f"{hz:.2g}"


class Lettering:
    """Fonts, and labels rendered once and kept: drawing text was most of the labelled
    layout's cost, and the same labels come back call after call. One per function
    (calls on several threads share it: a race only renders a label twice)."""

    LIMIT = 2048  # labels kept; past it the cache starts again

    def __init__(self) -> None:
        self._fonts: dict[int, Any] = {}
        self._masks: dict[tuple[int, str, str, bool], tuple[Image.Image, int, int]] = {}

    def font(self, size: int) -> Any:
        font = self._fonts.get(size)
        if font is None:
            font = self._fonts[size] = ImageFont.load_default(size=size)
        return font

    def write(
        self,
        canvas: Image.Image,
        xy: tuple[int, int],
        text: str,
        size: int,
        anchor: str = "la",
        turned: bool = False,
    ) -> None:
        """Black text at xy (by anchor), or turned a quarter counter-clockwise with its
        top at x, centred on y."""
        key = (size, text, anchor, turned)
        found = self._masks.get(key)
        if found is None:
            found = self._render(*key)
            if len(self._masks) >= self.LIMIT:
                self._masks.clear()
            self._masks[key] = found
        mask, dx, dy = found
        canvas.paste(0, (xy[0] + dx, xy[1] + dy), mask)

    def _render(
        self, size: int, text: str, anchor: str, turned: bool
    ) -> tuple[Image.Image, int, int]:
        """The text's coverage as a mask, and where its corner goes from the anchor."""
        font = self.font(size)
        if turned:
            box = font.getbbox(text)
            strip = Image.new("L", (box[2] + 2, box[3] + 2), 0)
            ImageDraw.Draw(strip).text((1, 1), text, fill=255, font=font)
            mask = strip.transpose(Image.Transpose.ROTATE_90)
            return mask, 0, -(mask.height // 2)
        left, top, right, bottom = font.getbbox(text, anchor=anchor)
        mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
        ImageDraw.Draw(mask).text((-left, -top), text, fill=255, font=font, anchor=anchor)
        return mask, left, top


# Greys 0..255 of the label canvas to the palette's nearest grey, white being SILENT
# (a lookup table for Image.point).
_GREY_INDEX = tuple(
    SILENT if step == GREYS + 1 else FIRST_LEVEL + LEVELS + step
    for step in (round(grey * (GREYS + 1) / 255.0) for grey in range(256))
)


# -- PNG ------------------------------------------------------------------------------------


def encode_png(indices: np.ndarray, palette: bytes, deflaters: Executor | None) -> list[bytes]:
    """An 8-bit palette PNG of ``indices`` (rows, columns), as its chunks, its pixels
    deflated in pieces at once.

    Written here rather than by Pillow, whose encoder deflates on one thread: a PNG's
    pixels are one zlib stream, which may be split over several IDAT chunks and may be
    made of pieces deflated apart, each but the last ended by a sync flush (pigz
    builds its streams so), at a cost of a few bytes a piece. Each piece becomes its
    own IDAT chunk, so the file is never joined here. Every scanline has filter type
    0 (none), as libpng chooses for palette images.
    """
    height, width = indices.shape
    scanlines = np.empty((height, width + 1), dtype=np.uint8)
    scanlines[:, 0] = 0
    scanlines[:, 1:] = indices
    flat = memoryview(scanlines.data).cast("B")
    pieces = PNG_PIECES if scanlines.nbytes >= PNG_PIECE_MIN else 1
    bounds = [(height * k) // pieces * (width + 1) for k in range(pieces + 1)]
    checksum = struct.pack(">I", zlib.adler32(flat))
    jobs = [
        (
            flat[bounds[k] : bounds[k + 1]],
            b"\x78\x01" if k == 0 else b"",
            checksum if k == pieces - 1 else None,
        )
        for k in range(pieces)
    ]
    if deflaters is None or pieces == 1:
        idats = [_idat(*job) for job in jobs]
    else:
        later = [deflaters.submit(_idat, *job) for job in jobs[1:]]
        idats = [_idat(*jobs[0])] + [future.result() for future in later]
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)  # 8-bit, palette
    return [
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"PLTE", palette),
        *idats,
        _png_chunk(b"IEND", b""),
    ]


def _idat(data: memoryview, prefix: bytes, checksum: bytes | None) -> bytes:
    """An IDAT chunk of one piece of the zlib stream: raw deflate, ended by a sync flush
    unless it is the last (then the stream's checksum follows). zlib lets go of the
    GIL while it works, and so does ISA-L."""
    deflater = deflate_library.compressobj(PNG_COMPRESS_LEVEL, deflate_library.DEFLATED, -15)
    body = deflater.compress(data)
    body += deflater.flush(
        deflate_library.Z_SYNC_FLUSH if checksum is None else deflate_library.Z_FINISH
    )
    return _png_chunk(b"IDAT", prefix + body + (checksum or b""))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    checksum = zlib.crc32(body, zlib.crc32(kind))
    return b"".join([struct.pack(">I", len(body)), kind, body, struct.pack(">I", checksum)])
