"""The handler bridge on its own: a real handler on a real thread, joined to a real loop.

What these pin down is the end of a run: an abort must free a handler thread
wherever it waits (for input the caller has not sent, or for room for its next part
the caller has not taken) and close its parts generator, so that the handler's
``finally`` runs; and a handler's error must reach the loop side, never a thread's
log alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from handlers.base import Function, Params
from handlers.errors import InvalidInput, TooLarge
from server.worker.bridge import HandlerRun, Header
from tests.support import inprocess_handlers as behaviours
from tests.support.inprocess import until
from tests.support.inprocess_handlers import Probe

# How long a thread may take to end once it has been let go.
THREAD_SECONDS = 10.0


def start(
    function: Function,
    params: dict[str, str] | None = None,
    collect: bool = False,
    chunks: Iterator[bytes] | None = None,
) -> tuple[HandlerRun, asyncio.Future[None]]:
    """A run of ``function`` on a thread of the loop's executor, as the worker host starts one."""
    loop = asyncio.get_running_loop()
    run = HandlerRun(loop)
    thread = loop.run_in_executor(None, run.run, function, Params(params), collect, chunks)
    return run, thread


def blocked(run: HandlerRun) -> bool:
    """Whether the handler thread waits for input or for room for a part now."""
    return run.waiting


async def everything(outputs: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in outputs]


async def feed_all(run: HandlerRun, chunks: list[bytes]) -> None:
    for chunk in chunks:
        await run.feed(chunk)
    await run.end_input()


def header_of(item: Any) -> tuple[str, bool]:
    assert isinstance(item, Header), f"expected the Header first, got {item!r}"
    return item.content_type, item.partial_results


def test_chunks_fed_in_come_out_in_order_and_the_run_ends():
    chunks = [bytes([i]) * (i * 100 + 1) for i in range(20)]  # ten times the queues' room

    async def scenario() -> None:
        probe = Probe()
        run, thread = start(behaviours.echo(probe))
        feeder = asyncio.create_task(feed_all(run, chunks))
        items = await asyncio.wait_for(everything(run.outputs()), THREAD_SECONDS)
        await feeder
        await asyncio.wait_for(thread, THREAD_SECONDS)
        assert header_of(items[0]) == ("text/plain", False)
        assert items[1:] == chunks
        assert (probe.started, probe.yielded, probe.finished) == (1, 20, 1)

    asyncio.run(scenario())


def test_an_input_received_whole_is_read_from_the_chunks_given():
    async def scenario() -> None:
        run, thread = start(behaviours.echo(Probe()), chunks=iter([b"received ", b"whole"]))
        items = await asyncio.wait_for(everything(run.outputs()), THREAD_SECONDS)
        await asyncio.wait_for(thread, THREAD_SECONDS)
        assert header_of(items[0]) == ("text/plain", False)
        assert b"".join(items[1:]) == b"received whole"

    asyncio.run(scenario())


@pytest.mark.parametrize("collect", [False, True])
def test_partial_results_come_one_by_one_or_collected_into_one_document(collect):
    async def scenario() -> list[Any]:
        run, thread = start(behaviours.parts(Probe()), {"count": "5"}, collect=collect)
        await run.end_input()
        items = await asyncio.wait_for(everything(run.outputs()), THREAD_SECONDS)
        await asyncio.wait_for(thread, THREAD_SECONDS)
        return items

    items = asyncio.run(scenario())
    results = [b'{"part": %d}' % i for i in range(5)]
    if collect:
        assert header_of(items[0]) == ("application/json", False)
        assert items[1:] == [b"[" + b",".join(results) + b"]"]
    else:
        assert header_of(items[0]) == ("application/json", True)
        assert items[1:] == results


def test_abort_while_the_handler_waits_for_input_ends_its_thread():
    async def scenario() -> None:
        probe = Probe()
        run, thread = start(behaviours.echo(probe))
        outputs = run.outputs()
        await run.feed(b"first")
        assert header_of(await anext(outputs)) == ("text/plain", False)
        assert await anext(outputs) == b"first"
        # Its answer so far is taken and no more input comes: it waits for input.
        await until(lambda: blocked(run), "the handler to wait for its next chunk")
        run.abort()
        await asyncio.wait_for(thread, THREAD_SECONDS)
        assert (probe.yielded, probe.finished) == (1, 1)
        await outputs.aclose()

    asyncio.run(scenario())


def test_abort_while_the_handler_waits_to_hand_over_a_part_closes_its_generator():
    """The generator is suspended at its ``yield``: only closing it runs its ``finally``."""

    async def scenario() -> None:
        probe = Probe()
        run, thread = start(behaviours.parts(probe), {"count": "1000"})
        await run.end_input()
        # Nobody reads: the header and the first part fill the outbox, the second waits.
        await until(
            lambda: probe.yielded == 2 and blocked(run), "the handler to wait for room for a part"
        )
        assert probe.finished == 0
        run.abort()
        await asyncio.wait_for(thread, THREAD_SECONDS)
        assert (probe.yielded, probe.finished) == (2, 1)
        outputs = run.outputs()
        assert header_of(await anext(outputs)) == ("application/json", True)
        assert await anext(outputs) == b'{"part": 0}'
        await outputs.aclose()

    asyncio.run(scenario())


def test_abort_while_the_handler_computes_stops_it_at_its_next_part():
    """A handler busy in its own code cannot be interrupted; it ends at its next write."""

    async def scenario() -> None:
        probe = Probe()
        run, thread = start(behaviours.blocking(probe))
        await run.feed(b"held")
        await run.end_input()
        await until(lambda: probe.started == 1, "the handler to start holding its answer")
        run.abort()
        run.abort()  # twice is harmless: the worker host aborts every run as it ends
        assert not thread.done()
        probe.release()
        await asyncio.wait_for(thread, THREAD_SECONDS)
        assert (probe.yielded, probe.finished) == (1, 1)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("error", "kind", "message"),
    [
        ("invalid", InvalidInput, "raises: the input is not what it takes"),
        ("too-large", TooLarge, "raises: the input asks for more than it may have"),
        ("bug", RuntimeError, behaviours.BUG_TEXT),
    ],
)
def test_an_error_of_the_handler_is_raised_by_outputs(error, kind, message):
    async def scenario() -> None:
        run, thread = start(behaviours.raises(Probe()), {"error": error})
        await feed_all(run, [b"some input"])
        with pytest.raises(kind) as raised:
            await asyncio.wait_for(everything(run.outputs()), THREAD_SECONDS)
        assert str(raised.value) == message
        await asyncio.wait_for(thread, THREAD_SECONDS)  # the thread ends without raising

    asyncio.run(scenario())


def test_an_input_that_broke_a_rule_fails_the_handlers_read_and_reaches_outputs():
    async def scenario() -> None:
        probe = Probe()
        run, thread = start(behaviours.echo(probe))
        await run.feed(b"within the limit")
        await run.fail_input(TooLarge("echo: input exceeds the limit of 16 bytes"))
        with pytest.raises(TooLarge, match="exceeds the limit of 16 bytes"):
            await asyncio.wait_for(everything(run.outputs()), THREAD_SECONDS)
        await asyncio.wait_for(thread, THREAD_SECONDS)
        assert (probe.yielded, probe.finished) == (1, 1)

    asyncio.run(scenario())
