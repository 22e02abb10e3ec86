"""The benchmark's report: Markdown tables and a line describing the machine."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import grpc

from server.testing import ROOT


class Table:
    """A Markdown table built row by row."""

    def __init__(self, title: str, columns: list[str]) -> None:
        self.title, self.columns = title, columns
        self.rows: list[list[str]] = []

    def add(self, *cells: object) -> None:
        self.rows.append([_cell(c) for c in cells])

    def render(self) -> str:
        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join(" --- " for _ in self.columns) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return str(value)


def machine_line() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown cpu",
    )
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if changed:  # what ran is the working tree, not the commit alone
        commit += f" with {len(changed.splitlines())} files changed"
    return (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, commit {commit}, "
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"grpcio {grpc.__version__}, {platform.machine()}; {load_line()}"
    )


def load_line() -> str:
    """The machine's load average (1, 5, 15 min): how busy the shared cores were."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} {five:.1f} {fifteen:.1f}"
