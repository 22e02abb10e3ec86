"""Helpers for the HTTP front's tests: inputs made here, a client that writes and reads
at once, a small server of one's own, and a worker held still.

httpx (like most HTTP/1.1 clients) sends the whole body before it reads a byte of
the answer, so it cannot show an answer arriving while the body is still going
up. ``Duplex`` can: the request head is made by h11, the body is written to the
socket as the test decides, and h11 parses the answer as it comes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h11
import matplotlib
import numpy as np

from tests.support import ROOT, free_port, run_probe, wait_listening, wait_serving

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
    assert photo is not None, f"matplotlib sample photo missing: {GRACE_HOPPER}"
    scale = (height - 20) / photo.shape[0]
    photo = cv2.resize(photo, (int(photo.shape[1] * scale), height - 20))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (width, height))
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

    def __init__(
        self, port: int, path: str, length: int, headers: dict | None = None, timeout: float = 60.0
    ) -> None:
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

    def __enter__(self) -> Duplex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- a worker held still

_STARTED = re.compile(r"worker (\S+) started \(pid (\d+), port \d+\)")


def worker_pid(log: Path, name: str) -> int:
    """The pid of function ``name``'s worker process now (its last start in the log)."""
    pids = [int(m[2]) for m in _STARTED.finditer(log.read_text(errors="replace")) if m[1] == name]
    assert pids, f"no start of worker {name} in {log}"
    return pids[-1]


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) for the block: whatever it has not sent yet cannot
    arrive meanwhile, which shows an order of events without timing anything."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# ---------------------------------------------------------------- a small server of one's own


@dataclass
class SmallService:
    """A ``python -m server`` with a registry of a few quick functions, on free ports."""

    process: subprocess.Popen
    log: Path
    grpc_port: int
    http_port: int
    metrics_port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def metrics_text(self) -> str:
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.read().decode()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


HELLO = {"handler": "handlers.hello"}


def small_service(
    tmp: Path, functions: dict | None = None, env: dict | None = None, open_files: int | None = None
) -> SmallService:
    """Start ``python -m server`` serving ``functions`` (default: hello-dcf alone) with
    ``env`` added to its environment and, if given, its open-file limit lowered to
    ``open_files`` (by the shell's ``ulimit``, as an operator's unit file would)."""
    ports = {"port": free_port(), "metrics_port": free_port(), "http_port": free_port()}
    registry = {
        name: {**entry, "workers": [f"127.0.0.1:{free_port()}"]}
        for name, entry in (functions or {"hello-dcf": HELLO}).items()
    }
    config = tmp / "registry.yaml"
    config.write_text(json.dumps({"server": ports, "functions": registry}))
    command = [sys.executable, "-m", "server", "--config", str(config)]
    if open_files is not None:
        command = ["sh", "-c", f'ulimit -n {open_files} && exec "$0" "$@"', *command]
    log = tmp / "server.log"
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    service = SmallService(process, log, ports["port"], ports["http_port"], ports["metrics_port"])
    try:
        wait_serving(service.address)
        for name in registry:
            wait_serving(service.address, name)
        wait_listening(service.http_port)
    except BaseException as exc:
        service.stop()
        raise RuntimeError(f"server did not start:\n{log.read_text()[-4000:]}") from exc
    return service


def wait_for(predicate, what: str, timeout: float = 30.0, every: float = 0.05):
    """Poll ``predicate`` until it returns something true, and return that; fail saying
    ``what`` did not happen within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(every)
    return result


# ---------------------------------------------------------------- tritonclient.http

V2_PROBE = ROOT / "tests" / "http" / "v2_probe.py"


def v2_probe(address: str, steps: list[dict], timeout: float = 300) -> list[dict]:
    """Run ``steps`` with tritonclient's HTTP client against ``address``, in a process of
    its own (``run_probe``)."""
    return run_probe(V2_PROBE, address, steps, timeout)


# ---------------------------------------------------------------- a browser

# Debian's chromium, which Playwright drives and never downloads (``make browser``), and
# how the page tests start it.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
