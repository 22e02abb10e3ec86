"""The benchmark commands that docs/performance.md shows still start: ``python -m bench``
and ``python -m bench.peers`` parse their command lines and refuse an unknown section,
without starting a service (the benchmarks themselves take minutes; they are not run here).

They run as the docs show them, as commands from the checkout; bench/ is never imported
here. The scripts of bench/ that their docstrings run as files get their module code run
as a file's would be, from outside the checkout.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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


SCRIPTS = ["bench_http.py", "bench_oip.py", "bench_send_wav.py", "bench_ssd_video.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bench_script_imports_when_run_as_its_docstring_says(script: str, tmp_path: Path) -> None:
    """Each script's docstring runs it as ``.venv/bin/python bench/<script>``: its
    module code (the imports) must run so, from outside any package. run_path with a
    name other than __main__ runs that code without starting the measurement."""
    path = ROOT / "bench" / script
    assert f"python bench/{script}" in path.read_text()
    code = f"import runpy; runpy.run_path({str(path)!r}, run_name='as_script')"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
