"""An upload that idles or crawls ends, so that it cannot hold a function's slot for ever.

A caller who opens a call and then sends one byte every few seconds costs almost
nothing to send and holds a slot of the function all the while: four such callers
kept ssd-video from everyone else. The defence is the one nginx and Kestrel use on
request bodies: after a short grace, the input must keep up a minimum rate,
measured over a sliding window, and it may never stop for longer than an idle
limit. Either failure ends the call with DEADLINE_EXCEEDED.

Only time spent waiting for the caller counts. The gateway reads a chunk when the
worker can take it, so while the worker is busy (flow control holds the caller
back) the clock stands still: a slow function never makes its caller look slow.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

from handlers.errors import DeadlineExceeded
from server.rpc.framing import Data

# The window the rate is measured over, and the grace before it is: seconds of waiting.
RATE_WINDOW_SECONDS = 10.0


async def paced(
    chunks: AsyncIterator[Data],
    function: str,
    idle_seconds: float,
    min_bytes_per_second: int,
    window_seconds: float = RATE_WINDOW_SECONDS,
) -> AsyncIterator[Data]:
    """``chunks``, raising DeadlineExceeded when the caller idles or crawls."""
    loop = asyncio.get_running_loop()
    waited = 0.0  # seconds spent waiting for the caller, in all
    recent: collections.deque[tuple[float, int]] = collections.deque()  # (waited, size)
    in_window = 0
    while True:
        patience = idle_seconds
        if min_bytes_per_second and waited >= window_seconds:
            patience = min(patience, window_seconds)
        started = loop.time()
        try:
            async with asyncio.timeout(patience):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise DeadlineExceeded(
                f"{function}: no input for {patience:g} s; the upload was ended"
            ) from None
        waited += loop.time() - started
        recent.append((waited, len(chunk)))
        in_window += len(chunk)
        while recent and recent[0][0] < waited - window_seconds:
            in_window -= recent.popleft()[1]
        if (
            min_bytes_per_second
            and waited >= window_seconds
            and in_window < min_bytes_per_second * window_seconds
        ):
            raise DeadlineExceeded(
                f"{function}: input slower than {min_bytes_per_second} bytes/s over "
                f"{window_seconds:g} s; the upload was ended"
            )
        yield chunk
