"""The replay buffer on its own: every attempt gets the whole input, however the last one ended.

The race these pin down: an attempt cancelled at the very moment a chunk of the
caller's input arrived. The buffer of old dropped that chunk, and the retry sent
the input without it; for a one-chunk input the retry answered OK with nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from handlers.errors import TooLarge
from server.gateway.replay import ReplayableInput
from server.rpc.framing import Data

INPUTS = {
    "empty": [],
    "one byte": [b"x"],
    "one chunk": [b"a" * 1000],
    "several chunks": [bytes([i]) * 300 for i in range(10)],
}


class Caller:
    """An input stream whose chunks arrive when the test releases them."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.sent = 0
        self.gate: asyncio.Queue[None] = asyncio.Queue()

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            await self.gate.get()
            self.sent += 1
            yield chunk

    def release_all(self) -> None:
        for _ in self.chunks:
            self.gate.put_nowait(None)


async def read_all(replay: ReplayableInput) -> list[Data]:
    return [chunk async for chunk in replay.chunks()]


async def abandoned_attempt(
    replay: ReplayableInput, caller: Caller, taken: int, turns: int
) -> None:
    """An attempt that takes ``taken`` chunks, then is cancelled ``turns`` loop turns after
    the caller sends its next one."""
    got: list[Data] = []

    async def attempt() -> None:
        async for chunk in replay.chunks():
            got.append(chunk)

    task = asyncio.create_task(attempt())
    for i in range(min(taken, len(caller.chunks))):
        caller.gate.put_nowait(None)
        for _ in range(1000):
            if len(got) > i:
                break
            await asyncio.sleep(0)
        assert len(got) > i, "the attempt never got its chunk"
    caller.gate.put_nowait(None)
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("name", INPUTS)
@pytest.mark.parametrize("turns", range(6))
@pytest.mark.parametrize("taken", range(3))
def test_a_retry_gets_the_whole_input_whenever_the_first_attempt_was_cancelled(name, turns, taken):
    async def scenario() -> list[Data]:
        caller = Caller(INPUTS[name])
        replay = ReplayableInput(caller.stream(), limit=1 << 20)
        await abandoned_attempt(replay, caller, taken, turns)
        assert replay.replayable
        caller.release_all()
        try:
            return await asyncio.wait_for(read_all(replay), 5)
        finally:
            replay.close()

    assert asyncio.run(scenario()) == INPUTS[name]


def test_several_attempts_in_turn_each_get_the_same_input():
    async def scenario() -> None:
        caller = Caller(INPUTS["several chunks"])
        replay = ReplayableInput(caller.stream(), limit=1 << 20)
        caller.release_all()
        for _ in range(3):
            assert await read_all(replay) == INPUTS["several chunks"]
        replay.close()

    asyncio.run(scenario())


def test_past_the_limit_the_input_is_spent_and_still_reaches_the_attempt_whole():
    async def scenario() -> None:
        chunks = [bytes([i]) * 100 for i in range(20)]
        caller = Caller(chunks)
        replay = ReplayableInput(caller.stream(), limit=1000)
        caller.release_all()
        got = []
        async for chunk in replay.chunks():
            got.append(chunk)
            if len(got) == 10:
                assert replay.replayable, "exactly the limit is still replayable"
        assert got == chunks
        assert not replay.replayable
        with pytest.raises(RuntimeError):
            await read_all(replay)

    asyncio.run(scenario())


def test_memory_past_the_limit_stays_bounded():
    """Once spent, chunks the attempt took are not kept."""

    async def scenario() -> None:
        async def endless() -> AsyncIterator[bytes]:
            for _ in range(1000):
                yield b"z" * 1000

        replay = ReplayableInput(endless(), limit=10_000)
        count = 0
        async for _ in replay.chunks():
            count += 1
            assert len(replay._record) <= 11  # the limit's worth, and the chunk in hand
        assert count == 1000

    asyncio.run(scenario())


def test_an_error_of_the_input_reaches_every_attempt():
    async def scenario() -> None:
        async def broken() -> AsyncIterator[bytes]:
            yield b"first"
            raise TooLarge("over the limit")

        replay = ReplayableInput(broken(), limit=1 << 20)
        for _ in range(2):
            got = []
            with pytest.raises(TooLarge):  # noqa: PT012 - raised by a read, after the first
                async for chunk in replay.chunks():
                    got.append(chunk)
            assert got == [b"first"]

    asyncio.run(scenario())


def test_close_stops_a_read_in_progress_and_leaves_no_task():
    async def scenario() -> None:
        caller = Caller([b"never"])
        replay = ReplayableInput(caller.stream(), limit=1 << 20)
        attempt = asyncio.create_task(read_all(replay))
        await asyncio.sleep(0.01)
        attempt.cancel()
        await asyncio.gather(attempt, return_exceptions=True)
        replay.close()
        await asyncio.sleep(0)
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not [t for t in others if not t.done()]

    asyncio.run(scenario())
