"""Helpers for the HTTP front's tests: inputs made here, a client that writes and reads
at once, and the gateway's own counters.

httpx (like most HTTP/1.1 clients) sends the whole body before it reads a byte of
the answer, so it cannot show an answer arriving while the body is still going
up. ``Duplex`` can: the request head is made by h11, the body is written to the
socket as the test decides, and h11 parses the answer as it comes.
"""

from __future__ import annotations

import io
import socket
import time
import wave
from pathlib import Path

from bench.stream import PeakRss, rss_bytes  # noqa: F401 - shared with the benchmark

import h11
import matplotlib
import numpy as np

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
MiB = 1 << 20


def wav_bytes(seconds: float = 1.0, rate: int = 16000, hz: float = 440.0) -> bytes:
    """A mono 16-bit WAV of a rising tone."""
    t = np.arange(int(seconds * rate)) / rate
    samples = 0.5 * np.sin(2 * np.pi * (hz + 1500 * t) * t)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((samples * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def video_file(path: Path, frames: int = 12, size: tuple[int, int] = (320, 240)) -> Path:
    """An MP4 of ``frames`` frames: Grace Hopper's photo sliding across a grey field."""
    import cv2

    width, height = size
    photo = cv2.imread(str(GRACE_HOPPER))
    scale = (height - 20) / photo.shape[0]
    photo = cv2.resize(photo, (int(photo.shape[1] * scale), height - 20))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (width, height))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write MP4 here")
    try:
        for i in range(frames):
            frame = np.full((height, width, 3), 110, np.uint8)
            x = min(width - photo.shape[1], 4 + i * 6)
            frame[10 : 10 + photo.shape[0], x : x + photo.shape[1]] = photo
            writer.write(frame)
    finally:
        writer.release()
    return path


class Duplex:
    """One POST over a plain socket: write the body piece by piece, read the answer as it
    arrives, in any order."""

    def __init__(self, port: int, path: str, length: int, headers: dict | None = None,
                 timeout: float = 60.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.conn = h11.Connection(h11.CLIENT)
        head = [("host", f"127.0.0.1:{port}"), ("content-length", str(length))]
        head += list((headers or {}).items())
        self.sock.sendall(self.conn.send(h11.Request(method="POST", target=path, headers=head)))
        self.sent = 0
        self.reads = 0  # socket reads so far; an event was in the bytes of read number ``reads``
        self.read_at = 0.0  # when the last read returned (time.monotonic)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def event(self):
        """The answer's next h11 event (Response, Data, EndOfMessage), waiting for it."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = self.sock.recv(MiB)
            self.reads += 1
            self.read_at = time.monotonic()
            self.conn.receive_data(data)

    def response(self) -> h11.Response:
        event = self.event()
        assert isinstance(event, h11.Response), event
        return event

    def body(self) -> bytes:
        """The rest of the answer's body, to its end."""
        parts = []
        while not isinstance(event := self.event(), h11.EndOfMessage):
            parts.append(bytes(event.data))
        return b"".join(parts)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Duplex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

