"""Open Inference Protocol tests' helpers: tritonclient in a subprocess, and inputs."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
from scipy.io import wavfile

from tests.support import ROOT

PROBE = ROOT / "tests" / "oip" / "triton_probe.py"
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def triton(address: str, steps: list[dict], timeout: float = 300) -> list[dict]:
    """Run ``steps`` with tritonclient's gRPC client in a separate process.

    tritonclient's protos and ours share message names, so they cannot live in one
    process: the pytest process imports ours, the probe tritonclient's.
    """
    done = subprocess.run(
        [sys.executable, str(PROBE), address],
        input=json.dumps(steps),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )
    assert done.returncode == 0, f"triton probe failed:\n{done.stderr[-4000:]}"
    results = json.loads(done.stdout)
    assert len(results) == len(steps)
    return results


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
