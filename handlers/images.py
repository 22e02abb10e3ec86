"""Image bytes to RGB pixels for the detector: decoding, base64, EXIF, bomb guards.

Used by the ``ssd`` function (one image per call); ``ssd-video`` decodes frames with
OpenCV instead. Everything fails as ``InvalidInput`` with a one-line reason.

Choices, and why:

* Large JPEGs are decoded with libjpeg's DCT scaling (``Image.draft``) to no less
  than 300 pixels a side: 6x faster on a 20-megapixel photo (133 -> 20 ms). This
  shifts boxes by up to ~1.5% of the image and confidences by one quantization
  step, about as much as swapping INTER_LINEAR for INTER_AREA does; measured against
  an antialiased resize, draft + bilinear is the closer of the two, because a
  plain bilinear shrink of a huge image aliases. Pictures with a side under 600
  pixels (grace_hopper) decode exactly as without it. The full size is kept, so
  coordinates are unaffected; ``annotate`` needs all pixels, so callers decode
  without draft then.
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

import base64
import binascii
import io
import re
import struct
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from handlers.base import InvalidInput

DEFAULT_MAX_PIXELS = 50_000_000
MAX_SIDE = 32_768
# Pillow opens multi-picture camera JPEGs through the JPEG entry and calls them MPO.
FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF")
_FORMAT_NAMES = "JPEG, PNG, BMP, WebP, TIFF or GIF"
_DATA_URI = re.compile(rb"^data:[\w.+-]*/[\w.+-]*;base64,", re.IGNORECASE)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# What a malformed file can make Pillow raise while opening or decoding it.
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError,
    ZeroDivisionError,
)


@dataclass(frozen=True)
class DecodedImage:
    """Pixels plus the size to report boxes in.

    ``rgb`` is HxWx3 uint8. It is smaller than ``width`` x ``height`` when a JPEG
    was decoded in draft mode; ``width``/``height`` are always the full image's,
    after EXIF rotation.
    """

    rgb: np.ndarray
    width: int
    height: int


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, reduce_to: int | None = None
) -> DecodedImage:
    """Decode image bytes, or base64 text of them, to RGB; refuse anything else.

    ``reduce_to`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale as long as both
    sides stay at least that many pixels. Every failure is InvalidInput with a
    one-line reason.
    """
    image = _open(data)
    try:
        return _decode(image, max_pixels, reduce_to)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"image refused as a decompression bomb: {exc}") from None
    except _DECODE_ERRORS as exc:
        raise InvalidInput(f"cannot decode {image.format} image: {_one_line(exc)}") from None
    finally:
        image.close()


def _open(data: bytes) -> Image.Image:
    if not data:
        raise InvalidInput(f"empty input: expected {_FORMAT_NAMES} bytes, or base64 of them")
    image = _try_open(data)
    if image is not None:
        return image
    raw = _unbase64(data)
    if raw is not None:
        image = _try_open(raw)
        if image is not None:
            return image
        raise InvalidInput(f"input is base64 but not of an image: expected {_FORMAT_NAMES}")
    raise InvalidInput(f"input is not an image: expected {_FORMAT_NAMES} bytes, or base64 of them")


def _try_open(data: bytes) -> Image.Image | None:
    """Open (header only) if Pillow recognizes one of FORMATS, else None."""
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        return None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"image refused as a decompression bomb: {exc}") from None
    except _DECODE_ERRORS as exc:
        raise InvalidInput(f"cannot read image header: {_one_line(exc)}") from None


def _unbase64(data: bytes) -> bytes | None:
    """Strict base64 (newlines and a data: URI prefix allowed), else None."""
    text = _DATA_URI.sub(b"", b"".join(data.split()), count=1)
    if not text or len(text) % 4:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _check_dimensions(width: int, height: int, max_pixels: int) -> None:
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise InvalidInput(
            f"image dimensions {width}x{height} are out of range (each side 1..{MAX_SIDE})"
        )
    if width * height > max_pixels:
        raise InvalidInput(
            f"image is {width}x{height} ({width * height / 1e6:.1f} megapixels); "
            f"the limit is {max_pixels / 1e6:g} megapixels"
        )


def _decode(image: Image.Image, max_pixels: int, reduce_to: int | None) -> DecodedImage:
    width, height = image.size
    _check_dimensions(width, height, max_pixels)
    orientation = _orientation(image)
    if reduce_to and image.format in ("JPEG", "MPO"):
        image.draft("RGB", (reduce_to, reduce_to))
    image.load()  # first frame of GIF/WebP/TIFF; the rest are never decoded
    if orientation != 1:
        ImageOps.exif_transpose(image, in_place=True)
        if orientation in (5, 6, 7, 8):  # the four orientations that swap the axes
            width, height = height, width
    return DecodedImage(_to_rgb(image), width, height)


def _orientation(image: Image.Image) -> int:
    """EXIF orientation 1..8; a broken EXIF block just means upright."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any decoded mode to contiguous HxWx3 uint8 (see module docstring for why)."""
    if image.mode == "RGB":
        return np.ascontiguousarray(np.asarray(image))
    if image.mode in _SIXTEEN_BIT:
        grey = (np.clip(np.asarray(image), 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if image.mode == "F":
        grey = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return np.ascontiguousarray(np.asarray(flat))
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]

