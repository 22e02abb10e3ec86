"""``make bench``: start the service, measure every path against its baseline, save the table.

Every figure that matters is a ratio against a baseline measured in the same run
(these machines are shared and noisy), quoted as its median over several
repetitions with their range. The tables, then the goals of issue 16 this run
could measure, go to standard output and, with a line describing the machine, to
a new file under bench/results/. MLServer's figures come from ``make bench-peers``
(python -m bench.peers), which this does not need.

    python -m bench [--quick] [--only SECTION ...]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

from bench.report import load_line, machine_line
from server.testing import ROOT, start_service


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SECTION",
        help="run only this section (repeatable): gateway, streaming, ssd, send-wav, "
        "ssd-video, oip, http, v2",
    )
    args = parser.parse_args()

    from bench import sections
    from bench.goals import Goals

    known = [name for name, _ in sections.ALL]
    unknown = [name for name in args.only if name not in known]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    goals = Goals()

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
                    text = run(service, args.quick, goals)
                except Exception as exc:  # noqa: BLE001 - one broken section must not hide the rest
                    text = f"### {name}\n\nfailed: {type(exc).__name__}: {exc}\n"
                text += f"\n({name}: {time.monotonic() - started:.0f} s)\n"
                print(text, flush=True)
                report.append(text)
        finally:
            service.stop()
    if goals.rows:
        text = goals.render()
        print(text, flush=True)
        report.append(text)
    report.append(f"At the end: {load_line()}\n")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    stamp = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H-%M-%S}"
    suffix = ("-quick" if args.quick else "") + "".join(f"-{name}" for name in args.only)
    path = results / f"{stamp}{suffix}.md"
    path.write_text("\n".join(report))
    print(f"saved {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
