"""The benchmark commands that docs/performance.md shows still start: ``python -m bench``
and ``python -m bench.peers`` parse their command lines and refuse an unknown section,
without starting a service (the benchmarks themselves take minutes; they are not run here).

They run as the docs show them, as commands from the checkout; bench/ is never imported.
"""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT

SECTIONS = ["gateway", "streaming", "ssd", "send-wav", "ssd-video", "oip", "http", "v2"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_bench_help_names_every_section() -> None:
    done = run("bench", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m bench")
    for option in ("--quick", "--only SECTION"):
        assert option in done.stdout
    squeezed = "".join(done.stdout.split())  # the help wraps lines, at hyphens too
    assert ",".join(SECTIONS) in squeezed


def test_bench_refuses_an_unknown_section_before_starting_anything() -> None:
    done = run("bench", "--only", "ssd", "--only", "nonsense")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "python -m bench: error: unknown section(s) nonsense: choose from " + ", ".join(SECTIONS)
    )
    assert done.stdout == ""


def test_bench_peers_help_names_its_options() -> None:
    done = run("bench.peers", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m bench.peers")
    for option in ("--rounds ROUNDS", "--mlserver W,I,T", "--quick"):
        assert option in done.stdout
