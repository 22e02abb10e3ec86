"""Open Inference Protocol tests' helpers: tritonclient in a subprocess, and inputs."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib
import numpy as np
from scipy.io import wavfile

from tests.support import ROOT, run_probe

PROBE = ROOT / "tests" / "oip" / "triton_probe.py"
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def triton(address: str, steps: list[dict], timeout: float = 300) -> list[dict]:
    """Run ``steps`` with tritonclient's gRPC client against ``address``, in a process of
    its own (``run_probe``)."""
    return run_probe(PROBE, address, steps, timeout)


def value(result: dict):
    """The value of a step that must have succeeded."""
    assert result["ok"], f"{result['status']}: {result['message']}"
    return result["value"]


def make_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """16-bit mono WAV of a 1 kHz tone."""
    t = np.arange(int(seconds * rate)) / rate
    out = io.BytesIO()
    wavfile.write(out, rate, (0.5 * np.sin(2 * np.pi * 1000 * t) * 32767).astype(np.int16))
    return out.getvalue()
