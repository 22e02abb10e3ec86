"""The original service's send-wav procedure, exactly, as the benchmark's baseline and the
tests' reference picture.

This is the well-known "plotstft" recipe that DCF's send-wav function ran, step by step:
scipy's ``wavfile.read`` (integer samples stay in their integer units); an STFT with a
symmetric Hann window (``np.hanning``), 1024-sample frames at 50% overlap, half a frame
of zeros in front (frame p is centred on sample p * hop) and a frame of zeros at the end;
the "log-scale" regrouping at factor 1.0, which keeps every bin but still loops over
them; ``20 * log10(|S| / 10e-6)`` (that is, 1e-5); a 15 x 7.5 inch figure (1500 x 750 at
matplotlib's 100 dpi) with the axes off and ``subplots_adjust(top=1, bottom=0, right=1,
left=0)``; ``imshow`` of the transpose with ``origin="lower"``, ``aspect="auto"``, jet and
``interpolation="none"``; a colorbar; ``xlim(0, timebins - 1)`` and ``ylim(0,
freqbins)``; the canvas drawn, read as RGB, saved through PIL as PNG, then base64.

One liberty, for files the original could not draw: it passed a multi-channel array
to ``np.append``, which flattens it, so a stereo file became one signal of interleaved
samples at twice its length. Here the channels are averaged first (still in the
file's units), so the baseline draws what a user would expect. Mono files, which is
everything the benchmark and the tests feed it, go through the procedure unchanged.

Not for serving: it uses pyplot, which the handlers must never import.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # the baseline renders off-screen, as the original server did

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from numpy.lib import stride_tricks
from PIL import Image
from scipy.io import wavfile

BINSIZE = 2**10
COLORMAP = "jet"
FIGSIZE = (15, 7.5)  # inches; 1500 x 750 pixels at the default 100 dpi


@dataclass(frozen=True)
class OriginalPicture:
    """The original's PNG, and what the tests need to read it: where the spectrogram is
    drawn and the colour range matplotlib chose for it."""

    png: bytes
    plot_box: tuple[int, int, int, int]  # left, top, right, bottom, in pixels of the PNG
    vmin: float  # dB at the colormap's bottom (matplotlib's auto-scaling: the data's min)
    vmax: float  # dB at its top (the data's max)
    colorbar_ticks: tuple[float, ...]  # the dB values labelled on the colorbar
    decibels: np.ndarray  # (timebins, freqbins), as imshow got it (transposed)


def original_method(wav_bytes: bytes) -> bytes:
    """WAV bytes to the base64 text of the PNG spectrogram, the original way."""
    return base64.b64encode(original_picture(wav_bytes).png)


def original_picture(wav_bytes: bytes) -> OriginalPicture:
    """The original procedure, keeping the figure's geometry and colour range for tests."""
    samplerate, samples = wavfile.read(io.BytesIO(wav_bytes))
    if samples.ndim > 1:  # see the module docstring: the original would interleave them
        samples = samples.mean(axis=1)

    s = stft(samples, BINSIZE)
    sshow, _freq = logscale_spec(s, factor=1.0, sr=samplerate)
    with np.errstate(divide="ignore"):  # an all-zero bin is -inf dB, as in the original
        ims = 20.0 * np.log10(np.abs(sshow) / 10e-6)  # amplitude to decibel
    timebins, freqbins = np.shape(ims)

    fig = plt.figure(figsize=FIGSIZE)
    try:
        plt.axis("off")
        plt.subplots_adjust(top=1, bottom=0, right=1, left=0)
        image = plt.imshow(
            np.transpose(ims), origin="lower", aspect="auto", cmap=COLORMAP, interpolation="none"
        )
        colorbar = plt.colorbar()
        plt.xlim((0, timebins - 1))
        plt.ylim((0, freqbins))

        fig.canvas.draw()
        width, height = fig.canvas.get_width_height()
        canvas = fig.canvas
        assert isinstance(canvas, FigureCanvasAgg)  # the Agg backend this module selects
        rgb = np.asarray(canvas.buffer_rgba()).reshape(height, width, 4)[:, :, :3]
        out = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(rgb)).save(out, format="PNG")

        box = fig.axes[0].get_window_extent()  # display pixels, origin at the bottom left
        plot_box = (round(box.x0), round(height - box.y1), round(box.x1), round(height - box.y0))
        vmin, vmax = image.get_clim()
        low, high = sorted((vmin, vmax))
        ticks = tuple(float(t) for t in colorbar.get_ticks() if low <= t <= high)
    finally:
        plt.close(fig)
    return OriginalPicture(out.getvalue(), plot_box, float(vmin), float(vmax), ticks, ims)


def stft(
    sig: np.ndarray,
    frameSize: int,  # noqa: N803 - the original's names
    overlapFac: float = 0.5,  # noqa: N803
    window=np.hanning,
) -> np.ndarray:
    """Short time Fourier transform of the signal, as the original wrote it."""
    win = window(frameSize)
    hopSize = int(frameSize - np.floor(overlapFac * frameSize))  # noqa: N806

    # zeros at beginning (thus center of 1st window should be for sample nr. 0)
    samples = np.append(np.zeros(int(np.floor(frameSize / 2.0))), sig)
    # cols for windowing
    cols = np.ceil((len(samples) - frameSize) / float(hopSize)) + 1
    # zeros at end (thus samples can be fully covered by frames)
    samples = np.append(samples, np.zeros(frameSize))

    frames = stride_tricks.as_strided(
        samples,
        shape=(int(cols), frameSize),
        strides=(samples.strides[0] * hopSize, samples.strides[0]),
    ).copy()
    frames *= win

    return np.fft.rfft(frames)


def logscale_spec(
    spec: np.ndarray, sr: int = 44100, factor: float = 20.0
) -> tuple[np.ndarray, list[float]]:
    """Regroup the bins on a power scale; factor 1.0 keeps one band per bin."""
    timebins, freqbins = np.shape(spec)

    scale = np.linspace(0, 1, freqbins) ** factor
    scale *= (freqbins - 1) / max(scale)
    scale = np.unique(np.round(scale))

    # create spectrogram with new freq bins
    newspec = np.zeros([timebins, len(scale)], dtype=np.complex128)
    for i in range(len(scale)):
        if i == len(scale) - 1:
            newspec[:, i] = np.sum(spec[:, int(scale[i]) :], axis=1)
        else:
            newspec[:, i] = np.sum(spec[:, int(scale[i]) : int(scale[i + 1])], axis=1)

    # list center freq of bins
    allfreqs = np.abs(np.fft.fftfreq(freqbins * 2, 1.0 / sr)[: freqbins + 1])
    freqs = []
    for i in range(len(scale)):
        if i == len(scale) - 1:
            freqs += [np.mean(allfreqs[int(scale[i]) :])]
        else:
            freqs += [np.mean(allfreqs[int(scale[i]) : int(scale[i + 1])])]

    return newspec, freqs
