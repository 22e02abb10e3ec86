"""The goals of issue 16 as one table: each figure, its target, what this run measured.

Sections add a row as they measure; ``make bench`` prints the table at the end of
its report, and ``make bench-peers`` prints its own with MLServer's figures beside.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.report import Table
from bench.spread import Spread


@dataclass
class Goals:
    """Rows of (figure, target, measured spread, whether the median meets the target)."""

    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(
        self, figure: str, target: str, measured: Spread, met: bool | None, text: str = ""
    ) -> None:
        """``met`` None: no verdict (a figure kept for reference)."""
        verdict = "" if met is None else ("yes" if met else "no")
        self.rows.append((figure, target, text or measured.ratio(), verdict))

    def render(self, title: str = "Goals of issue 16 (median over repetitions, min-max)") -> str:
        table = Table(title, ["figure", "target", "measured", "met"])
        for row in self.rows:
            table.add(*row)
        return table.render()
