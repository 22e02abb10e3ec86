"""The original service's send-wav method, rebuilt only as the benchmark's baseline.

It reproduces what the original did and what it cost: a numpy STFT of the raw
integer samples (Hann window, 1024-sample frames, 50% overlap), the "log-scale"
regrouping of bins at factor 1.0 (which keeps every bin, but still loops over
them), 20*log10(|X| / 1e-5), a 15 x 7.5 inch matplotlib figure drawn with imshow
in jet with a colorbar and axis labels, saved as PNG at 100 dpi (1500 x 750) and
returned base64-encoded, as the original returned it. Not for serving: it uses
pyplot, which the handlers must never import.
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # the baseline renders off-screen, as the original server did

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402
from scipy.io import wavfile  # noqa: E402

FRAME = 1024
OVERLAP = 0.5


def original_method(wav_bytes: bytes) -> bytes:
    """WAV bytes to the base64 text of a matplotlib PNG spectrogram, the original way."""
    rate, samples = wavfile.read(io.BytesIO(wav_bytes))
    if samples.ndim > 1:  # the original assumed mono; average so the baseline never fails
        samples = samples.mean(axis=1)
    spectrum = _stft(samples.astype(np.float64), FRAME, OVERLAP)
    regrouped, freqs = _regroup_bins(spectrum, rate, factor=1.0)
    with np.errstate(divide="ignore"):
        decibels = 20.0 * np.log10(np.abs(regrouped) / 1e-5)
    times, bins = decibels.shape

    figure = plt.figure(figsize=(15, 7.5))
    plt.imshow(decibels.T, origin="lower", aspect="auto", cmap="jet", interpolation="none")
    plt.colorbar()
    plt.xlabel("time (s)")
    plt.ylabel("frequency (hz)")
    plt.xlim([0, times - 1])
    plt.ylim([0, bins])
    x_at = np.linspace(0, times - 1, 5)
    hop = FRAME - int(OVERLAP * FRAME)
    plt.xticks(x_at, [f"{(x * hop + FRAME / 2) / rate:.2f}" for x in x_at])
    y_at = np.round(np.linspace(0, bins - 1, 10)).astype(int)
    plt.yticks(y_at, [f"{freqs[i]:.0f}" for i in y_at])
    out = io.BytesIO()
    plt.savefig(out, format="png")
    plt.close(figure)
    return base64.b64encode(out.getvalue())


def _stft(signal: np.ndarray, frame: int, overlap: float) -> np.ndarray:
    """(frames, bins) complex STFT; half a frame of zeros in front centres the first frame
    on sample 0, and the tail is zero-filled to a whole frame."""
    hop = frame - int(overlap * frame)
    padded = np.concatenate((np.zeros(frame // 2), signal))
    count = int(np.ceil((len(padded) - frame) / hop)) + 1
    padded = np.concatenate((padded, np.zeros(max(0, (count - 1) * hop + frame - len(padded)))))
    frames = sliding_window_view(padded, frame)[::hop][:count]
    return np.fft.rfft(frames * np.hanning(frame), axis=1)


def _regroup_bins(
    spectrum: np.ndarray, rate: int, factor: float = 1.0
) -> tuple[np.ndarray, list[float]]:
    """Merge bins into bands spaced by position ** factor (1.0: one band per bin)."""
    times, bins = spectrum.shape
    starts = np.unique(np.round(np.linspace(0.0, 1.0, bins) ** factor * (bins - 1)).astype(int))
    bands = np.empty((times, len(starts)), dtype=complex)
    centre_hz = np.abs(np.fft.fftfreq(2 * bins, 1.0 / rate)[: bins + 1])
    freqs = []
    for index, start in enumerate(starts):
        stop = starts[index + 1] if index + 1 < len(starts) else bins
        bands[:, index] = spectrum[:, start:stop].sum(axis=1)
        freqs.append(float(np.mean(centre_hz[start:stop])))
    return bands, freqs
