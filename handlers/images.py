"""Image bytes to RGB pixels for the detector: input, base64, EXIF, and a memory budget.

Used by the ``ssd`` function (one image per call); ``ssd-video`` decodes frames with
OpenCV instead. Everything fails as ``InvalidInput`` with a one-line reason.

Memory: checked before it is held
---------------------------------
A tiny file can declare a huge picture (a 1.9 KB WebP of 16383x3000 decodes to 49
megapixels), so what a call may hold is decided from the header, before a pixel is
decoded:

* **Input.** ``read_input`` keeps one copy of the image's bytes, grown as chunks
  arrive (up to 1.125 x the input: BytesIO's headroom); base64 text is decoded as
  it streams, so the text is never held whole, and input that is neither an image
  nor base64 of one is refused at its first bytes. While the header is read,
  Pillow copies metadata chunks into ``info`` (EXIF, XMP: up to the file's size)
  and its WebP decoder takes a copy of the whole file, so a WebP carrying a large
  XMP chunk holds up to 3.125 x its size (measured), any other file about 2.1 x.
  The bytes are let go as soon as the pixels are decoded.
* **Pixels.** A JPEG can be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
  scaling); nothing else can be. The pixels a call decodes (after that scaling)
  must be at most ``max_pixels``; what cannot be brought under it is refused
  before decoding. The bytes held per decoded pixel, at the worst moment of each
  step (measured at 16 megapixels with /proc's VmHWM, Pillow 12):

  ==============================================  =====================================
  step                                            bytes per decoded pixel, at most
  ==============================================  =====================================
  the decoded picture                             4 (Pillow keeps RGB, RGBA, CMYK, I
                                                  and F in 4 bytes; L, P: 1; I;16: 2)
  a mode converted to RGB, source then freed      4 + 4 (transparency composited on
                                                  white; 16-bit and float greys go
                                                  through 8-bit grey a strip at a time)
  EXIF rotation of the whole picture (annotate)   4 + 4
  the model's copy when the picture is not        4 + 3 (otherwise it is reduced first,
  reduced                                         to 1/4 or less)
  annotate's PNG as it is written                 4 + 3.4 (3 for incompressible pixels,
                                                  BytesIO's headroom) + zlib's buffers
  WebP: libwebp's two RGBA canvases, the bytes    4 + 4 + 4 + 4
  Pillow copies out of one, then the picture
  ==============================================  =====================================

  So a call is charged ``BYTES_PER_PIXEL`` (8) a decoded pixel,
  ``BYTES_PER_PIXEL_DRAWN`` (10) for annotate, ``BYTES_PER_PIXEL_WEBP`` (16) for a
  WebP: at the default 16 megapixels, 128 MB, 160 MB and 256 MB (244 MiB). Not
  charged, because it does not grow with the number of calls decoding at once but
  with the number in flight: the input (up to 3.125 x its size, above), annotate's
  PNG once written (up to 3.4 bytes a pixel, 52 MiB at 16 megapixels), which stays
  until the caller has read it, and a few MiB (the 300x300 model input, zlib's
  state, the font).
* **Per process.** ``MemoryBudget`` bounds those charges over all calls at once: a
  call reserves its charge before decoding and waits, first come first served,
  while the others hold too much. A worker's pixel memory is then at most the
  budget however many calls it admits; only their input bytes grow with the number
  of calls.

Choices, and why
----------------
* Large pictures are reduced before the model sees them: a JPEG by DCT scaling as
  it is decoded, anything else by averaging whole blocks of pixels (``Image.reduce``)
  once decoded, by the same factor (the largest of 2, 4, 8 leaving both sides at
  least ``reduce_to``): 6x faster on a 20-megapixel JPEG (133 -> 20 ms). This shifts
  boxes by up to ~1.5% of the image and confidences by one quantization step, about
  as much as swapping INTER_LINEAR for INTER_AREA does; measured against an
  antialiased resize, reduce + bilinear is the closer of the two, because a plain
  bilinear shrink of a huge image aliases. Pictures with a side under 600 pixels
  (grace_hopper) decode exactly as without it. The full size is kept, so
  coordinates are unaffected.
* ``annotate`` needs the whole picture: it is decoded at full size when that fits
  ``max_pixels``; a bigger JPEG is decoded (and drawn, and answered) at the largest
  of 1/2, 1/4, 1/8 scale that fits; anything else bigger is refused.
* Transparent images are composited on white (what a viewer shows), not stripped
  of alpha: stripping exposes whatever colour hides under transparent pixels,
  often black, which the model then sees as a dark scene.
* 16-bit greyscale keeps its high byte (as Pillow does for 16-bit RGB PNGs);
  Pillow's own conversion clips everything above 255 to white.
* Decompression bombs are refused from the header's dimensions before a pixel is
  decoded; only JPEG, PNG, BMP, WebP, TIFF and GIF are opened (no EPS, which would
  run Ghostscript, and no other rarely used decoders).
"""

from __future__ import annotations

import binascii
import contextlib
import functools
import io
import re
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from handlers.errors import InvalidInput

T = TypeVar("T")

DEFAULT_MAX_PIXELS = 16_000_000
MIB = 1 << 20
# The most bytes a call holds at once per decoded pixel, by path (module docstring).
BYTES_PER_PIXEL = 8
BYTES_PER_PIXEL_DRAWN = 10  # annotate: the picture plus its PNG as it is written
BYTES_PER_PIXEL_WEBP = 16  # libwebp's two canvases, Pillow's copy of one, the picture
MAX_SIDE = 32_768
# Pillow opens multi-picture camera JPEGs through the JPEG entry and calls them MPO.
FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF")
_FORMAT_NAMES = "JPEG, PNG, BMP, WebP, TIFF or GIF"
_REDUCTIONS = (8, 4, 2)  # libjpeg's DCT scales, used for every format alike
_PREFIX = 16  # bytes Pillow looks at to recognize a format
_WHITESPACE = b" \t\n\r\x0b\x0c"  # what bytes.split() splits on
_DATA_URI = re.compile(rb"^data:[\w.+-]*/[\w.+-]*;base64,", re.IGNORECASE)
_DATA_URI_MAX = 256  # a data: prefix longer than this is not one we accept
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_STRIP_ROWS = 256  # rows converted at once from 16-bit and float greys
# What a malformed file can make Pillow raise while opening or decoding it.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
)


@dataclass(frozen=True)
class DecodedImage:
    """Pixels for the model, plus the size to report boxes in.

    ``rgb`` is HxWx3 uint8. It is smaller than ``width`` x ``height`` when the
    picture was reduced; ``width``/``height`` are always the full image's, after
    EXIF rotation. ``picture`` is the whole picture in RGB, upright, for drawing on
    (only when asked for; smaller than ``width`` x ``height`` when a JPEG had to be
    scaled down to fit the budget).
    """

    rgb: np.ndarray
    width: int
    height: int
    picture: Image.Image | None = None


class MemoryBudget:
    """The bytes of pixels all calls of one function may hold at once, in one process.

    A call reserves what its decode will cost (``hold``) before decoding and gives it
    back when done. One that does not fit waits until enough is given back; callers
    are served in arrival order, so a large picture is not starved by a stream of
    small ones. The wait is short: whoever holds pixels is decoding, inferring or
    encoding, never reading input.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a memory budget must be >= 1 byte, got {capacity}")
        self.capacity = capacity
        self._free = capacity
        self._line: deque[object] = deque()
        self._changed = threading.Condition()

    @property
    def waiting(self) -> int:
        """How many calls wait now (a call leaves the line once it holds its bytes)."""
        with self._changed:
            return len(self._line)

    @property
    def held(self) -> int:
        """Bytes reserved now."""
        with self._changed:
            return self.capacity - self._free

    @contextlib.contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        """Reserve ``cost`` bytes for the duration of the block, waiting for them if needed."""
        if cost > self.capacity:
            raise InvalidInput(
                f"image needs {cost / MIB:.0f} MiB to decode; this worker has "
                f"{self.capacity / MIB:.0f} MiB for all decoding"
            )
        ticket = object()
        with self._changed:
            self._line.append(ticket)
            try:
                while self._line[0] is not ticket or self._free < cost:
                    self._changed.wait()
            except BaseException:
                self._line.remove(ticket)
                self._changed.notify_all()
                raise
            self._line.popleft()
            self._free -= cost
            self._changed.notify_all()  # the next in line may fit as well
        try:
            yield
        finally:
            with self._changed:
                self._free += cost
                self._changed.notify_all()


# --------------------------------------------------------------------------- input


def read_input(chunks: Iterable[bytes]) -> bytes:
    """A call's input as image bytes: raw, or decoded from base64 as it streams in.

    Refused (InvalidInput) at the first bytes that show it is neither: an empty
    input, text that is not base64, base64 whose first bytes are not an image.
    Base64 may be wrapped in lines and carry a ``data:...;base64,`` prefix.
    """
    stream = iter(chunks)
    head = b""
    for chunk in stream:
        head = head + chunk if head else chunk
        if len(head) >= _PREFIX:
            break
    if not head:
        raise InvalidInput(f"empty input: expected {_FORMAT_NAMES} bytes, or base64 of them")
    if _is_image(head[:_PREFIX]):
        return _gather(head, stream)
    decoder = _Base64Stream()
    out = io.BytesIO()
    start = b""  # the first decoded bytes, to check they are an image's
    try:
        for text in _chain(head, stream):
            piece = decoder.feed(text)
            out.write(piece)
            if len(start) < _PREFIX:
                start += piece[: _PREFIX - len(start)]
                if len(start) == _PREFIX:
                    _check_base64_image(start)
        out.write(decoder.finish())
    except (ValueError, binascii.Error):
        raise InvalidInput(
            f"input is not an image: expected {_FORMAT_NAMES} bytes, or base64 of them"
        ) from None
    if len(start) < _PREFIX:
        _check_base64_image(start)
    return out.getvalue()


def _gather(head: bytes, rest: Iterator[bytes]) -> bytes:
    """``head`` and the chunks after it as one bytes object, copied once at most."""
    following = next(rest, None)
    if following is None:
        return head  # one chunk (or a few small ones): nothing to join
    out = io.BytesIO()
    out.write(head)
    out.write(following)
    del head, following
    for chunk in rest:
        out.write(chunk)
    return out.getvalue()  # shares BytesIO's buffer: no copy


def _chain(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield head
    yield from rest


def _check_base64_image(prefix: bytes) -> None:
    if not _is_image(prefix):
        raise InvalidInput(f"input is base64 but not of an image: expected {_FORMAT_NAMES}")


def _is_image(prefix: bytes) -> bool:
    """True when one of FORMATS recognizes ``prefix`` as its signature (as Image.open does)."""
    Image.init()
    for name in FORMATS:
        accept = Image.OPEN[name][1]
        verdict = accept(prefix) if accept is not None else True
        if verdict and not isinstance(verdict, str):
            return True
    return False


class _Base64Stream:
    """Strict base64, decoded piece by piece: whitespace anywhere, padding only at the end.

    Accepts exactly what ``base64.b64decode(validate=True)`` accepts of the text with
    its whitespace removed and an optional data: URI prefix cut off. Raises
    ValueError (or binascii.Error) at the first byte that breaks that.
    """

    def __init__(self) -> None:
        self._pending = b""  # whitespace-free text not yet decoded (under 4 bytes, or a prefix)
        self._prefix_done = False
        self._padded = False
        self._seen = False

    def feed(self, text: bytes) -> bytes:
        text = self._pending + text.translate(None, _WHITESPACE)
        if not self._prefix_done:
            if not _could_be_data_uri(text):
                self._prefix_done = True
            else:
                match = _DATA_URI.match(text)
                if match is None:
                    if len(text) > _DATA_URI_MAX:
                        raise ValueError("a data: prefix that is not base64")
                    self._pending = text
                    return b""
                text = text[match.end() :]
                self._prefix_done = True
        whole = len(text) - len(text) % 4
        self._pending = text[whole:]
        return self._decode(text[:whole])

    def finish(self) -> bytes:
        if self._pending or not self._seen:
            raise ValueError("base64 ends mid-group, or is empty")
        return b""

    def _decode(self, piece: bytes) -> bytes:
        if not piece:
            return b""
        if self._padded:
            raise ValueError("base64 goes on after its padding")
        self._seen = True
        padding = piece.find(b"=")
        if padding >= 0:
            if padding < len(piece) - 2 or piece[padding:].strip(b"=") or self._pending:
                raise ValueError("base64 padding before the end")
            self._padded = True
        return binascii.a2b_base64(piece, strict_mode=True)


def _could_be_data_uri(text: bytes) -> bool:
    """True while ``text`` starts like ``data:`` (case-insensitive), or is a start of it."""
    start = text[:5].lower()
    return b"data:".startswith(start) if len(start) < 5 else start == b"data:"


# --------------------------------------------------------------------------- decoding


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, reduce_to: int | None = None
) -> DecodedImage:
    """Decode image bytes, or base64 text of them, to RGB; refuse anything else.

    ``reduce_to`` lets a large picture be reduced by 2, 4 or 8 as long as both sides
    stay at least that many pixels (a JPEG as it is decoded). Every failure is
    InvalidInput with a one-line reason.
    """
    with decoding(read_input([data]), max_pixels=max_pixels, reduce_to=reduce_to) as image:
        return image


@contextlib.contextmanager
def decoding(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    reduce_to: int | None = None,
    picture: bool = False,
    budget: MemoryBudget | None = None,
) -> Iterator[DecodedImage]:
    """Decode ``data`` (image bytes, see ``read_input``) within the budget, for one block.

    The pixel count is checked against ``max_pixels`` from the header, and what the
    decode will cost in bytes is reserved from ``budget`` before decoding and held
    until the block ends (drawing and encoding happen inside it). ``picture`` also
    keeps the whole picture in RGB for drawing on. The caller should not keep its
    own reference to ``data``: the bytes are let go once decoded.
    """
    image: Image.Image | None
    image = _open(data)
    del data  # Pillow holds what it still needs; ours would outlive the decode
    try:
        plan = _checked(functools.partial(_plan, image, max_pixels, reduce_to, picture), image)
        with budget.hold(plan.cost) if budget is not None else contextlib.nullcontext():
            decoded = _checked(functools.partial(_decode, image, plan, reduce_to, picture), image)
            image.close()
            image = None  # frees the input, and a WebP decoder's copy of it, before the work
            yield decoded
    finally:
        if image is not None:
            image.close()


def _checked(step: Callable[[], T], image: Image.Image) -> T:
    """Run a step of decoding; Pillow's errors become InvalidInput with a one-line reason."""
    try:
        return step()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"image refused as a decompression bomb: {exc}") from None
    except _DECODE_ERRORS as exc:
        raise InvalidInput(f"cannot decode {image.format} image: {_one_line(exc)}") from None


def _open(data: bytes) -> Image.Image:
    """Open (header only) as one of FORMATS, or refuse."""
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise InvalidInput(
            f"input is not an image: expected {_FORMAT_NAMES} bytes, or base64 of them"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"image refused as a decompression bomb: {exc}") from None
    except _DECODE_ERRORS as exc:
        raise InvalidInput(f"cannot read image header: {_one_line(exc)}") from None


@dataclass(frozen=True)
class _Plan:
    """What a decode will cost, decided from the header before a pixel is decoded."""

    size: tuple[int, int]  # the whole image's, as stored (before EXIF rotation)
    cost: int  # bytes held at most: decoded pixels (after any JPEG scaling) x their path's rate
    orientation: int  # EXIF, 1..8


def _plan(image: Image.Image, max_pixels: int, reduce_to: int | None, picture: bool) -> _Plan:
    """Check the header's size, pick a JPEG's scale (``draft``), and count what will be decoded.

    For the model alone a JPEG is scaled as far as ``reduce_to`` allows; for drawing,
    only as far as needed to fit ``max_pixels``. Refuses what still does not fit.
    """
    width, height = image.size
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise InvalidInput(
            f"image dimensions {width}x{height} are out of range (each side 1..{MAX_SIDE})"
        )
    orientation = _orientation(image)
    scale = 1
    if image.format in ("JPEG", "MPO"):
        wanted = reduction(width, height, reduce_to) if reduce_to and not picture else 1
        scale = _jpeg_scale(width, height, max_pixels, wanted)
        if scale > 1:
            image.draft("RGB", (width // scale, height // scale))
    decoded_w, decoded_h = image.size  # after draft: what will really be decoded
    if decoded_w * decoded_h > max_pixels:
        scaled = f", {decoded_w}x{decoded_h} even at 1/{scale} scale" if scale > 1 else ""
        raise InvalidInput(
            f"image is {width}x{height} ({width * height / 1e6:.1f} megapixels{scaled}); "
            f"the limit is {max_pixels / 1e6:g} megapixels"
        )
    return _Plan(
        (width, height), decoded_w * decoded_h * cost_per_pixel(image.format, picture), orientation
    )


def cost_per_pixel(image_format: str | None, picture: bool) -> int:
    """The most bytes a call holds at once per decoded pixel of this format and path."""
    rate = BYTES_PER_PIXEL_DRAWN if picture else BYTES_PER_PIXEL
    return max(rate, BYTES_PER_PIXEL_WEBP) if image_format == "WEBP" else rate


def _jpeg_scale(width: int, height: int, max_pixels: int, wanted: int) -> int:
    """The smallest DCT scale >= ``wanted`` that fits ``max_pixels`` (else 8, to be refused)."""
    for scale in (1, 2, 4, 8):
        if scale >= wanted and -(-width // scale) * -(-height // scale) <= max_pixels:
            return scale if scale <= min(width, height) else 1
    return 8 if min(width, height) >= 8 else 1


def reduction(width: int, height: int, reduce_to: int) -> int:
    """The largest of 8, 4, 2 that leaves both sides >= ``reduce_to``, else 1.

    The rule Pillow's ``draft`` follows for libjpeg's DCT scaling; used for every
    format, so that a PNG and a JPEG of the same photo are reduced alike.
    """
    fits = min(width // reduce_to, height // reduce_to)
    return next((factor for factor in _REDUCTIONS if fits >= factor), 1)


def _decode(image: Image.Image, plan: _Plan, reduce_to: int | None, picture: bool) -> DecodedImage:
    """Decode, convert to RGB, reduce for the model and turn upright, freeing as it goes.

    For the model alone, the reduced picture is turned (cheaper); for drawing, the
    whole one is turned first and the model's copy reduced from it.
    """
    image.load()  # first frame of GIF/WebP/TIFF; the rest are never decoded
    whole = _rgb_image(image)  # ``image`` holds no pixels after this
    factor = reduction(whole.width, whole.height, reduce_to) if reduce_to else 1
    if picture:
        if plan.orientation != 1:
            whole = _upright(whole, plan.orientation)
        small = whole.reduce(factor) if factor > 1 else whole
        rgb = np.ascontiguousarray(np.asarray(small))
    else:
        small = _reduce(whole, factor) if factor > 1 else whole
        if plan.orientation != 1:
            small = _upright(small, plan.orientation)
        rgb = np.ascontiguousarray(np.asarray(small))
        small.close()
    width, height = plan.size
    if plan.orientation in (5, 6, 7, 8):  # the four orientations that swap the axes
        width, height = height, width
    return DecodedImage(rgb, width, height, whole if picture else None)


def _reduce(image: Image.Image, factor: int) -> Image.Image:
    """Average ``factor`` x ``factor`` blocks; the source is closed (its pixels freed)."""
    reduced = image.reduce(factor)
    image.close()
    return reduced


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    """Apply an EXIF orientation (1..8); the source is freed once turned."""
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }[orientation]
    turned = image.transpose(method)
    image.close()
    return turned


def _orientation(image: Image.Image) -> int:
    """EXIF orientation 1..8; a broken EXIF block just means upright."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _rgb_image(image: Image.Image) -> Image.Image:
    """Any decoded mode as an RGB Pillow image; the source's pixels are freed once converted.

    See the module docstring for the why of each rule; the peak is the source plus
    one RGB copy.
    """
    if image.mode == "RGB":
        # A new Image on the same pixels, so that closing the source lets go of its
        # file and decoder without copying a pixel.
        pixels = image._new(image.im)
        image.close()
        return pixels
    if image.mode in _SIXTEEN_BIT or image.mode == "F":
        grey = _eight_bit_grey(image)
        image.close()
        rgb = grey.convert("RGB")
        grey.close()
        return rgb
    if image.has_transparency_data:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        if rgba is not image:
            image.close()
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba)  # an RGBA mask is its alpha, with no copy of the band
        rgba.close()
        return flat
    rgb = image.convert("RGB")
    image.close()
    return rgb


def _eight_bit_grey(image: Image.Image) -> Image.Image:
    """16-bit (high byte) or float (clipped to 0..255) grey as 8-bit, a strip at a time."""
    width, height = image.size
    grey = np.empty((height, width), np.uint8)
    for top in range(0, height, _STRIP_ROWS):
        strip = np.asarray(image.crop((0, top, width, min(height, top + _STRIP_ROWS))))
        if image.mode == "F":
            grey[top : top + strip.shape[0]] = np.clip(strip, 0, 255).astype(np.uint8)
        else:
            grey[top : top + strip.shape[0]] = (
                np.clip(strip, 0, 65535).astype(np.uint16) >> 8
            ).astype(np.uint8)
    return Image.fromarray(grey)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
