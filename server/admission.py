"""How many calls of one function run at once, and how many may wait their turn.

A function's interpreters, threads or processes are few; a burst of callers larger
than that should wait, as Triton and MLServer make them wait, rather than be turned
away. But a wait without a bound is memory and time without a bound, so the queue
has a size, and only a full queue refuses (``Overloaded``, RESOURCE_EXHAUSTED, which
the HTTP front answers as 429). Waiting calls are served in arrival order; one whose
caller goes away, or whose deadline passes, leaves the queue at once. A waiting call
holds no input: nobody reads its stream until it runs, so gRPC's flow control keeps
the rest of it with the caller.

The gateway and the worker host both admit calls through this class.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator

from handlers.errors import DeadlineExceeded, Overloaded


class Admission:
    """At most ``limit`` calls at once (0: no limit), and up to ``queue`` more waiting."""

    def __init__(self, name: str, limit: int, queue: int) -> None:
        self.name = name
        self.limit = limit
        self.queue = queue
        self.running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @contextlib.asynccontextmanager
    async def slot(self, timeout: float | None = None) -> AsyncIterator[float]:
        """Hold one of the function's slots for the block; yields the seconds waited for it.

        Raises Overloaded when the queue is full, and DeadlineExceeded when ``timeout``
        seconds pass in the queue.
        """
        waited = await self.acquire(timeout)
        try:
            yield waited
        finally:
            self.release()

    async def acquire(self, timeout: float | None = None) -> float:
        """Take a slot, waiting in the queue if need be; the seconds waited. See ``slot``."""
        started = time.monotonic()
        if not self.limit or (self.running < self.limit and not self._waiters):
            self.running += 1
            return 0.0
        if len(self._waiters) >= self.queue:
            raise Overloaded(
                f"{self.name}: queue is full ({self.running} calls running, "
                f"{len(self._waiters)} waiting); try again later"
            )
        turn = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await asyncio.wait_for(asyncio.shield(turn), timeout)
        except BaseException as exc:
            if turn.done() and not turn.cancelled():
                self.release()  # the slot came just as we gave up: pass it on
            else:
                turn.cancel()
                self._waiters.remove(turn)
            if isinstance(exc, asyncio.TimeoutError):
                raise DeadlineExceeded(
                    f"{self.name}: deadline exceeded while waiting for a free slot"
                ) from None
            raise
        return time.monotonic() - started

    def release(self) -> None:
        """Give back a slot taken by ``acquire``: to the longest waiting call, or free."""
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes on; ``running`` stays the same
                return
        self.running -= 1


class ByteBudget:
    """Bytes that unary calls may hold at once, over all functions.

    A unary message comes whole: Invoke's input and answer are each held in memory,
    several times over on the way (received, decoded, relayed, joined, encoded). The
    budget bounds what the calls in flight hold together; a call that would pass it
    is refused (``Overloaded``) rather than queued, since waiting would hold its
    input all the same. One call is always let through, whatever its size, so a
    payload the size limit allows is never refused on an idle gateway.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int, what: str) -> None:
        if self.held and self.held + size > self.limit:
            raise Overloaded(
                f"{what}: unary calls in flight hold {self.held} bytes already, at most "
                f"{self.limit} at once; try again later, or stream with Call"
            )
        self.held += size

    def grow(self, size: int) -> None:
        """Count more bytes of a call already let through (its answer, as it comes)."""
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size
