"""The steps of a handler's work (decode, inference, encode...), named for traces and metrics.

A handler marks its steps, and the worker host decides what becomes of them: a span
in the call's trace and a sample of the step-time histogram (server/worker/metrics.py).
The host installs a ``Recorder`` for the call's thread with ``recording``; with none
installed (the client's ``--local``, a handler called from a test) a step costs one
context-variable read and nothing is recorded. So handlers stay free of gRPC and of
OpenTelemetry, and a step is told once, after it ended, with its start and end times:
nothing is left open if the handler raises or its thread is abandoned.

    with steps.step("decode"):                        # one step
        ...
    with steps.entered("decode", lambda: images.decoding(data)) as decoded:
        ...                                           # the entering of a context manager
    job = pool.submit(steps.bound("inference", model.detect), frame)   # on another thread
    with steps.tally("read") as read, steps.tally("stft") as stft:    # interleaved steps
        for block in read.each(blocks):
            with stft.timing():
                ...
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Protocol, TypeVar

T = TypeVar("T")
Attribute = str | int | float | bool


class Recorder(Protocol):
    """What the host does with a call's steps."""

    def record(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        busy_seconds: float,
        attributes: Mapping[str, Attribute],
        error: BaseException | None,
    ) -> None:
        """One step ended: wall-clock bounds (``time.time_ns``) and the time it worked.

        ``busy_seconds`` is the end minus the start for a plain step, and the sum of
        its pieces for a tally, whose pieces interleave with other steps.
        """

    def event(self, name: str, attributes: Mapping[str, Attribute]) -> None:
        """Something worth a mark in the trace that takes no time (a frame done)."""


_recorder: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar(
    "dcf_step_recorder", default=None
)


@contextlib.contextmanager
def recording(recorder: Recorder | None) -> Iterator[None]:
    """Record the steps of the code run in this block (the host, around a handler call)."""
    token = _recorder.set(recorder)
    try:
        yield
    finally:
        _recorder.reset(token)


@contextlib.contextmanager
def _timed(recorder: Recorder, name: str, attributes: Mapping[str, Attribute]) -> Iterator[None]:
    start = time.time_ns()
    error: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        end = time.time_ns()
        recorder.record(name, start, end, (end - start) / 1e9, attributes, error)


def step(name: str, **attributes: Attribute) -> AbstractContextManager[None]:
    """The block is the step ``name`` (with ``attributes``, e.g. a frame's number)."""
    recorder = _recorder.get()
    if recorder is None:
        return contextlib.nullcontext()
    return _timed(recorder, name, attributes)


@contextlib.contextmanager
def entered(name: str, make: Callable[[], AbstractContextManager[T]]) -> Iterator[T]:
    """Enter the context manager ``make()`` returns, the making and entering timed as ``name``.

    For work done on entering a block that lasts longer than the step: a decode whose
    memory is held until the block ends. ``make`` is called inside the step, so its
    arguments' work counts too and no reference to them outlives it here.
    """
    with contextlib.ExitStack() as stack:
        with step(name):
            value = stack.enter_context(make())
        yield value


def bound(name: str, work: Callable[..., T], **attributes: Attribute) -> Callable[..., T]:
    """``work`` as the step ``name`` of the calling thread's call, wherever it then runs.

    A handler's own thread pool (ssd-video's inferences) runs outside the call's
    thread; this carries the call's recorder there.
    """
    recorder = _recorder.get()
    if recorder is None:
        return work

    def run(*args: object, **kwargs: object) -> T:
        with _timed(recorder, name, attributes):
            return work(*args, **kwargs)

    return run


def event(name: str, **attributes: Attribute) -> None:
    """Mark ``name`` in the call's trace now."""
    recorder = _recorder.get()
    if recorder is not None:
        recorder.event(name, attributes)


class Tally:
    """A step done in pieces between other steps' pieces (reading a stream while
    transforming it), told once when its block ends: from its first piece's start to
    its last piece's end, with the time its pieces took in all."""

    def __init__(self, recorder: Recorder | None, name: str, attributes: Mapping[str, Attribute]):
        self._recorder = recorder
        self._name = name
        self._attributes = attributes
        self._first = 0
        self._last = 0
        self._busy = 0
        self.pieces = 0

    def __enter__(self) -> Tally:
        return self

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        if self._recorder is not None and self.pieces:
            attributes = {**self._attributes, "pieces": self.pieces}
            self._recorder.record(
                self._name, self._first, self._last, self._busy / 1e9, attributes, error
            )

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        """One piece of the step."""
        if self._recorder is None:
            yield
            return
        start = time.time_ns()
        try:
            yield
        finally:
            end = time.time_ns()
            self._first = self._first or start
            self._last = end
            self._busy += end - start
            self.pieces += 1

    def each(self, items: Iterable[T]) -> Iterator[T]:
        """``items``, the work of producing each one timed as a piece of the step."""
        iterator = iter(items)
        while True:
            with self.timing():
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item


def tally(name: str, **attributes: Attribute) -> Tally:
    """A step done in pieces: time each with ``timing()`` or ``each()``, told at the block's end."""
    return Tally(_recorder.get(), name, attributes)
