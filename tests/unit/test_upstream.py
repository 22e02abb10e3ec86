"""The upstream reader on its own, over real calls to an in-process worker host.

The reader exists because cancelling a task in the middle of a grpcio read leaks
the message being read; it reads in a task of its own and ends by cancelling the
call instead. So what must hold: it hands over every response in order, ``close``
ends the call and the read task with it wherever the read stood, and a call's error
reaches whoever asks for the next response.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from server.config import Settings
from server.gateway.upstream import UpstreamReader
from tests.support import call_requests
from tests.support.inprocess import (
    CHUNK_BYTES,
    GRACE_SECONDS,
    WorkerHost,
    leaves_no_task,
    registry_entry,
    until,
    worker_host,
)
from tests.support.inprocess_handlers import Probe

# A bound on any one wait of these tests; none should come near it.
SECONDS = 10.0


@contextlib.asynccontextmanager
async def worker(
    behaviour: str,
) -> AsyncIterator[tuple[dcf_pb2_grpc.WorkerStub, WorkerHost, Probe]]:
    """A worker host serving function ``behaviour``, a stub to it, and its handler's probe."""
    probe = Probe()
    config = registry_entry(behaviour, behaviour, probe)
    settings = Settings(chunk_bytes=CHUNK_BYTES, grace_seconds=GRACE_SECONDS, functions=(config,))
    async with (
        leaves_no_task(),
        worker_host(settings, config) as host,
        grpc.aio.insecure_channel(host.address) as channel,
    ):
        yield dcf_pb2_grpc.WorkerStub(channel), host, probe


def started_reader(call: grpc.aio.StreamStreamCall) -> tuple[UpstreamReader, asyncio.Task[None]]:
    """A reader of ``call``, and the task it reads in (the one task its making starts)."""
    before = asyncio.all_tasks()
    reader = UpstreamReader(call)
    (task,) = asyncio.all_tasks() - before
    return reader, task


def test_responses_come_in_order_then_none():
    async def scenario() -> None:
        async with worker("parts") as (stub, _host, _probe):
            call = stub.Call(call_requests("parts", [b"input"], {"count": "50"}), timeout=SECONDS)
            reader, task = started_reader(call)
            responses = []
            while (response := await asyncio.wait_for(reader.next(), SECONDS)) is not None:
                responses.append(response)
            await asyncio.wait_for(task, SECONDS)
            assert responses[0].header == dcf_pb2.ResponseHeader(
                content_type="application/json", partial_results=True
            )
            assert [r.result for r in responses[1:]] == [b'{"part": %d}' % i for i in range(50)]
            assert await call.code() == grpc.StatusCode.OK
            reader.close()  # after the end too: harmless

    asyncio.run(scenario())


@pytest.mark.parametrize("behaviour", ["parts", "blocking"])
def test_close_cancels_the_call_and_the_read_task_ends(behaviour):
    """``parts`` answers faster than anyone reads (the reader waits to hand over a
    response); ``blocking`` answers nothing (the reader waits on the call)."""

    async def scenario() -> None:
        async with worker(behaviour) as (stub, host, probe):
            params = {"count": "1000000"} if behaviour == "parts" else {}
            call = stub.Call(call_requests(behaviour, [b"input"], params), timeout=SECONDS)
            reader, task = started_reader(call)
            if behaviour == "parts":
                first = await asyncio.wait_for(reader.next(), SECONDS)
                assert first.header.partial_results
                await until(lambda: probe.yielded > 10, "the worker to answer ahead of the reader")
            else:
                await until(lambda: probe.started == 1, "the handler to hold its answer")
            reader.close()
            await asyncio.wait_for(task, SECONDS)
            assert not task.cancelled() and task.exception() is None
            assert await call.code() == grpc.StatusCode.CANCELLED
            await until(lambda: host.servicer.in_flight == 0, "the worker to end the call")
            probe.release()
            await until(lambda: probe.finished == 1, "the handler's generator to be closed")
            assert probe.yielded < 1_000_000

    asyncio.run(scenario())


def test_the_calls_error_is_raised_by_next():
    async def scenario() -> None:
        async with worker("raises") as (stub, _host, _probe):
            requests = call_requests("raises", [b"input"], {"error": "invalid"})
            call = stub.Call(requests, timeout=SECONDS)
            reader, task = started_reader(call)
            with pytest.raises(grpc.aio.AioRpcError) as raised:  # noqa: PT012 - by some read
                while (response := await asyncio.wait_for(reader.next(), SECONDS)) is not None:
                    # A worker still reading input announces its failure first (rpc/status.py).
                    assert response.failure.code == "INVALID_ARGUMENT", response
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert raised.value.details() == "raises: the input is not what it takes"
            await asyncio.wait_for(task, SECONDS)
            reader.close()

    asyncio.run(scenario())


def test_a_deadline_that_passes_while_the_worker_is_silent_is_raised_by_next():
    async def scenario() -> None:
        async with worker("blocking") as (stub, _host, probe):
            call = stub.Call(call_requests("blocking", [b"input"]), timeout=1.0)
            reader, task = started_reader(call)
            with pytest.raises(grpc.aio.AioRpcError) as raised:  # noqa: PT012 - by some read
                while (response := await asyncio.wait_for(reader.next(), SECONDS)) is not None:
                    # The header, if the worker was quick enough; then nothing: the answer is held.
                    assert response.header.content_type == "text/plain", response
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.wait_for(task, SECONDS)
            reader.close()
            probe.release()

    asyncio.run(scenario())
