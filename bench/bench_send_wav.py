"""send-wav: our handler against the original procedure, on the same input.

The original is the exact "plotstft" procedure the original service ran
(tests/support/original_send_wav.py: scipy's reader, a numpy STFT, a 15 x 7.5 inch
matplotlib figure read back as RGB, a PNG through PIL, base64). Both run in the
same process, interleaved, so a noisy shared machine slows them alike and the
ratio stays meaningful even when the absolute times do not. The handler is timed
end to end as the host calls it, the input given in 1 MiB chunks as the host
feeds it: WAV parsing, STFT, PNG.

    .venv/bin/python bench/bench_send_wav.py [repeats]
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy.io import wavfile

if not __package__:  # run as a script (bench/...py): the repository root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from handlers import send_wav
from handlers.base import Params, Request
from tests.support.original_send_wav import original_method

RATE = 44100
CASES = (("10 s", 10.0), ("5 min", 300.0))


def make_signal(seconds: float, rate: int = RATE) -> bytes:
    """16-bit mono WAV: a 100 Hz to 15 kHz chirp, a steady 3 kHz tone and some noise."""
    t = np.arange(int(seconds * rate)) / rate
    sweep = (15000.0 - 100.0) / seconds
    x = 0.5 * np.sin(2 * np.pi * (100.0 * t + 0.5 * sweep * t * t))
    x += 0.2 * np.sin(2 * np.pi * 3000.0 * t)
    x += 0.05 * np.random.default_rng(0).standard_normal(len(t))
    out = io.BytesIO()
    wavfile.write(out, rate, (np.clip(x, -1.0, 1.0) * 32767).astype(np.int16))
    return out.getvalue()


CHUNK = 1 << 20  # the host's chunk size


def chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


def run(repeats: int = 5) -> list[dict]:
    """One row per input: median seconds per call for ours and the original, and the ratio."""
    function = send_wav.create({})

    def ours(data: bytes) -> bytes:
        return b"".join(function.handle(Request(Params({}), iter(chunks(data)))).parts)

    rows = []
    for label, seconds in CASES:
        data = make_signal(seconds)
        ours_png, original_b64 = ours(data), original_method(data)  # warm both up
        ours_times, original_times = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            ours(data)
            ours_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            original_method(data)
            original_times.append(time.perf_counter() - start)
        ours_s, original_s = statistics.median(ours_times), statistics.median(original_times)
        rows.append(
            {
                "input": f"{label} of 44.1 kHz 16-bit mono ({len(data) / 2**20:.1f} MiB)",
                "ours_s": ours_s,
                "original_s": original_s,
                "ratio": ours_s / original_s,
                "ours_bytes": len(ours_png),
                "original_bytes": len(original_b64),
            }
        )
    function.close()
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| input | ours (ms) | original (ms) | ours / original | PNG ours | original (base64) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['input']} | {row['ours_s'] * 1000:.0f} | {row['original_s'] * 1000:.0f} "
            f"| {row['ratio']:.3f} (1/{1 / row['ratio']:.0f}) | {row['ours_bytes'] / 1024:.0f} KiB "
            f"| {row['original_bytes'] / 1024:.0f} KiB |"
        )
    return "\n".join(lines)


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    print(table(run(repeats)))


if __name__ == "__main__":
    main()
