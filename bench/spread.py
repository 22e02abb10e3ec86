"""A figure measured several times: its median and its range, never the best value alone.

Every table of ``make bench`` and ``make bench-peers`` quotes a figure as
``median (min-max)`` over the repetitions of one run. A ratio is taken inside each
repetition (the path and its baseline measured back to back, so both met the same
noise) and the ratios are then summarised, which is steadier on a shared machine
than the ratio of two medians taken minutes apart.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """The values of one figure, one per repetition."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        kept = tuple(values)
        if not kept:
            raise ValueError("a spread needs at least one value")
        return cls(kept)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def text(self, digits: int | None = None, suffix: str = "") -> str:
        """``median (low-high)``; digits chosen from the size unless given."""

        def show(value: float) -> str:
            places = digits if digits is not None else (0 if abs(value) >= 100 else 2)
            return f"{value:.{places}f}{suffix}"

        if len(self.values) == 1:
            return show(self.median)
        return f"{show(self.median)} ({show(self.low)}-{show(self.high)})"

    def ratio(self, digits: int = 2) -> str:
        """The spread of a ratio, as ``1.12x (1.08x-1.19x)``."""
        return self.text(digits, "x")


def ratios(values: Sequence[float], baselines: Sequence[float]) -> Spread:
    """Each repetition's value over its own baseline."""
    if len(values) != len(baselines):
        raise ValueError(f"{len(values)} values against {len(baselines)} baselines")
    return Spread.of(v / b for v, b in zip(values, baselines, strict=True))


def block_ratios(values: Sequence[float], baselines: Sequence[float], blocks: int) -> Spread:
    """Ratios of medians over ``blocks`` contiguous blocks of two call-by-call series.

    For measurements taken call by call, alternately (index i of both ran back to
    back): each block's median over its baseline's median, one ratio a block.
    """
    if len(values) != len(baselines):
        raise ValueError(f"{len(values)} values against {len(baselines)} baselines")
    count = max(1, min(blocks, len(values)))
    size = len(values) // count
    return Spread.of(
        statistics.median(values[k * size : (k + 1) * size])
        / statistics.median(baselines[k * size : (k + 1) * size])
        for k in range(count)
    )
