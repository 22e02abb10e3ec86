"""WAV input, read as a stream: the header first, then the samples in bounded blocks.

A WAV is read straight from the call's chunks, so a long file never sits whole in
memory: ``open_wav`` reads only as far as the start of the data chunk (skipping
other chunks by counting, not holding, their bytes), and ``WavReader.samples``
then decodes at most ``BLOCK_FRAMES`` frames at a time as the chunks arrive.

Samples come out as float64 in the units ``scipy.io.wavfile.read`` gives them,
which are the units the original send-wav computed its decibels in: integer PCM
as its integer value (24-bit left-justified into an int32, as scipy does), float
as stored. The one difference is 8-bit PCM, which is unsigned with silence at 128:
the 128 is taken off, so silence is 0 as in every other format.

We walk the RIFF chunks ourselves instead of calling ``scipy.io.wavfile.read``,
which needs the whole file, and which was found wanting on broken files: a data
chunk cut in the middle of a frame raises a cryptic ValueError, a header declaring
zero channels or a zero block size raises ZeroDivisionError (reported by the host
as an internal error), and silencing its WavFileWarning needs
``warnings.catch_warnings``, which swaps process-wide state and is not safe on the
host's worker threads.

Policy for damaged files: anything we cannot interpret (not RIFF/WAVE, a header
cut short, an unsupported encoding, no samples, NaN) is refused with a one-line
reason; a data chunk shorter than its header claims is accepted up to the last
whole frame, because recorders that were stopped abruptly (or that stream and
never patch the size, writing 0xFFFFFFFF) leave exactly that, and a spectrogram
of what is there is still what the caller wants.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from handlers.errors import InvalidInput

_PCM = 0x0001
_IEEE_FLOAT = 0x0003
_EXTENSIBLE = 0xFFFE
# Every KSDATAFORMAT_SUBTYPE_* GUID shares this tail after its 4-byte format code.
_GUID_TAIL = b"\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_FORMAT_NAMES = {
    0x0002: "ADPCM",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0055: "MP3",
}
# A fmt chunk is 16, 18 or 40 bytes; a longer one is read this far and the rest skipped.
_FMT_READ = 1024
# Data sizes from here up are what streaming writers put in before they know the
# length (0xFFFFFFFF, 0x7FFFFFFF, sox's 0x7FFFF000...): the length is unknown.
UNKNOWN_SIZE_FROM = 0x7FFF0000
# Frames decoded at once: 2 MiB of float64 for a mono block.
BLOCK_FRAMES = 1 << 18
# Float samples beyond this are not audio, and their squares would overflow float64
# inside a long STFT frame.
FLOAT_LIMIT = 1e30


@dataclass(frozen=True)
class WavFormat:
    """What the header says: enough to decode the data and to plan the work."""

    rate: int
    channels: int
    sample_bytes: int  # per sample of one channel: 1, 2, 3 or 4 (PCM), 4 or 8 (float)
    is_float: bool
    frames: int | None  # whole frames the data chunk declares; None when its size is a placeholder

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.sample_bytes

    def decode(self, data: bytes | memoryview, channel: int | None = None) -> np.ndarray:
        """Whole frames of data to float64 samples of one channel (0-based) or, with None,
        the mean of all, in the file's units (see the module docstring).

        The mean is numpy's (a sum in float64, then a division), exact for integer
        samples whatever the order of the sum; one vectorised pass over the piece
        whatever the number of channels.
        """
        frames = len(data) // self.frame_bytes
        if self.sample_bytes == 3:
            raw = np.frombuffer(data, dtype=np.uint8, count=frames * self.frame_bytes)
            raw = raw.reshape(frames, self.channels, 3)
            if channel is not None:
                raw = raw[:, channel : channel + 1]
            # 24-bit: the three bytes at the top of an int32 (left-justified, as scipy
            # reads them), which also sign-extends.
            widened = np.zeros((*raw.shape[:2], 4), dtype=np.uint8)
            widened[..., 1:] = raw
            values = widened.view("<i4")[..., 0]
        else:
            kind = "f" if self.is_float else ("u" if self.sample_bytes == 1 else "i")
            values = np.frombuffer(
                data, dtype=f"<{kind}{self.sample_bytes}", count=frames * self.channels
            ).reshape(frames, self.channels)
            if channel is not None:
                values = values[:, channel : channel + 1]
        mixed = values.shape[1]
        if mixed == 1:
            total = values[:, 0].astype(np.float64)
        else:
            total = values.sum(axis=1, dtype=np.float64)
        if self.sample_bytes == 1 and not self.is_float:
            total -= 128.0 * mixed  # 8-bit PCM is unsigned, silence is 128
        if mixed > 1:
            total /= mixed
        if self.is_float:
            _check_floats(total)
        return total


def _check_floats(samples: np.ndarray) -> None:
    if not len(samples):
        return
    peak = float(np.max(np.abs(samples)))
    if not np.isfinite(peak):
        raise InvalidInput("WAV float samples include NaN or infinity")
    if peak > FLOAT_LIMIT:
        raise InvalidInput(
            f"WAV float samples reach {peak:.3g}: not audio (at most {FLOAT_LIMIT:g})"
        )


class WavReader:
    """An opened WAV: its format, then its samples in blocks as the input arrives."""

    def __init__(self, wav_format: WavFormat, source: _ByteSource, data_bytes: int | None) -> None:
        self.format = wav_format
        self._source = source
        self._data_bytes = data_bytes
        self.frames_read = 0

    def samples(
        self, channel: int | None = None, block_frames: int = BLOCK_FRAMES
    ) -> Iterator[np.ndarray]:
        """float64 blocks of at most ``block_frames`` samples, in order, to the data's end.

        Raises InvalidInput if the data chunk holds no whole frame. Only the bytes of
        one block (and the part of a frame split between two chunks) are held here.
        """
        if channel is not None and not 0 <= channel < self.format.channels:
            raise IndexError(f"channel {channel} of {self.format.channels}")
        frame_bytes = self.format.frame_bytes
        block_bytes = block_frames * frame_bytes
        carried = b""  # the start of a frame split between two pieces
        for piece in self._source.pieces(self._data_bytes):
            if carried:
                need = frame_bytes - len(carried)
                carried += bytes(piece[:need])
                piece = piece[need:]
                if len(carried) < frame_bytes:
                    continue
                yield self._decoded(carried, channel)
                carried = b""
            whole = len(piece) - len(piece) % frame_bytes
            for start in range(0, whole, block_bytes):
                yield self._decoded(piece[start : min(whole, start + block_bytes)], channel)
            carried = bytes(piece[whole:])
        if self.frames_read == 0:
            raise InvalidInput("WAV has no samples: the data chunk holds no complete frame")

    def _decoded(self, data: bytes | memoryview, channel: int | None) -> np.ndarray:
        samples = self.format.decode(data, channel)
        self.frames_read += len(samples)
        return samples


def open_wav(chunks: Iterable[bytes]) -> WavReader:
    """Read a RIFF/WAVE header from the input's chunks, up to the start of its samples.

    Raises InvalidInput saying what is wrong. Chunks other than ``fmt `` are skipped
    without being held, whatever size they declare.
    """
    source = _ByteSource(chunks)
    head = source.read(12)
    if len(head) < 12:
        raise InvalidInput(f"not a WAV file: {len(head)} bytes is shorter than a RIFF header")
    if head[0:4] != b"RIFF" or head[8:12] != b"WAVE":
        if head[0:4] in (b"RIFX", b"RF64") and head[8:12] == b"WAVE":
            raise InvalidInput(
                f"unsupported WAV variant {head[0:4].decode()}, only little-endian RIFF is read"
            )
        raise InvalidInput("not a WAV file: it does not start with a RIFF/WAVE header")
    fmt: tuple[int, int, int, int] | None = None
    while True:
        header = source.read(8)
        if len(header) < 8:
            break
        chunk_id = header[0:4]
        (size,) = struct.unpack_from("<I", header, 4)
        padded = size + (size & 1)  # chunks are padded to an even length
        if chunk_id == b"fmt ":
            body = source.read(min(size, _FMT_READ))
            fmt = _parse_fmt(body, size)
            source.skip(padded - len(body))
        elif chunk_id == b"data":
            if fmt is None:
                raise InvalidInput("malformed WAV: the data chunk comes before the fmt chunk")
            tag, channels, rate, sample_bytes = fmt
            known = size < UNKNOWN_SIZE_FROM
            wav_format = WavFormat(
                rate=rate,
                channels=channels,
                sample_bytes=sample_bytes,
                is_float=tag == _IEEE_FLOAT,
                frames=size // (channels * sample_bytes) if known else None,
            )
            return WavReader(wav_format, source, size if known else None)
        else:
            source.skip(padded)
    if fmt is None:
        raise InvalidInput("malformed WAV: no fmt chunk (truncated header?)")
    raise InvalidInput("malformed WAV: no data chunk (truncated file?)")


def read_wav(data: bytes, channel: int | None = None) -> tuple[WavFormat, np.ndarray]:
    """A whole WAV held in memory: its format and all its samples (for small inputs)."""
    reader = open_wav([data])
    if channel is not None and not 0 <= channel < reader.format.channels:
        raise IndexError(f"channel {channel} of {reader.format.channels}")
    blocks = list(reader.samples(channel))
    return reader.format, np.concatenate(blocks)


class _ByteSource:
    """The input's chunks as one byte stream, read without joining them."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._current = memoryview(b"")

    def _fill(self) -> bool:
        while not len(self._current):
            chunk = next(self._chunks, None)
            if chunk is None:
                return False
            self._current = memoryview(chunk)
        return True

    def read(self, count: int) -> bytes:
        """Up to ``count`` bytes (fewer only at the end): for headers, small by design."""
        out = bytearray()
        while len(out) < count and self._fill():
            taken = self._current[: count - len(out)]
            out += taken
            self._current = self._current[len(taken) :]
        return bytes(out)

    def skip(self, count: int) -> None:
        while count > 0 and self._fill():
            taken = min(count, len(self._current))
            self._current = self._current[taken:]
            count -= taken

    def pieces(self, count: int | None) -> Iterator[memoryview]:
        """The next ``count`` bytes (None: all that is left) as they arrive, uncopied."""
        while (count is None or count > 0) and self._fill():
            taken = self._current if count is None else self._current[:count]
            self._current = self._current[len(taken) :]
            if count is not None:
                count -= len(taken)
            yield taken


def _parse_fmt(body: bytes, declared: int) -> tuple[int, int, int, int]:
    """(format code, channels, rate, bytes per sample), validated so later arithmetic is safe."""
    if declared < 16 or len(body) < 16:
        raise InvalidInput("malformed WAV: fmt chunk is shorter than 16 bytes (truncated header?)")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body, 0)
    if tag == _EXTENSIBLE:
        if len(body) < 40:
            raise InvalidInput(
                "malformed WAV: WAVE_FORMAT_EXTENSIBLE fmt chunk is shorter than 40 bytes"
            )
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
        raise InvalidInput(
            f"malformed WAV: block size {block_align} does not fit {channels} channels"
        )
    sample_bytes = block_align // channels
    allowed = (4, 8) if tag == _IEEE_FLOAT else (1, 2, 3, 4)
    if sample_bytes not in allowed or bits > 8 * sample_bytes or bits == 0:
        kind = "float" if tag == _IEEE_FLOAT else "PCM"
        raise InvalidInput(
            f"unsupported WAV encoding: {bits}-bit {kind} in {sample_bytes}-byte samples"
        )
    return tag, channels, rate, sample_bytes
