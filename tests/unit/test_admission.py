"""A function's slots and queue on their own: order, bounds, deadlines, and callers that leave."""

from __future__ import annotations

import asyncio

import pytest

from handlers.errors import DeadlineExceeded, Overloaded
from server.admission import Admission


async def hold(admission: Admission, name: str, log: list[str], release: asyncio.Event) -> None:
    async with admission.slot():
        log.append(name)
        await release.wait()


async def until(condition, turns: int = 1000) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def test_waiting_calls_run_in_arrival_order_and_only_a_full_queue_refuses():
    async def scenario() -> None:
        admission = Admission("f", limit=2, queue=3)
        log: list[str] = []
        releases = {name: asyncio.Event() for name in "abcde"}
        tasks = {}
        for name in "abcde":
            tasks[name] = asyncio.create_task(hold(admission, name, log, releases[name]))
            await asyncio.sleep(0)
        await until(lambda: admission.waiting == 3)
        assert log == ["a", "b"] and admission.running == 2
        with pytest.raises(Overloaded, match="queue is full"):
            await admission.acquire()
        releases["b"].set()
        await until(lambda: log == ["a", "b", "c"])
        releases["a"].set()
        await until(lambda: log == ["a", "b", "c", "d"])
        for event in releases.values():
            event.set()
        await asyncio.gather(*tasks.values())
        assert log == list("abcde")
        assert (admission.running, admission.waiting) == (0, 0)

    asyncio.run(scenario())


def test_a_cancelled_waiting_call_leaves_the_queue_at_once():
    async def scenario() -> None:
        admission = Admission("f", limit=1, queue=2)
        release = asyncio.Event()
        log: list[str] = []
        first = asyncio.create_task(hold(admission, "a", log, release))
        second = asyncio.create_task(hold(admission, "b", log, release))
        third = asyncio.create_task(hold(admission, "c", log, release))
        await until(lambda: admission.waiting == 2)
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)
        assert admission.waiting == 1
        release.set()
        await asyncio.gather(first, third)
        assert log == ["a", "c"]
        assert (admission.running, admission.waiting) == (0, 0)

    asyncio.run(scenario())


def test_the_deadline_ends_the_wait_with_deadline_exceeded():
    async def scenario() -> None:
        admission = Admission("f", limit=1, queue=2)
        release = asyncio.Event()
        holder = asyncio.create_task(hold(admission, "a", [], release))
        await until(lambda: admission.running == 1)
        with pytest.raises(DeadlineExceeded, match="waiting for a free slot"):
            await admission.acquire(timeout=0.05)
        assert admission.waiting == 0
        release.set()
        await holder
        assert admission.running == 0

    asyncio.run(scenario())


def test_a_slot_handed_over_as_the_waiter_gives_up_is_passed_on():
    """The slot arrives in the same turn as the waiter's cancellation: nobody loses it."""

    async def scenario() -> None:
        admission = Admission("f", limit=1, queue=2)
        await admission.acquire()
        waiter = asyncio.create_task(admission.acquire())
        later = asyncio.create_task(admission.acquire())
        await until(lambda: admission.waiting == 2)
        admission.release()  # the slot goes to ``waiter`` ...
        waiter.cancel()  # ... which gives up before it runs again
        await asyncio.gather(waiter, return_exceptions=True)
        await asyncio.wait_for(later, 1)  # so ``later`` has it
        assert (admission.running, admission.waiting) == (1, 0)
        admission.release()
        assert admission.running == 0

    asyncio.run(scenario())


def test_no_limit_means_no_queue():
    async def scenario() -> None:
        admission = Admission("f", limit=0, queue=0)
        for _ in range(100):
            await admission.acquire()
        assert admission.running == 100

    asyncio.run(scenario())
