"""``make bench-peers``: dcf against MLServer on every goal of issue 16, in one run.

Rounds of blocks: in each round every server is started in turn (one up at a time,
the order rotating from round to round), measured with the same client code, and
stopped (bench/peers/block.py). Ratios are taken inside a block (a server against
the bare script measured beside it) or inside a round (dcf against a peer); a
figure's spread is over the rounds. The report (goals, then every block's figures)
goes to standard output and to bench/results/<UTC time>-peers.md.

    python -m bench.peers [--rounds N] [--mlserver W,I,T ...] [--triton I,T ...] [--quick]

MLServer runs from build/peers-venv, which ``make bench-peers`` installs; Triton
(PyTriton) from build/pytriton-venv, which ``make bench-peers TRITON=1`` installs.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time

from bench.peers.goals import goals_table
from bench.report import Table, load_line, machine_line
from server.testing import ROOT

# MLServer's best configurations on the 2-core target, chosen by measuring (see
# docs/performance.md), as WORKERS,INTERPRETERS,THREADS: in the server's process
# (parallel_workers 0), one interpreter on both cores for latency, two one-thread
# interpreters for throughput. The goals compare dcf with the better of the two.
BEST_MLSERVER = ["0,1,2", "0,2,1"]


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of blocks (default 3)")
    parser.add_argument(
        "--mlserver",
        action="append",
        default=[],
        metavar="W,I,T",
        help="an MLServer configuration to measure: parallel_workers, ssd interpreters per "
        f"process, threads per interpreter (repeatable; default {' and '.join(BEST_MLSERVER)})",
    )
    parser.add_argument(
        "--triton",
        action="append",
        default=[],
        metavar="I,T",
        help="also Triton through PyTriton: ssd instances, threads per interpreter (repeatable)",
    )
    parser.add_argument("--quick", action="store_true", help="small blocks, one round: a smoke run")
    args = parser.parse_args()

    from bench.bare import PlainSsd, all_cores
    from bench.bench_send_wav import make_signal
    from bench.bench_ssd_video import make_clip
    from bench.peers import block, mlserver, targets, triton
    from bench.sections import photo

    if not mlserver.installed():
        parser.error(f"MLServer is not installed in {mlserver.VENV}: run `make bench-peers`")
    if args.triton and not triton.installed():
        parser.error(f"PyTriton is not installed in {triton.VENV}: run `make bench-peers TRITON=1`")
    configs = [mlserver.MLServerConfig.parse(text) for text in args.mlserver or BEST_MLSERVER]
    setups = [triton.TritonSetup.parse(text) for text in args.triton]
    servers = [
        targets.dcf(),
        *(targets.mlserver_target(config) for config in configs),
        *(targets.triton_target(setup) for setup in setups),
    ]
    rounds = 1 if args.quick else args.rounds
    sizes = block.Sizes.for_run(args.quick)
    bare = PlainSsd(all_cores())
    image = photo()
    inputs = block.Inputs(image, bare.answer(image), make_signal(10.0), make_clip())

    described = [f"`{server.name}`: {server.description}" for server in servers[1:]]
    header = [
        "# dcf beside its peers\n",
        f"Machine: {machine_line()}\n",
        f"Bare script: one interpreter of {bare.threads} threads, in the measuring process.\n",
        "Peers: " + "; ".join(described) + ".\n",
    ]
    print("\n".join(header), flush=True)
    results: dict[str, list[dict[str, float]]] = {server.name: [] for server in servers}
    for index in range(rounds):
        order = servers[index % len(servers) :] + servers[: index % len(servers)]
        for server in order:
            started = time.monotonic()
            figures = block.measure(server, inputs, bare, sizes)
            results[server.name].append(figures)
            shown = ", ".join(f"{k} {v:.3g}" for k, v in figures.items())
            print(f"round {index + 1} {server.name} ({time.monotonic() - started:.0f} s): {shown}")

    families = {server.name: server.family for server in servers}
    body = [
        goals_table(results, families, sizes.big_echo),
        blocks_table(results),
        f"At the end: {load_line()}\n",
    ]
    print("\n" + "\n".join(body))
    folder = ROOT / "bench" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H-%M-%S}"
    path = folder / f"{stamp}-peers{'-quick' if args.quick else ''}.md"
    path.write_text("\n".join(header + body))
    print(f"saved {path.relative_to(ROOT)}")
    return 0


COLUMNS = {
    "ssd_p50_ms": "ssd p50 ms",
    "bare_p50_ms": "bare p50 ms",
    "ssd_rate_c8": "ssd images/s c8",
    "bare_rate": "bare images/s",
    "echo_p50_ms": "echo p50 ms",
    "echo_rate_c8": "echo calls/s c8",
    "big_mb_s": "big echo MB/s",
    "big_rss_growth_mb": "RSS growth MB",
    "worker_mb_s": "straight to worker MB/s",
    "send_wav_ratio": "send-wav / original",
    "ssd_video_ratio": "ssd-video / bare",
}


def blocks_table(results: dict[str, list[dict[str, float]]]) -> str:
    """Every block's figures, round by round: what the goals table summarises."""
    table = Table("Every block", ["round", "server", *COLUMNS.values()])
    for name, blocks in results.items():
        for index, figures in enumerate(blocks, 1):
            table.add(index, name, *(figures.get(key, "-") for key in COLUMNS))
    return table.render()


if __name__ == "__main__":
    sys.exit(main())
