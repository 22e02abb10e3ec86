"""Real media for the tests, made on the spot: a photograph, audio, video, damaged headers.

The photograph is matplotlib's sample grace_hopper.jpg (a person filling most of
the frame); audio is written by scipy's WAV writer; video by OpenCV's VideoWriter
from that photograph, panned and zoomed, so every frame holds a person. Headers
that lie about their size are packed by hand, from the formats' specifications.
"""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
from scipy.io import wavfile

GRACE = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
RATE = 44100


@cache
def photo() -> bytes:
    """The JPEG bytes of grace_hopper.jpg (512 x 600)."""
    return GRACE.read_bytes()


def photo_as(fmt: str, size: tuple[int, int] | None = None, **save: object) -> bytes:
    """The photograph re-encoded by Pillow (PNG, GIF, BMP, WEBP, TIFF...), optionally resized."""
    from PIL import Image

    with Image.open(GRACE) as image:
        picture = image.convert("RGB")
    if size is not None:
        picture = picture.resize(size)
    out = io.BytesIO()
    picture.save(out, fmt, **save)
    return out.getvalue()


# -- audio -------------------------------------------------------------------------------


def tone(hz: float, seconds: float = 1.0, rate: int = RATE, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return amplitude * np.sin(2 * np.pi * hz * t)


def wav(samples: np.ndarray, rate: int = RATE, dtype=np.int16) -> bytes:
    """scipy-written WAV; floats in [-1, 1] are scaled to the integer type's range."""
    if np.issubdtype(dtype, np.floating):
        data = samples.astype(dtype)
    elif dtype == np.uint8:
        data = np.round(samples * 127 + 128).astype(np.uint8)
    else:
        data = np.round(samples * (np.iinfo(dtype).max - 1)).astype(dtype)
    out = io.BytesIO()
    wavfile.write(out, rate, data)
    return out.getvalue()


def chirp_wav(seconds: float = 2.0, rate: int = 16000, channels: int = 1) -> bytes:
    """A rising tone with a little noise, 16-bit PCM: something with structure to draw."""
    t = np.arange(int(seconds * rate)) / rate
    sweep = 0.4 * np.sin(2 * np.pi * (200 + 900 * t) * t)
    noise = 0.05 * np.random.default_rng(7).standard_normal(len(t))
    mono = sweep + noise
    if channels == 1:
        return wav(mono, rate)
    samples = np.stack([mono * (1 - 0.1 * c) for c in range(channels)], 1)
    return wav(samples, rate)


def wav_header(
    *,
    tag: int = 1,
    channels: int = 1,
    rate: int = RATE,
    block_align: int | None = None,
    bits: int = 16,
    data_size: int | None = None,
    riff_size: int | None = None,
    fmt_size: int = 16,
    payload: bytes = b"\x00\x01" * 64,
) -> bytes:
    """A RIFF/WAVE file packed by hand whose header fields may lie (4 GB of data...)."""
    align = block_align if block_align is not None else channels * max(1, bits // 8)
    byte_rate = (rate * align) & 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", tag, channels, rate, byte_rate, align & 0xFFFF, bits)
    fmt = fmt.ljust(min(fmt_size, 64), b"\x00")
    body = b"WAVE" + b"fmt " + struct.pack("<I", fmt_size) + fmt
    body += b"data" + struct.pack("<I", len(payload) if data_size is None else data_size) + payload
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


# -- images whose headers lie --------------------------------------------------------------


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_header_only(width: int, height: int, depth: int = 8, colour: int = 0) -> bytes:
    """A valid-looking PNG that declares width x height but carries only a few bytes of pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose start-of-frame marker is rewritten to declare width x height."""
    out = bytearray(data)
    pos = 2
    while pos + 9 < len(out):
        if out[pos] != 0xFF:
            break
        marker = out[pos + 1]
        (length,) = struct.unpack_from(">H", out, pos + 2)
        if marker in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", out, pos + 5, height, width)
            return bytes(out)
        pos += 2 + length
    raise ValueError("no start-of-frame marker found")


def bmp_header_only(width: int, height: int, bits: int = 24) -> bytes:
    """A BMP that declares width x height and holds a few bytes of pixels."""
    pixels = b"\x80" * 64
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, 0, 2835, 2835, 0, 0)
    header = struct.pack("<2sIHHI", b"BM", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return header + info + pixels


def gif_header_only(width: int, height: int) -> bytes:
    """A GIF89a whose screen and one image declare width x height, with one byte of LZW data."""
    palette = b"\x00\x00\x00\xff\xff\xff"  # two colours
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + palette
    image = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + image + b";"


# -- video ---------------------------------------------------------------------------------


def video(
    frames: int = 6,
    size: tuple[int, int] = (320, 240),
    fourcc: str = "mp4v",
    suffix: str = ".mp4",
    fps: float = 10.0,
) -> bytes:
    """A clip of the photograph slowly panned and zoomed (a person in every frame).

    mp4v in .mp4 and MJPG in .avi or .mkv are what OpenCV's FFmpeg writer makes here.
    """
    import cv2

    picture = cv2.imread(str(GRACE))
    assert picture is not None, f"matplotlib sample photo missing: {GRACE}"
    height, width = picture.shape[:2]
    out_w, out_h = size
    with tempfile.TemporaryDirectory(prefix="dcf-media-") as folder:
        path = str(Path(folder) / f"clip{suffix}")
        writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*fourcc), fps, (out_w, out_h))
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write {fourcc} into {suffix}")
        try:
            for index in range(frames):
                share = index / max(1, frames - 1)
                zoom = 1.0 - 0.15 * share  # crop from the whole picture to 85% of it
                crop_w, crop_h = int(width * zoom), int(height * zoom)
                left = int((width - crop_w) * share)
                top = int((height - crop_h) * 0.5)
                crop = picture[top : top + crop_h, left : left + crop_w]
                writer.write(cv2.resize(crop, (out_w, out_h), interpolation=cv2.INTER_AREA))
        finally:
            writer.release()
        return Path(path).read_bytes()


def mp4_atoms(data: bytes) -> dict[bytes, tuple[int, int]]:
    """Top-level MP4 atoms: name -> (offset, size)."""
    atoms: dict[bytes, tuple[int, int]] = {}
    pos = 0
    while pos + 8 <= len(data):
        size, name = struct.unpack_from(">I4s", data, pos)
        if size < 8:
            break
        atoms.setdefault(name, (pos, size))
        pos += size
    return atoms


def mp4_broken_moov(data: bytes, how: str = "size") -> bytes:
    """The MP4 with its index (moov atom) damaged: ``size`` makes it claim 4 GB, ``zero``
    blanks its body, ``cut`` removes it, ``garble`` overwrites its middle with noise."""
    offset, size = mp4_atoms(data)[b"moov"]
    out = bytearray(data)
    if how == "size":
        struct.pack_into(">I", out, offset, 0xFFFFFFF0)
    elif how == "zero":
        out[offset + 8 : offset + size] = bytes(size - 8)
    elif how == "cut":
        del out[offset : offset + size]
    elif how == "garble":
        start = offset + size // 4
        noise = np.random.default_rng(3).integers(0, 256, size // 2, dtype=np.uint8).tobytes()
        out[start : start + len(noise)] = noise
    else:
        raise ValueError(how)
    return bytes(out)


def mp4_with_size(data: bytes, width: int, height: int) -> bytes:
    """The MP4 with the frame size its track header and sample description declare
    rewritten to width x height (the coded stream inside is untouched)."""
    out = bytearray(data)
    tkhd = out.find(b"tkhd")
    if tkhd < 0:
        raise ValueError("no tkhd atom")
    (size,) = struct.unpack_from(">I", out, tkhd - 4)
    # The last 8 bytes of tkhd: width and height as 16.16 fixed point.
    fixed = ((width & 0xFFFF) << 16, (height & 0xFFFF) << 16)
    struct.pack_into(">II", out, tkhd - 4 + size - 8, *fixed)
    for codec in (b"mp4v", b"avc1", b"mjpa", b"jpeg"):
        entry = out.find(codec, out.find(b"stsd"))
        if entry > 0:
            # VisualSampleEntry: 6 reserved, data ref index, 16 predefined, width, height.
            struct.pack_into(">HH", out, entry + 4 + 6 + 2 + 16, width & 0xFFFF, height & 0xFFFF)
            return bytes(out)
    raise ValueError("no visual sample entry")


def mjpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """A motion-JPEG video whose every frame's start-of-frame marker declares width x height."""
    out = bytearray(data)
    marker = b"\xff\xc0\x00\x11\x08"  # baseline SOF, 8-bit, three components
    found = 0
    pos = out.find(marker)
    while pos >= 0:
        struct.pack_into(">HH", out, pos + len(marker), height & 0xFFFF, width & 0xFFFF)
        found += 1
        pos = out.find(marker, pos + len(marker))
    if not found:
        raise ValueError("no baseline start-of-frame marker")
    return bytes(out)


def make_video(
    path: Path,
    frames: int,
    size: tuple[int, int] = (320, 240),
    fourcc: str = "mp4v",
    fps: float = 25.0,
) -> bytes:
    """grace_hopper.jpg panned and zoomed, ``frames`` frames of ``size``: a person in each."""
    import cv2

    photo = cv2.imread(str(GRACE))
    assert photo is not None, f"matplotlib sample photo missing: {GRACE}"
    photo_h, photo_w = photo.shape[:2]
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, size)
    assert writer.isOpened(), f"this OpenCV cannot write {fourcc} to {path.suffix}"
    try:
        for k in range(frames):
            t = k / max(frames - 1, 1)
            crop_w = photo_w * (1.0 - 0.25 * t)  # zoom in to three quarters
            crop_h = min(crop_w * height / width, photo_h)
            crop_w = crop_h * width / height
            x0 = (photo_w - crop_w) * (0.5 + 0.5 * np.sin(2 * np.pi * t))  # pan sideways
            y0 = (photo_h - crop_h) * 0.3 * t  # and down
            scale_x, scale_y = width / crop_w, height / crop_h
            matrix = np.array([[scale_x, 0, -x0 * scale_x], [0, scale_y, -y0 * scale_y]])
            writer.write(cv2.warpAffine(photo, matrix, size, borderMode=cv2.BORDER_REFLECT))
    finally:
        writer.release()
    return path.read_bytes()
