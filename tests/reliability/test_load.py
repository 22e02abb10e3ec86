"""Load: 16 concurrent clients, every function at once, for about 30 seconds.

Each client is a thread with its own channel, cycling through a mix of calls:
small hello-dcf echoes (Invoke), 1 MiB echoes (Call, in 64 KiB chunks), ssd on
the photograph (Invoke), send-wav on a few seconds of audio (Call) and ssd-video
on a short clip (Call, results streamed). Every call must succeed and answer
exactly what the same call answered alone before the load (the functions are
deterministic), so a mixed-up or truncated answer is caught, not only an error.

Every client calls every function, so ssd-video (4 at once) and send-wav (8) get
more callers than they have slots: the rest wait in their function's queue, which
holds them all, so any error at all is a bug here, RESOURCE_EXHAUSTED included.

Memory: the RSS of the gateway and of every worker is sampled twice a second;
the first half of the run is the warm-up, and over the second half no process
may grow by more than GROWTH_LIMIT. Memory that climbed with the number of
calls (a leaked buffer per call, a task per call) would show there.
DCF_LOAD_SECONDS sets the run's length (default 30).
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protos.dcf.v1 import dcf_pb2_grpc
from tests.support import Service, media, metric
from tests.support.reliability import (
    MB,
    Outcome,
    call,
    health,
    invoke,
    log_since,
    log_size,
    pieces,
    rss,
    worker_pids,
    worker_starts,
)

CLIENTS = 16
DURATION = float(os.environ.get("DCF_LOAD_SECONDS", "30"))
TIMEOUT = 60.0
GROWTH_LIMIT = 50 * MB
SAMPLE_EVERY = 0.5
FUNCTIONS = ("hello-dcf", "ssd", "send-wav", "ssd-video")


@dataclass
class Kind:
    """One kind of call in the mix: how to make it, and the answer it must give."""

    name: str
    function: str
    run: Callable[[dcf_pb2_grpc.GatewayStub, int], Outcome]
    expected: Callable[[int], Any] | None  # the decoded answers: bytes, JSON documents
    answer: Callable[[Outcome], Any]


def kinds() -> dict[str, Kind]:
    """The mix; the model-backed kinds expect what a lone call answers (``learn_references``)."""
    megabyte = os.urandom(1 << 20)
    audio = media.chirp_wav(3.0, 16000)
    clip = media.video(6, (320, 240))
    return {
        "echo-small": Kind(
            "echo-small",
            "hello-dcf",
            lambda stub, n: invoke(stub, "hello-dcf", b"hello %d" % n, timeout=TIMEOUT),
            lambda n: b"hello %d" % n,
            lambda o: o.body,
        ),
        "echo-1MiB": Kind(
            "echo-1MiB",
            "hello-dcf",
            lambda stub, n: call(stub, "hello-dcf", pieces(megabyte, 64 << 10), timeout=TIMEOUT),
            lambda n: megabyte,
            lambda o: o.body,
        ),
        "ssd": Kind(
            "ssd",
            "ssd",
            lambda stub, n: invoke(stub, "ssd", media.photo(), timeout=TIMEOUT),
            None,
            lambda o: json.loads(o.body),
        ),
        "send-wav": Kind(
            "send-wav",
            "send-wav",
            lambda stub, n: call(stub, "send-wav", pieces(audio, 64 << 10), timeout=TIMEOUT),
            None,
            lambda o: (o.content_type, o.body),
        ),
        "ssd-video": Kind(
            "ssd-video",
            "ssd-video",
            lambda stub, n: call(stub, "ssd-video", pieces(clip, 64 << 10), timeout=TIMEOUT),
            None,
            lambda o: [json.loads(r) for r in o.results],
        ),
    }


def learn_references(stub: dcf_pb2_grpc.GatewayStub, table: dict[str, Kind]) -> None:
    """What each model-backed kind answers to a lone call, before any load."""
    for name, kind in table.items():
        if kind.expected is None:
            alone = kind.run(stub, 0)
            assert alone.code == "OK", f"{name} alone: {alone}"
            answer = kind.answer(alone)
            kind.expected = _always(answer)


def _always(answer: object) -> Callable[[int], object]:
    """The expectation of a model-backed kind: what the lone call answered, whatever ``n``."""
    return lambda _n: answer


def mix(client: int, available: dict[str, Kind]) -> list[Kind]:
    """The calls client ``client`` cycles through: every kind, each client from its own start."""
    chosen = list(available.values())
    shift = client % len(chosen)
    return chosen[shift:] + chosen[:shift]


@dataclass
class Samples:
    times: list[float] = field(default_factory=list)
    rss: dict[str, list[int]] = field(default_factory=dict)


def sample_memory(pids: dict[str, int], stop: threading.Event, out: Samples) -> None:
    started = time.monotonic()
    while not stop.is_set():
        out.times.append(time.monotonic() - started)
        for name, pid in pids.items():
            out.rss.setdefault(name, []).append(rss(pid))
        stop.wait(SAMPLE_EVERY)


def growth(values: list[int], times: list[float], duration: float) -> int:
    """How much the second half grew: the median of the last fifth of the run minus the
    median around the middle (40-60%), so one short spike decides nothing."""
    middle = [
        v for v, t in zip(values, times, strict=False) if 0.4 * duration <= t <= 0.6 * duration
    ]
    end = [v for v, t in zip(values, times, strict=False) if t >= 0.8 * duration]
    return int(statistics.median(end) - statistics.median(middle))


def test_sixteen_clients_mixed_functions_no_errors_bounded_memory(dcf: Service):
    served = set(FUNCTIONS)
    assert served <= set(dcf.document["functions"]), dcf.document["functions"]
    table = kinds()
    with dcf.channel() as channel:
        learn_references(dcf.gateway(channel), table)
        ssd = table["ssd"].expected(0)
        assert any(d["label"] == "person" for d in ssd["detections"]), ssd

    pids = {"gateway": dcf.process.pid}
    workers = worker_pids(dcf)
    pids.update({name: workers[name] for name in served})
    starts, offset = worker_starts(dcf), log_size(dcf)

    outcomes: Counter[tuple[str, str]] = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    deadline = time.monotonic() + DURATION

    def client(index: int) -> None:
        plan = mix(index, table)
        with dcf.channel() as own:
            stub = dcf.gateway(own)
            n = 0
            while time.monotonic() < deadline:
                kind = plan[n % len(plan)]
                n += 1
                outcome = kind.run(stub, n)
                problem = None
                if outcome.code != "OK":
                    problem = f"client {index} {kind.name}: {outcome}"
                else:
                    try:
                        if kind.answer(outcome) != kind.expected(n):
                            problem = f"client {index} {kind.name}: a different answer than alone"
                    except Exception as exc:  # noqa: BLE001 - a malformed answer is a finding
                        problem = f"client {index} {kind.name}: malformed answer: {exc!r}"
                with lock:
                    outcomes[kind.name, outcome.code] += 1
                    if problem:
                        failures.append(problem)

    samples = Samples()
    sampler = threading.Thread(target=sample_memory, args=(pids, stop, samples), daemon=True)
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    started = time.monotonic()
    sampler.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DURATION + 2 * TIMEOUT)
    elapsed = time.monotonic() - started
    stop.set()
    sampler.join(10)

    assert not any(t.is_alive() for t in threads), "a client hung"
    summary = ", ".join(
        f"{name} {code}: {count}" for (name, code), count in sorted(outcomes.items())
    )
    assert not failures, f"{len(failures)} failed calls ({summary}):\n" + "\n".join(failures[:20])
    for name in table:
        assert outcomes[name, "OK"] >= 3, f"{name} hardly ran under load: {summary}"

    report = {
        name: (max(values) // MB, growth(values, samples.times, elapsed) / MB)
        for name, values in samples.rss.items()
    }
    print(
        f"\nload: {sum(outcomes.values())} calls in {elapsed:.1f} s ({summary}); "
        "peak RSS MB / second-half growth MB: "
        + ", ".join(f"{n} {peak}/{grew:+.1f}" for n, (peak, grew) in report.items())
    )
    grown = {n: grew for n, (_, grew) in report.items() if grew * MB > GROWTH_LIMIT}
    assert not grown, f"memory climbed over the second half (MB): {grown}; all: {report}"

    # Afterwards: nothing in flight, every function serving, no worker restarted, no traceback.
    text = dcf.metrics_text()
    busy = {f: metric(text, "dcf_calls_in_flight", function=f) for f in served}
    assert not any(busy.values()), busy
    waited = {f: metric(text, "dcf_queue_wait_seconds_sum", function=f) for f in served}
    print("seconds waited in queues: " + ", ".join(f"{f} {w:.1f}" for f, w in waited.items()))
    assert set(health(dcf, served).values()) == {"SERVING"}
    assert worker_starts(dcf) == starts, "a worker died under load"
    assert "Traceback" not in log_since(dcf, offset)
