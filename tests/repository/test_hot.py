"""Function folders added, changed and removed while dcf serves and calls flow.

A real ``python -m server --functions DIR``; callers on threads stream calls slowly
(a chunk every 30 ms), so that calls are under way whenever a folder changes. Each
caller's outcomes are kept in order: a change must fail no call, and once a caller
has an answer from the new version it never gets one from the old.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from server.repository.scaffold import scaffold
from tests.support import call_requests, collect_call, metric

CALL_TIMEOUT = 120  # seconds a call may take

CHUNKS = [b"Hello, ", b"dcf, ", b"while ", b"it changes"]
WHOLE = b"".join(CHUNKS)
PATIENCE = 120.0  # seconds to wait for an event: generous, on a shared two-core machine


class Callers:
    """Threads calling ``name`` one call after another until the block ends."""

    def __init__(self, served: Any, name: str, count: int = 3, pause: float = 0.03) -> None:
        self.outcomes: list[list[tuple[str, bytes]]] = [[] for _ in range(count)]
        self._served, self._name, self._pause = served, name, pause
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(count)]

    def __enter__(self) -> Callers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CALL_TIMEOUT)

    def _chunks(self) -> Iterator[bytes]:
        for chunk in CHUNKS:
            time.sleep(self._pause)
            yield chunk

    def _run(self, index: int) -> None:
        stub = self._served.service.gateway(self._served.channel)
        while not self._stop.is_set():
            try:
                answer = stub.Call(call_requests(self._name, self._chunks()), timeout=CALL_TIMEOUT)
                outcome = ("OK", collect_call(answer)[1])
            except grpc.RpcError as exc:
                outcome = (exc.code().name, (exc.details() or "").encode())
            self.outcomes[index].append(outcome)

    def wait(self, condition: Callable[[list[list[tuple[str, bytes]]]], bool], what: str) -> None:
        deadline = time.monotonic() + PATIENCE
        while not condition([list(o) for o in self.outcomes]):
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.outcomes}"
            time.sleep(0.02)

    def wait_each(self, outcome: tuple[str, bytes], times: int) -> None:
        self.wait(
            lambda seen: all(o.count(outcome) >= times for o in seen),
            f"every caller to get {outcome} {times} times",
        )


def worker_pids(served: Any, name: str) -> list[int]:
    """The process ids of the workers ``name`` has had, in the order they started."""
    pattern = rf"worker {re.escape(name)} started \(pid (\d+),"
    return [int(pid) for pid in re.findall(pattern, served.log())]


def gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def in_order(outcomes: list[tuple[str, bytes]], *answers: bytes) -> bool:
    """Whether ``outcomes`` are OK answers, each of ``answers`` in turn, never going back."""
    kinds = [answers.index(body) for code, body in outcomes if code == "OK" and body in answers]
    return len(kinds) == len(outcomes) and kinds == sorted(kinds)


def test_a_changed_function_yaml_or_handler_fails_no_call(serve, tmp_path: Path):
    fns = tmp_path / "fns"
    folder = scaffold("shout", fns)
    served = serve(fns)
    assert served.call("shout", WHOLE)[1] == WHOLE.upper()
    v2, v3 = WHOLE.lower(), WHOLE.lower() + b"[v3]"

    # One call straddles the change: begun on the old version, ended after the new one
    # serves. It must end on the old version, as it began.
    release = threading.Event()

    def straddling() -> Iterator[bytes]:
        yield CHUNKS[0]
        release.wait(PATIENCE)
        yield from CHUNKS[1:]

    stub = served.service.gateway(served.channel)
    straddler: list[tuple[str, bytes, list[bytes]]] = []
    thread = threading.Thread(
        target=lambda: straddler.append(
            collect_call(stub.Call(call_requests("shout", straddling()), timeout=CALL_TIMEOUT))
        )
    )
    thread.start()
    wait_until(
        lambda: metric(served.service.metrics_text(), "dcf_calls_in_flight", function="shout") > 0,
        "the straddling call to be under way",
    )

    with Callers(served, "shout") as callers:
        callers.wait_each(("OK", WHOLE.upper()), 2)
        spec = folder / "function.yaml"
        spec.write_text(spec.read_text().replace("default: upper", "default: lower"))
        callers.wait_each(("OK", v2), 3)
        release.set()
        thread.join(CALL_TIMEOUT)
        assert straddler == [("text/plain", WHOLE.upper(), [])]
        handler = folder / "handler.py"
        text = handler.read_text()
        edited = text.replace(
            'Reply("text/plain", changed())', 'Reply("text/plain", [*changed(), b"[v3]"])'
        )
        assert edited != text
        handler.write_text(edited)
        callers.wait_each(("OK", v3), 3)

    for outcomes in callers.outcomes:
        assert in_order(outcomes, WHOLE.upper(), v2, v3), outcomes
    # One gateway throughout; each version had a worker, and the old ones have exited.
    assert served.service.process.poll() is None
    assert served.log().count("dcf gateway serving on") == 1
    first, second, third = worker_pids(served, "shout")
    wait_until(lambda: gone(first) and gone(second), "the old versions' workers to exit")
    assert not gone(third)


def test_a_removed_folder_drains_then_is_not_found(serve, tmp_path: Path):
    fns = tmp_path / "fns"
    folder = scaffold("brief", fns)
    served = serve(fns)
    (pid,) = worker_pids(served, "brief")
    with Callers(served, "brief") as callers:
        callers.wait_each(("OK", WHOLE.upper()), 2)
        shutil.rmtree(folder)
        callers.wait(
            lambda seen: all(o and o[-1][0] == "NOT_FOUND" for o in seen), "NOT_FOUND for all"
        )
    for outcomes in callers.outcomes:
        codes = [code for code, _ in outcomes]
        first_missing = codes.index("NOT_FOUND")
        assert set(codes[:first_missing]) == {"OK"} and set(codes[first_missing:]) == {
            "NOT_FOUND"
        }, codes
        assert {body for code, body in outcomes if code == "OK"} == {WHOLE.upper()}
        assert b"no function named 'brief' (known: hello-dcf)" in outcomes[-1][1]
    assert served.names() == ["hello-dcf"]
    wait_until(lambda: gone(pid), "the removed function's worker to exit")
    assert served.call("hello-dcf", b"still here")[1] == b"still here"


def test_a_new_folder_is_served_once_ready_with_no_restart(serve, tmp_path: Path):
    fns = tmp_path / "fns"
    fns.mkdir()
    served = serve(fns)
    assert served.names() == ["hello-dcf"]
    gateway = served.pid
    with Callers(served, "late", count=1, pause=0) as caller:
        caller.wait(lambda seen: len(seen[0]) >= 2, "calls before the folder exists")
        scaffold("late", fns)
        caller.wait_each(("OK", WHOLE.upper()), 2)
    codes = [code for code, _ in caller.outcomes[0]]
    first_ok = codes.index("OK")
    # Unknown until it is served, then served: never UNAVAILABLE while its worker starts.
    assert set(codes[:first_ok]) == {"NOT_FOUND"} and set(codes[first_ok:]) == {"OK"}, codes
    assert served.names() == ["hello-dcf", "late"]
    assert served.pid == gateway and served.service.process.poll() is None
    assert served.log().count("dcf gateway serving on") == 1
    stub = served.service.gateway(served.channel)
    answer = stub.Call(call_requests("late", [b"Hi"], {"case": "lower"}), timeout=CALL_TIMEOUT)
    assert collect_call(answer)[1] == b"hi"
    assert os.path.isdir(fns / "late")
