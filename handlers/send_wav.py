"""send-wav (alias stft): a WAV file in, its spectrogram as a PNG out.

The picture is the original service's ("plotstft": tests/support/original_send_wav.py),
number for number: a symmetric Hann window (``np.hanning``), 1024-sample frames at
50% overlap, frame p centred on sample p * hop, ``20 * log10(|X| / 1e-5)`` dB of the
samples in the units ``scipy.io.wavfile.read`` gives (16-bit PCM as integers up to
32767, float as stored: see handlers/wav.py), jet from the data's lowest dB to its
highest as matplotlib scales it, and bins with no energy at all (-inf dB: digital
silence) left white, as matplotlib leaves them. The tests compare the two pictures
and read the colorbar's numbers back. The method (handlers/spectrogram.py, imported
when the function is created, so that reading its params imports nothing heavy)
is not the original's: it reads the WAV as it streams and pools each block of
frames onto the picture's grid at once.

Memory is bounded by the picture, not by the input (measured and checked by
tests/security/test_send_wav_budget.py). For a picture of P = width x height
pixels, one call holds at most ``worst_case_bytes`` = 10 * P bytes + 24 MiB:

- the pooled grid, float32: 4 * P, or 8 * P for a WAV whose header does not say
  its length (0xFFFFFFFF), whose frames are pooled in groups that double as they
  fill twice the picture's width; when it is coloured, a byte a pixel beside it:
  9 * P, the peak;
- then never more than 5 * P for the levels, the labelled canvas, the palette
  indices, the PNG's scanlines and its deflated pieces (about 0.7 * P for noise,
  far less for speech or music);
- a bounded window: one block of samples (``BLOCK_FRAMES`` float64, 2 MiB), one
  block of frames with their spectrum and power (``FRAME_VALUES`` of each, about
  8 MiB) and the input chunks the host holds (two or three of 1 MiB).

The pixel budget (``MAX_PIXELS``, a registry option ``max_pixels``) is 4096 x 4096 =
16,777,216 pixels: 184 MiB at worst for one call (measured: 166 MiB, at 8192 x 2048,
binsize 4096, overlap 0.95 and 7 MB of WAV with no length in its header, the
grid's worst), and 35 MiB for the 1500 x 750 default. Width and height are checked
against it before any input is read, and 100 MB of WAV costs what 1 MB does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from handlers import memory
from handlers.base import Function, Param, Params, Reply, Request, declare
from handlers.errors import InvalidInput, TooLarge

BINSIZE = Param(
    "binsize", "integer", "STFT frame length in samples", default=1024, low=16, high=32768
)
OVERLAP = Param(
    "overlap",
    "number",
    "fraction of a frame shared with the next",
    default=0.5,
    low=0.0,
    high=0.95,
)
SCALE = Param("scale", "string", "frequency axis", default="linear", choices=("linear", "log"))
COLORMAP = Param("colormap", "string", "any matplotlib colormap name", default="jet")
WIDTH = Param(
    "width",
    "integer",
    "picture width in pixels",
    default=1500,
    low=16,
    high=8192,
    note="width x height at most 16777216 (4096 x 4096, 8192 x 2048) unless the registry "
    "says otherwise",
)
HEIGHT = Param(
    "height",
    "integer",
    "picture height in pixels",
    default=750,
    low=16,
    high=8192,
    note="width x height as for width",
)
COLORBAR = Param(
    "colorbar",
    "boolean",
    "true for a dB colorbar and labelled axes, false for the bare spectrogram filling the picture",
    default=True,
)
CHANNEL = Param(
    "channel",
    "integer",
    "0-based channel to show",
    low=0,
    shown_default="the mean of all channels",
)
PARAMS = declare(BINSIZE, OVERLAP, SCALE, COLORMAP, WIDTH, HEIGHT, COLORBAR, CHANNEL)

# width x height at most: see the module docstring for what a pixel costs.
MAX_PIXELS = 4096 * 4096
BYTES_PER_PIXEL = 10  # at worst, in one call
WINDOW_BYTES = 24 << 20  # at worst, in one call, whatever the picture and the input
# After a call this large (picture or input), freed memory is handed back to the system.
TRIM_AFTER_PIXELS = 4 << 20
TRIM_AFTER_INPUT_BYTES = 32 << 20


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
    def from_params(cls, params: Params, max_pixels: int = MAX_PIXELS) -> Settings:
        unknown = sorted(set(params) - set(PARAMS))
        if unknown:
            raise InvalidInput(f"unknown param {unknown[0]}: expected one of {', '.join(PARAMS)}")
        binsize = BINSIZE.integer(params)
        overlap = OVERLAP.number(params)
        width = WIDTH.integer(params)
        height = HEIGHT.integer(params)
        if width * height > max_pixels:
            raise TooLarge(
                f"params width x height: {width} x {height} = {width * height} pixels "
                f"is over the budget of {max_pixels} pixels a picture"
            )
        return cls(
            binsize=binsize,
            # the original's int(frame - floor(overlap * frame)), for any overlap
            hop=max(1, binsize - math.floor(overlap * binsize)),
            scale=SCALE.text(params),
            colormap=COLORMAP.text(params),
            width=width,
            height=height,
            colorbar=COLORBAR.flag(params),
            channel=CHANNEL.integer(params) if CHANNEL.name in params else None,
        )


def create(options: Mapping[str, Any]) -> Function:
    """Build the function. Option ``max_pixels`` sets the picture budget (default MAX_PIXELS).

    Palettes are cached per colormap name in this closure: building one imports
    matplotlib and samples the colormap, which is worth doing once per worker.
    The default is built here so the first call does not pay for it. The threads
    that deflate pieces of the PNG are the function's, shared by its calls.
    """
    from handlers import spectrogram as engine  # deferred: numpy, scipy, PIL, matplotlib

    max_pixels = int(options.get("max_pixels", MAX_PIXELS))
    if max_pixels < 16 * 16:
        raise ValueError(f"send-wav option max_pixels: {max_pixels} is below 256 (16 x 16)")
    deflaters = (
        ThreadPoolExecutor(engine.PNG_THREADS, thread_name_prefix="send-wav-deflate")
        if engine.PNG_THREADS
        else None
    )
    palettes: dict[str, bytes] = {}
    lettering = engine.Lettering()

    def palette(name: str) -> bytes:
        cached = palettes.get(name)
        if cached is None:
            cached = palettes[name] = engine.build_palette(name)
        return cached

    palette("jet")

    def handle(request: Request) -> Reply:
        settings = Settings.from_params(request.params, max_pixels)
        colours = palette(settings.colormap)
        png, input_bytes = engine.render(request.chunks, settings, colours, lettering, deflaters)
        parts = engine.coalesced(png)
        large = (
            settings.width * settings.height >= TRIM_AFTER_PIXELS
            or input_bytes >= TRIM_AFTER_INPUT_BYTES
        )
        if large:
            return Reply(content_type="image/png", parts=engine.then(parts, memory.trim_heap))
        return Reply(content_type="image/png", parts=parts)

    def close() -> None:
        if deflaters is not None:
            deflaters.shutdown(wait=True)

    return Function(handle=handle, params=PARAMS, close=close)


def worst_case_bytes(width: int, height: int) -> int:
    """The most memory one call for a width x height picture holds, any input, any params."""
    return BYTES_PER_PIXEL * width * height + WINDOW_BYTES
