"""WAV bytes to float samples, with every malformed input turned into InvalidInput.

We walk the RIFF chunks ourselves instead of calling ``scipy.io.wavfile.read``,
for three reasons found while checking it against broken files: a data chunk cut
in the middle of a frame raises a cryptic ValueError (cut on a frame boundary it
only warns), a header declaring zero channels or a zero block size raises
ZeroDivisionError (which the host would report as an internal error), and
silencing its WavFileWarning needs ``warnings.catch_warnings``, which swaps
process-wide state and is not safe on the host's worker threads. The format
itself is small: a ``fmt `` chunk, then a ``data`` chunk of little-endian frames.

Policy for damaged files: anything we cannot interpret (not RIFF/WAVE, a header
cut short, an unsupported encoding, no samples) is refused with a one-line
reason; a data chunk shorter than its header claims is accepted up to the last
whole frame, because recorders that were stopped abruptly (or that stream and
never patch the size, writing 0xFFFFFFFF) leave exactly that, and a spectrogram
of what is there is still what the caller wants.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from handlers.base import InvalidInput

_PCM = 0x0001
_IEEE_FLOAT = 0x0003
_EXTENSIBLE = 0xFFFE
# Every KSDATAFORMAT_SUBTYPE_* GUID shares this tail after its 4-byte format code.
_GUID_TAIL = b"\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_FORMAT_NAMES = {0x0002: "ADPCM", 0x0006: "A-law", 0x0007: "mu-law", 0x0011: "IMA ADPCM",
                 0x0055: "MP3"}


@dataclass(frozen=True)
class Wav:
    """A parsed WAV: its rate and a zero-copy view of the frames in the file's encoding.

    Samples stay in the file's encoding until asked for, so a long stereo file is
    converted once, straight into the one float32 channel the caller wants, rather
    than into a float copy of every channel first.
    """

    rate: int
    channels: int
    raw: np.ndarray  # (frames, channels) of u1/<i2/<i4/<f4/<f8, or (frames, channels, 3) u1
    factor: float  # float sample = (raw - offset) * factor
    offset: float

    @property
    def frames(self) -> int:
        return int(self.raw.shape[0])

    @property
    def duration(self) -> float:
        return self.frames / self.rate

    def mono(self, channel: int | None = None) -> np.ndarray:
        """One channel (0-based) or, with None, the mean of all, as float32 in about [-1, 1]."""
        if channel is not None and not 0 <= channel < self.channels:
            raise IndexError(f"channel {channel} of {self.channels}")
        chosen = range(self.channels) if channel is None else (channel,)
        total: np.ndarray | None = None
        for index in chosen:
            column = self._float_column(index)
            if total is None:
                total = column
            else:
                total += column
        assert total is not None
        if len(chosen) > 1:
            total *= np.float32(1.0 / len(chosen))
        return total

    def _float_column(self, index: int) -> np.ndarray:
        """A fresh float32 array, so the caller may add into it in place."""
        if self.raw.ndim == 3:
            # 24-bit: put the three bytes at the top of an int32, which also sign-extends.
            widened = np.zeros((self.frames, 4), dtype=np.uint8)
            widened[:, 1:] = self.raw[:, index, :]
            column = widened.view("<i4")[:, 0]
        else:
            column = self.raw[:, index]
        if column.dtype == np.float64:
            # Scale before narrowing: a float64 beyond float32's range would become inf.
            return (column * self.factor).astype(np.float32)
        out = column.astype(np.float32)
        if self.offset:
            out -= np.float32(self.offset)
        if self.factor != 1.0:
            out *= np.float32(self.factor)
        return out


def _float_peak(raw: np.ndarray) -> float:
    return float(max(raw.max(), -raw.min()))


def read_wav(data: bytes) -> Wav:
    """Parse a RIFF/WAVE file held in memory; raise InvalidInput saying what is wrong."""
    view = memoryview(data)
    if len(view) < 12:
        raise InvalidInput(f"not a WAV file: {len(view)} bytes is shorter than a RIFF header")
    if view[0:4] != b"RIFF" or view[8:12] != b"WAVE":
        if view[0:4] in (b"RIFX", b"RF64") and view[8:12] == b"WAVE":
            raise InvalidInput(f"unsupported WAV variant {bytes(view[0:4]).decode()}, "
                               "only little-endian RIFF is read")
        raise InvalidInput("not a WAV file: it does not start with a RIFF/WAVE header")
    fmt: tuple[int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(view):
        chunk_id = bytes(view[pos:pos + 4])
        (size,) = struct.unpack_from("<I", view, pos + 4)
        body = pos + 8
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(view[body:body + size], size)
        elif chunk_id == b"data":
            if fmt is None:
                raise InvalidInput("malformed WAV: the data chunk comes before the fmt chunk")
            return _wav_from_data(view[body:body + size], *fmt)
        pos = body + size + (size & 1)  # chunks are padded to an even length
    if fmt is None:
        raise InvalidInput("malformed WAV: no fmt chunk (truncated header?)")
    raise InvalidInput("malformed WAV: no data chunk (truncated file?)")


def _parse_fmt(body: memoryview, declared: int) -> tuple[int, int, int, int]:
    """(format code, channels, rate, bytes per sample), validated so later arithmetic is safe."""
    if declared < 16 or len(body) < 16:
        raise InvalidInput("malformed WAV: fmt chunk is shorter than 16 bytes (truncated header?)")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body, 0)
    if tag == _EXTENSIBLE:
        if len(body) < 40:
            raise InvalidInput("malformed WAV: WAVE_FORMAT_EXTENSIBLE fmt chunk is shorter "
                               "than 40 bytes")
        guid = bytes(body[24:40])
        if guid[4:] != _GUID_TAIL:
            raise InvalidInput("unsupported WAV encoding: unknown WAVE_FORMAT_EXTENSIBLE subformat")
        (tag,) = struct.unpack_from("<I", guid, 0)
    if tag not in (_PCM, _IEEE_FLOAT):
        name = _FORMAT_NAMES.get(tag, f"format code 0x{tag:04x}")
        raise InvalidInput(f"unsupported WAV encoding: {name}, only PCM and IEEE float are read")
    if channels == 0:
        raise InvalidInput("malformed WAV: fmt chunk declares 0 channels")
    if rate == 0:
        raise InvalidInput("malformed WAV: fmt chunk declares a sample rate of 0")
    if block_align == 0 or block_align % channels:
        raise InvalidInput(f"malformed WAV: block size {block_align} does not fit "
                           f"{channels} channels")
    sample_bytes = block_align // channels
    allowed = (4, 8) if tag == _IEEE_FLOAT else (1, 2, 3, 4)
    if sample_bytes not in allowed or bits > 8 * sample_bytes or bits == 0:
        kind = "float" if tag == _IEEE_FLOAT else "PCM"
        raise InvalidInput(f"unsupported WAV encoding: {bits}-bit {kind} in "
                           f"{sample_bytes}-byte samples")
    return tag, channels, rate, sample_bytes


def _wav_from_data(body: memoryview, tag: int, channels: int, rate: int,
                   sample_bytes: int) -> Wav:
    frame_bytes = channels * sample_bytes
    frames = len(body) // frame_bytes
    if frames == 0:
        raise InvalidInput("WAV has no samples: the data chunk holds no complete frame")
    usable = body[:frames * frame_bytes]
    is_float = tag == _IEEE_FLOAT
    if sample_bytes == 3:
        raw = np.frombuffer(usable, dtype=np.uint8).reshape(frames, channels, 3)
    else:
        kind = "f" if is_float else ("u" if sample_bytes == 1 else "i")
        raw = np.frombuffer(usable, dtype=f"<{kind}{sample_bytes}").reshape(frames, channels)
    if is_float:
        # Floats are used as they are unless they peak above 1; then they are scaled
        # down to it, so a file of absurd values cannot overflow float32 later.
        peak = _float_peak(raw)
        if not math.isfinite(peak):
            raise InvalidInput("WAV float samples include NaN or infinity")
        factor, offset = (1.0 / peak if peak > 1.0 else 1.0), 0.0
    elif sample_bytes == 1:
        factor, offset = 1.0 / 128.0, 128.0  # 8-bit PCM is unsigned, silence is 128
    else:
        # Integers scale by their container: WAV left-justifies narrower samples
        # (20-bit in 24), and 24-bit is widened into the top of an int32.
        container_bits = 32 if sample_bytes == 3 else 8 * sample_bytes
        factor, offset = 1.0 / float(2 ** (container_bits - 1)), 0.0
    return Wav(rate=rate, channels=channels, raw=raw, factor=factor, offset=offset)
