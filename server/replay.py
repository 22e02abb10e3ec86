"""A call's input, kept while it is small enough to send again to another replica.

When a worker fails before answering, the gateway may retry the call once on
another replica, but only if it can send the same input again. This wrapper keeps
the chunks read so far until they pass ``limit`` bytes; past that the input is
spent and the call cannot be replayed.

Reading the source is shielded from the cancellation of a reader: when one
attempt is abandoned while it waits for the caller's next chunk, that chunk still
arrives, is kept, and goes to the next attempt. Cancelling a wait on an async
generator would otherwise close the caller's stream for good.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator


class ReplayableInput:
    def __init__(self, source: AsyncIterator[bytes], limit: int) -> None:
        self._source = source
        self._limit = limit
        self._kept: list[bytes] = []
        self._kept_bytes = 0
        self._spent = False  # more was read than was kept
        self._pending: asyncio.Future[bytes] | None = None
        self._exhausted = False

    @property
    def replayable(self) -> bool:
        return not self._spent

    async def chunks(self) -> AsyncIterator[bytes]:
        """Everything from the start (what was kept), then the rest as it arrives."""
        if self._spent:
            raise RuntimeError("the input was already spent")
        for chunk in list(self._kept):
            yield chunk
        while not self._exhausted:
            if self._pending is None:
                self._pending = asyncio.ensure_future(anext(self._source))
            try:
                chunk = await asyncio.shield(self._pending)
            except StopAsyncIteration:
                self._exhausted = True
                self._pending = None
                return
            except BaseException:
                # close() may already have dropped the read (it runs while this waits).
                if self._pending is not None and self._pending.done():
                    self._pending = None
                raise
            self._pending = None
            self._keep(chunk)
            yield chunk

    def _keep(self, chunk: bytes) -> None:
        if self._spent:
            return
        self._kept_bytes += len(chunk)
        if self._kept_bytes > self._limit:
            self._spent = True
            self._kept.clear()
        else:
            self._kept.append(chunk)

    def close(self) -> None:
        """Stop a read in progress; call when no attempt will read any more."""
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
        self._pending = None
