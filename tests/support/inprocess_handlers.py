"""Small handlers for the in-process tests: each one a behaviour the host must carry.

``echo`` answers its input as it arrives, ``raises`` fails the way its ``error``
param says, ``blocking`` holds its answer until the test releases it, ``parts``
answers many partial results. None needs a model or media, so the fast tests
import nothing heavy.

They are real handler modules, loaded through the registry (``handler:
tests.support.inprocess_handlers``, ``options: {behaviour: ...}``). In process the options
may also carry a ``Probe``, through which a test sees where the handler thread is
and lets a blocked one go; a handler made without one gets its own.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from handlers.base import Function, Param, Reply, Request, declare
from handlers.errors import InvalidInput, TooLarge

# The longest a blocked handler waits for its release: a test that forgets to release
# it fails instead of hanging its worker's thread for ever.
BLOCK_SECONDS = 60.0
# What the "bug" a handler raises says: it must reach the server log, never a caller.
BUG_TEXT = "a bug in the handler: this text must stay in the server log"


class Probe:
    """What the handler threads of one function did, counted as they do it.

    ``started`` counts the parts generators that began, ``yielded`` the parts they
    gave, ``finished`` the generators whose ``finally`` ran (ended, failed, or closed
    by the host). ``release`` lets every blocked handler go, now and later.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.started = 0
        self.yielded = 0
        self.finished = 0

    def count(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    def release(self) -> None:
        self._released.set()

    def wait(self) -> None:
        if not self._released.wait(BLOCK_SECONDS):
            raise TimeoutError(f"a blocked handler was not released within {BLOCK_SECONDS:g} s")


def _watched(parts: Iterable[bytes], probe: Probe) -> Iterator[bytes]:
    """``parts``, with the probe told each step, and told in ``finally`` however it ends."""
    probe.count("started")
    try:
        for part in parts:
            probe.count("yielded")
            yield part
    finally:
        probe.count("finished")


def echo(probe: Probe) -> Function:
    def handle(request: Request) -> Reply:
        return Reply("text/plain", _watched(request.chunks, probe))

    return Function(handle=handle)


ERRORS: Mapping[str, Callable[[], BaseException]] = {
    "bug": lambda: RuntimeError(BUG_TEXT),
    "invalid": lambda: InvalidInput("raises: the input is not what it takes"),
    "too-large": lambda: TooLarge("raises: the input asks for more than it may have"),
}


ERROR = Param("error", "string", "what to raise", default="bug", choices=tuple(ERRORS))
COUNT = Param("count", "integer", "how many results", default=100, low=0, high=1_000_000)


def raises(probe: Probe) -> Function:
    """Reads its whole input, then raises the error its ``error`` param names (a bug)."""

    def handle(request: Request) -> Reply:
        kind = ERROR.text(request.params)
        request.read()
        raise ERRORS[kind]()

    return Function(handle=handle, params=declare(ERROR))


def blocking(probe: Probe) -> Function:
    """Reads its whole input, then holds its answer (the input) until the probe is released."""

    def held(data: bytes) -> Iterator[bytes]:
        probe.wait()
        yield data

    def handle(request: Request) -> Reply:
        return Reply("text/plain", _watched(held(request.read()), probe))

    return Function(handle=handle)


def parts(probe: Probe) -> Function:
    """``count`` partial results, ``{"part": i}``, as fast as the caller takes them."""

    def numbered(count: int) -> Iterator[bytes]:
        for i in range(count):
            yield json.dumps({"part": i}).encode()

    def handle(request: Request) -> Reply:
        count = COUNT.integer(request.params)
        request.read()
        return Reply("application/json", _watched(numbered(count), probe), partial_results=True)

    def collect(results: Iterable[bytes]) -> bytes:
        return b"[" + b",".join(results) + b"]"

    return Function(handle=handle, params=declare(COUNT), collect=collect)


BEHAVIOURS: Mapping[str, Callable[[Probe], Function]] = {
    "echo": echo,
    "raises": raises,
    "blocking": blocking,
    "parts": parts,
}


def create(options: Mapping[str, Any]) -> Function:
    behaviour = options.get("behaviour", "echo")
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"no test behaviour {behaviour!r} (known: {', '.join(BEHAVIOURS)})")
    return BEHAVIOURS[behaviour](options.get("probe") or Probe())
