"""The client CLI as a user runs it: a subprocess against a real server."""

from __future__ import annotations

import base64
import subprocess
import sys

from tests.conftest import ROOT


def client(*args: str, stdin: bytes = b"", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        input=stdin, capture_output=True, cwd=ROOT, timeout=60, env=env,
    )


def test_call_echoes_stdin(dcf):
    done = client("call", "hello-dcf", "--address", dcf.address, stdin=b"Hello, DCF!\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"Hello, DCF!\n"


def test_address_before_the_subcommand_and_from_environment(dcf):
    done = client("--address", dcf.address, "call", "hello-dcf", stdin=b"x")
    assert done.stdout == b"x"
    import os

    done = client("call", "hello-dcf", stdin=b"y", env={**os.environ, "DCF_ADDRESS": dcf.address})
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"y"


def test_call_reads_a_file_and_prints_base64(dcf, tmp_path):
    data = bytes(range(256)) * 5000
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    done = client("call", "hello-dcf", str(path), "--base64", "--address", dcf.address)
    assert done.returncode == 0, done.stderr
    assert base64.b64decode(done.stdout) == data


def test_list(dcf):
    done = client("list", "--address", dcf.address)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert any(line.startswith("hello-dcf ") and "Echoes" in line for line in lines)


def test_errors_are_one_line_with_status(dcf):
    done = client("call", "no-such", "--address", dcf.address, stdin=b"x")
    assert done.returncode != 0
    assert done.stderr.decode().startswith("error: NOT_FOUND: ")
    assert len(done.stderr.decode().strip().splitlines()) == 1

    done = client("call", "hello-dcf", "-p", "nonsense", "--address", dcf.address)
    assert done.returncode != 0 and done.stderr.decode().startswith("error: INVALID_ARGUMENT: ")

    done = client("call", "hello-dcf", "--address", "127.0.0.1:1", stdin=b"x")
    assert done.returncode != 0 and done.stderr.decode().startswith("error: UNAVAILABLE: ")


def test_local_equals_served(dcf):
    served = client("call", "hello-dcf", "--address", dcf.address, stdin=b"same bytes")
    local = client("call", "--local", "hello-dcf", stdin=b"same bytes")
    assert local.returncode == 0, local.stderr
    assert served.stdout == local.stdout == b"same bytes"


def test_send_wav_local_equals_served_byte_for_byte(dcf, tmp_path):
    import io

    import numpy as np
    from PIL import Image
    from scipy.io import wavfile

    rate = 44100
    t = np.arange(rate * 2) / rate
    buffer = io.BytesIO()
    wavfile.write(buffer, rate, (0.5 * np.sin(2 * np.pi * 1000 * t) * 32767).astype(np.int16))
    wav = tmp_path / "tone.wav"
    wav.write_bytes(buffer.getvalue())
    served = client("call", "send-wav", str(wav), "--address", dcf.address)
    local = client("call", "--local", "stft", str(wav))
    assert served.returncode == 0, served.stderr
    assert local.returncode == 0, local.stderr
    assert served.stdout == local.stdout
    assert Image.open(io.BytesIO(served.stdout)).size == (1500, 750)
