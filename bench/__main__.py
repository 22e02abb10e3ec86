"""``make bench``: start the service, measure every path against its baseline, save the table.

Every figure that matters is a ratio against a baseline measured in the same run
(these machines are shared and noisy). The table goes to standard output and, with
a line describing the machine, to a new file under bench/results/.

    python -m bench [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

from bench.report import machine_line
from server.testing import ROOT, start_service


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--only", action="append", default=[], help="run only these sections")
    args = parser.parse_args()

    from bench import sections

    report = ["# dcf benchmark\n", f"Machine: {machine_line()}\n"]
    print(report[0] + "\n" + report[1], flush=True)
    with tempfile.TemporaryDirectory(prefix="dcf-bench-") as tmp:
        service = start_service(Path(tmp), args=["--log-level", "WARNING"])
        try:
            for name, run in sections.ALL:
                if args.only and name not in args.only:
                    continue
                started = time.monotonic()
                try:
                    text = run(service, args.quick)
                except Exception as exc:  # noqa: BLE001 - one broken section must not hide the rest
                    text = f"### {name}\n\nfailed: {type(exc).__name__}: {exc}\n"
                text += f"\n({name}: {time.monotonic() - started:.0f} s)\n"
                print(text, flush=True)
                report.append(text)
        finally:
            service.stop()
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    stamp = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H-%M-%S}"
    path = results / f"{stamp}{'-quick' if args.quick else ''}.md"
    path.write_text("\n".join(report))
    print(f"saved {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
