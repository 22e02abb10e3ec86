"""A call's input, kept while it is small enough to send again to another replica.

When a worker fails before answering, the gateway may retry the call once on
another replica, but only if it can send the same input again, whole. This buffer
reads the caller's stream in a task of its own and records every chunk the moment
it arrives, before any attempt sees it; each attempt then reads the record from the
start. So an attempt abandoned at any point (while waiting for a chunk, or just as
one arrived) loses nothing, and the next attempt gets exactly the input, all of it,
in order. Once more than ``limit`` bytes have arrived the input is spent: chunks
are dropped as the one attempt left takes them, and no retry is possible.

Reading in a task of its own also means that cancelling an attempt never cancels a
read of the caller's stream, which would end that stream for good.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

from server.rpc.framing import Data


class ReplayableInput:
    """The chunks of ``source``, readable from the start by each attempt in turn."""

    def __init__(self, source: AsyncIterator[Data], limit: int) -> None:
        self._source = source
        self._limit = limit
        self._record: collections.deque[Data] = collections.deque()
        self._first = 0  # the index in the input of self._record[0]
        self._bytes = 0
        self._spent = False  # more arrived than is kept: no attempt may start over
        self._ended = False
        self._error: BaseException | None = None
        self._reading: asyncio.Task[None] | None = None

    @property
    def replayable(self) -> bool:
        """True while a new attempt can still be given the whole input."""
        return not self._spent

    async def chunks(self) -> AsyncIterator[Data]:
        """The whole input from its first chunk; raises what reading the source raised."""
        if self._spent:
            raise RuntimeError("the input was already spent")
        index = 0
        while True:
            if index < self._first + len(self._record):
                chunk = self._record[index - self._first]
                index += 1
                if self._spent:  # no replay: what this attempt took is not kept
                    while self._first < index:
                        self._record.popleft()
                        self._first += 1
                yield chunk
            elif self._error is not None:
                raise self._error
            elif self._ended:
                return
            else:
                await asyncio.shield(self._read_next())

    def _read_next(self) -> asyncio.Task[None]:
        """The read in progress, started if none is: all attempts share it."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._read())
        return self._reading

    async def _read(self) -> None:
        try:
            chunk = await anext(self._source)
        except StopAsyncIteration:
            self._ended = True
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - raised to every attempt that reads on
            self._error = exc
            return
        self._record.append(chunk)
        self._bytes += len(chunk)
        if self._bytes > self._limit:
            self._spent = True

    def close(self) -> None:
        """Stop a read in progress; call when no attempt will read any more."""
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()
        self._reading = None
        self._record.clear()
