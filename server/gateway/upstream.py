"""Reading a worker's answer in a task of its own, which is never cancelled mid-read.

grpcio's asyncio stack never frees the message being read when the task awaiting
the read is cancelled (grpc/grpc#43360, open at the time of writing). The gateway's
relay runs in the caller's task, which grpcio cancels when the caller goes away,
so reading the worker's answer there leaked 20-50 KiB per call abandoned while its
answer streamed. Here the read happens in a separate task; when the relay ends
early it cancels the worker *call*, which ends the read normally, and the task
finishes on its own.
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

import grpc

_END = object()
R = TypeVar("R")


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class UpstreamReader(Generic[R]):
    """Responses of ``call``, one at a time, read ahead by at most one message."""

    def __init__(self, call: grpc.aio.StreamStreamCall[Any, R]) -> None:
        self._call = call
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        self._closed = False
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self._call:
                await self._queue.put(response)
                if self._closed:
                    return
            await self._queue.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the relay, which maps it
            if not self._closed:
                await self._queue.put(_Raised(exc))

    async def next(self) -> R | None:
        """The next response, None at the end; raises what reading the call raised."""
        item = await self._queue.get()
        if item is _END:
            return None
        if isinstance(item, _Raised):
            raise item.exc
        return item

    def close(self) -> None:
        """Cancel the call; the read in progress then ends and the task with it."""
        self._closed = True
        self._call.cancel()
        while not self._queue.empty():  # unblock a reader waiting to hand over
            self._queue.get_nowait()
