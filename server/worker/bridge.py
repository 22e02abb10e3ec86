"""Runs one call's handler on a worker thread, joined to the event loop by two small queues.

Handlers are plain blocking code (decode, infer, encode); the event loop must stay
free for other calls and health checks. The loop side feeds input chunks into a
bounded inbox and takes parts from a bounded outbox, so a handler never reads ahead
of the network and never produces faster than the caller reads: memory per call is
a few chunks, whatever the input size. Neither side waits for the other unless a
queue is empty or full.

When the call ends early (the caller went away, a deadline passed, the input broke
a limit), ``abort`` wakes the handler thread: its next read of input or write of a
part raises ``handlers.base.Cancelled``, and the parts generator is closed so the
handler's ``finally`` blocks run (temporary files removed, interpreters returned).

A call whose input came whole in one message (Worker.Invoke) needs none of that:
``answer_whole`` runs the handler to its end on the thread and hands back the
answer once, which is what a small call can afford.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from typing import Any

from handlers.base import Function, Params, Request
from handlers.errors import Cancelled
from server.rpc.framing import output_too_large

_END = object()
_ABORTED = object()


class _Failure:
    """Carries an exception across the queue, raised where it is taken out."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Header:
    """The first thing a run yields: how to label what follows."""

    def __init__(self, content_type: str, partial_results: bool) -> None:
        self.content_type = content_type
        self.partial_results = partial_results


class HandlerRun:
    """One handler invocation: ``feed`` chunks in, iterate ``outputs`` for a Header then parts.

    Each queue holds at most ``queue_size`` items not yet taken, and each hand-off
    is one-way: the side that puts an item only waits when the queue is full, and
    the side that takes one signals the room it made. So a handler that produces
    parts (ssd-video's frames) carries on with its next one while the loop sends
    the last, instead of waiting for the loop to take each from its hand.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, queue_size: int = 2) -> None:
        self._loop = loop
        # Loop to thread: the thread blocks on the queue; the loop waits for room.
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._inbox_room = asyncio.Semaphore(queue_size)
        # Thread to loop: the loop awaits the queue; the thread waits for room.
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._outbox_room = threading.Semaphore(queue_size)
        self._aborted = False
        self.waiting = False  # whether the thread waits for input or for room now

    # ---- loop side -------------------------------------------------------

    async def feed(self, chunk: bytes) -> None:
        """Hand the handler one more chunk; waits while it is busy (flow control)."""
        await self._put(chunk)

    async def end_input(self) -> None:
        await self._put(_END)

    async def fail_input(self, exc: BaseException) -> None:
        """The input broke a rule (too large, malformed): the handler's next read raises it."""
        await self._put(_Failure(exc))

    async def _put(self, item: Any) -> None:
        await self._inbox_room.acquire()
        self._inbox.put(item)

    async def outputs(self) -> AsyncGenerator[Any, None]:
        """A Header, then each part (bytes), until the handler is done; raises its error."""
        while True:
            item = await self._outbox.get()
            self._outbox_room.release()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item

    def abort(self) -> None:
        """Stop the handler thread at its next read or write; safe to call twice."""
        self._aborted = True
        self._inbox.put(_ABORTED)  # wakes a thread waiting for input
        self._outbox_room.release()  # and one waiting for room

    # ---- thread side -----------------------------------------------------

    def run(
        self,
        function: Function,
        params: Params,
        collect: bool,
        chunks: Iterator[bytes] | None = None,
        path: str | None = None,
    ) -> None:
        """The thread's body: call the handler, pass its reply out, report its error.

        The input comes from ``feed`` unless the call brings ``chunks`` of its own (an
        upload received whole before the call started), and with them, if that upload
        is on disk, the ``path`` that opens it (``handlers.base.Request.path``).
        """
        parts = None
        try:
            request = Request(params, self._chunks() if chunks is None else chunks, path)
            reply = function.handle(request)
            parts = reply.parts
            partial = reply.partial_results and not collect
            if reply.partial_results and collect:
                # One document gathered from JSON results (see handlers.base.Reply).
                self._emit(Header("application/json", partial_results=False))
                self._emit(function.collect(parts))
            else:
                self._emit(Header(reply.content_type, partial))
                for part in parts:
                    if part:
                        self._emit(part)
            self._emit(_END)
        except Cancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 - every error must reach the caller
            with contextlib.suppress(Cancelled):
                self._emit(_Failure(exc))
        finally:
            close = getattr(parts, "close", None)
            if close is not None:
                close()

    def _chunks(self) -> Iterator[bytes]:
        while True:
            item = self._wait(self._inbox.get)
            self._signal(self._inbox_room.release)
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item

    def _emit(self, item: Any) -> None:
        self._wait(self._outbox_room.acquire)
        self._signal(self._outbox.put_nowait, item)

    def _wait(self, take: Callable[[], Any]) -> Any:
        """``take()``, a blocking wait on a queue or for room, unless the call was aborted
        before or during it (Cancelled)."""
        if self._aborted:
            raise Cancelled()
        self.waiting = True
        try:
            taken = take()
        finally:
            self.waiting = False
        if self._aborted:
            raise Cancelled()
        return taken

    def _signal(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback`` on the loop, without waiting for it; Cancelled once the loop
        is closed (the worker is stopping, and nobody reads any more)."""
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            raise Cancelled() from None


def answer_whole(
    function: Function,
    name: str,
    params: Params,
    data: bytes,
    limit: int,
    stopped: threading.Event,
) -> tuple[str, bytes]:
    """The handler's whole answer to an input that came whole (the worker's Invoke):
    (content type, body), partial results collected into one document.

    It runs on the handler's thread from start to end, with no queue between it and
    the loop: one hand-off per call, where ``HandlerRun`` costs one per message.
    The answer is held whole, so it is bounded: past ``limit`` bytes it raises
    TooLarge. ``stopped`` set (the call ended early) makes the next part raise
    Cancelled; the parts generator is closed either way, so the handler's
    ``finally`` blocks run.
    """
    reply = function.handle(Request(params=params, chunks=iter((data,) if data else ())))
    parts = _bounded(reply.parts, name, limit, stopped)
    try:
        if reply.partial_results:
            document = function.collect(parts)
            if len(document) > limit:
                raise output_too_large(name, limit)
            return "application/json", document
        return reply.content_type, b"".join(parts)
    finally:
        close = getattr(reply.parts, "close", None)
        if close is not None:
            close()


def _bounded(
    parts: Iterable[bytes], name: str, limit: int, stopped: threading.Event
) -> Iterator[bytes]:
    """``parts``, until their sum passes ``limit`` (TooLarge) or the call stops (Cancelled)."""
    held = 0
    for part in parts:
        if stopped.is_set():
            raise Cancelled()
        held += len(part)
        if held > limit:
            raise output_too_large(name, limit)
        yield part
