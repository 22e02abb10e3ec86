"""The goals table of ``make bench-peers``: each goal of issue 16, dcf beside every peer.

A figure is a spread over rounds (median, min-max). Where a block has its own
baseline (ssd against the bare script measured beside it), the figure is the ratio
to it, which cancels most of a shared machine's drift between blocks. dcf is judged
against the best MLServer configuration of each round, figure by figure ("dcf /
best MLServer", paired by round); Triton's columns are for reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.report import Table
from bench.spread import Spread, ratios

Blocks = list[dict[str, float]]
Metric = Callable[[dict[str, float]], float]


@dataclass(frozen=True)
class Figure:
    """One goal: how to read it from a block, which way is better, how to show it."""

    label: str
    target: str
    metric: Metric
    lower_is_better: bool
    digits: int | None = None  # None: chosen from the size
    ratio: bool = False  # shown as 1.23x
    # Whether dcf meets the target, from its own spread and its ratio to the best
    # MLServer of each round (None when no MLServer ran); None: a figure shown only.
    meets: Callable[[Spread, Spread | None], bool] | None = None


def _within(versus_best: Spread | None, bound: float) -> bool:
    return versus_best is not None and versus_best.median <= bound


def _at_least(versus_best: Spread | None, bound: float) -> bool:
    return versus_best is not None and versus_best.median >= bound


def _verdict(figure: Figure, dcf: Spread, versus_best: Spread | None) -> str:
    if figure.meets is None:
        return ""
    return "yes" if figure.meets(dcf, versus_best) else "no"


def _per_round(blocks: Blocks, metric: Metric) -> list[float]:
    return [metric(figures) for figures in blocks]


def _best_per_round(peers: list[Blocks], figure: Figure) -> list[float]:
    choose = min if figure.lower_is_better else max
    rounds = min(len(blocks) for blocks in peers)
    return [choose(figure.metric(blocks[r]) for blocks in peers) for r in range(rounds)]


def _show(spread: Spread, figure: Figure) -> str:
    return spread.ratio(figure.digits or 2) if figure.ratio else spread.text(figure.digits)


FIGURES = [
    Figure(
        "ssd p50 at concurrency 1, vs the bare script (all cores) in the same block",
        "<= 1.10x, and <= MLServer's",
        lambda f: f["ssd_p50_ms"] / f["bare_p50_ms"],
        lower_is_better=True,
        ratio=True,
        meets=lambda dcf, best: dcf.median <= 1.1 and _within(best, 1.0),
    ),
    Figure(
        "ssd images/s at concurrency 8, vs the bare script's sequential rate in the same block",
        ">= 1.00x, and >= MLServer's",
        lambda f: f["ssd_rate_c8"] / f["bare_rate"],
        lower_is_better=False,
        ratio=True,
        meets=lambda dcf, best: dcf.median >= 1.0 and _at_least(best, 1.0),
    ),
    Figure(
        "ssd images/s at concurrency 8",
        "(the same, unnormalised)",
        lambda f: f["ssd_rate_c8"],
        lower_is_better=False,
        digits=1,
    ),
    Figure(
        "1 KiB echo p50 ms at concurrency 1",
        "<= 0.8x MLServer's",
        lambda f: f["echo_p50_ms"],
        lower_is_better=True,
        meets=lambda dcf, best: _within(best, 0.8),
    ),
    Figure(
        "1 KiB echo calls/s at concurrency 8",
        ">= 1.25x MLServer's",
        lambda f: f["echo_rate_c8"],
        lower_is_better=False,
        digits=0,
        meets=lambda dcf, best: _at_least(best, 1.25),
    ),
]


def goals_table(results: dict[str, Blocks], families: dict[str, str], big_echo: int) -> str:
    dcf = next(blocks for name, blocks in results.items() if families[name] == "dcf")
    peers = {name: blocks for name, blocks in results.items() if families[name] != "dcf"}
    mlservers = [blocks for name, blocks in peers.items() if families[name] == "MLServer"]
    table = Table(
        "Goals of issue 16: dcf beside its peers (median over rounds, min-max)",
        ["figure", "target", "dcf", *peers, "dcf / best MLServer, paired by round", "met"],
    )
    for figure in FIGURES:
        mine = Spread.of(_per_round(dcf, figure.metric))
        versus = ratios(mine.values, _best_per_round(mlservers, figure)) if mlservers else None
        table.add(
            figure.label,
            figure.target,
            _show(mine, figure),
            *(_show(Spread.of(_per_round(b, figure.metric)), figure) for b in peers.values()),
            versus.ratio() if versus else "-",
            _verdict(figure, mine, versus),
        )

    def values(blocks: Blocks, key: str) -> Spread:
        return Spread.of(figures[key] for figures in blocks)

    through = ratios([f["big_mb_s"] for f in dcf], [f["worker_mb_s"] for f in dcf])
    best_peer_rate = (
        ratios(
            [f["big_mb_s"] for f in dcf],
            _best_per_round(mlservers, Figure("", "", lambda f: f["big_mb_s"], False)),
        ).ratio()
        if mlservers
        else "-"
    )
    table.add(
        f"{big_echo >> 20} MiB echo MB/s (dcf: a streamed Call through the gateway, then "
        "straight to the worker; peers: one ModelInfer), and the peak growth of the "
        "resident memory of all the server's processes",
        ">= 0.8x straight to the worker, memory flat",
        f"{values(dcf, 'big_mb_s').text(0)} = {through.ratio()} of "
        f"{values(dcf, 'worker_mb_s').text(0)}; +{values(dcf, 'big_rss_growth_mb').text(0)} MB",
        *(
            f"{values(blocks, 'big_mb_s').text(0)}; "
            f"+{values(blocks, 'big_rss_growth_mb').text(0)} MB"
            for blocks in peers.values()
        ),
        best_peer_rate,
        "yes" if through.median >= 0.8 else "no",
    )
    send_wav = values(dcf, "send_wav_ratio")
    table.add(
        "send-wav served, 10 s of 44.1 kHz, vs the original procedure",
        "<= 0.10x",
        send_wav.ratio(3),
        *("-" for _ in peers),
        "-",
        "yes" if send_wav.median <= 0.1 else "no",
    )
    video = values(dcf, "ssd_video_ratio")
    table.add(
        "ssd-video, first 10 frames end to end, vs the bare loop (all cores)",
        "<= 1.00x",
        video.ratio(),
        *("-" for _ in peers),
        "-",
        "yes" if video.median <= 1.0 else "no",
    )
    return table.render()
