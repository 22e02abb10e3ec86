"""The one place where errors become gRPC statuses, and statuses errors again.

Handlers, the gateway and the fronts raise ``handlers.errors.FunctionError``
subclasses; this module ends calls with their status, sending their reason in the
``dcf-reason`` trailing metadata (and in a failure record's ``reason``), and turns
a peer's status back into an error with its reason. Anything else is a bug: its
traceback goes to the server log and the caller gets INTERNAL with a generic
message, never the traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from handlers.errors import REASON_KEY, FunctionError, reason_for
from protos.dcf.v1 import dcf_pb2

log = logging.getLogger(__name__)


class CallError(FunctionError):
    """A status to return as is, e.g. one relayed from a worker, with its reason."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.status = code.name
        self.reason = reason_for(code.name, reason)


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The status code ``exc`` ends a call with (for accounting; logs nothing)."""
    if isinstance(exc, CallError):
        return exc.code
    if isinstance(exc, FunctionError):
        return getattr(grpc.StatusCode, exc.status, grpc.StatusCode.INTERNAL)
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def error_of(exc: BaseException) -> CallError:
    """What a caller should see for ``exc``: its code, reason and one-line message.

    Logs the traceback of anything that is not a FunctionError: a bug.
    """
    if isinstance(exc, CallError):
        return exc
    if isinstance(exc, FunctionError):
        code = getattr(grpc.StatusCode, exc.status, grpc.StatusCode.INTERNAL)
        return CallError(code, _one_line(exc.message), exc.reason)
    log.error("internal error", exc_info=exc)
    return CallError(
        grpc.StatusCode.INTERNAL, "internal error in the function (see the server log)"
    )


def _trailers(
    context: grpc.aio.ServicerContext, reason: str
) -> tuple[tuple[str, str | bytes], ...]:
    """The call's trailing metadata so far (its request id), and the reason."""
    kept = tuple((k, v) for k, v in context.trailing_metadata() or () if k != REASON_KEY)
    return (*kept, (REASON_KEY, reason))


def reason_in(metadata: object) -> str:
    """The ``dcf-reason`` in a peer's trailing metadata, or ""."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == REASON_KEY:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return ""


def _one_line(message: str) -> str:
    first = message.strip().splitlines()[0] if message.strip() else ""
    return first[:500]


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the call with the status for ``exc``, keeping its trailing metadata; never returns."""
    error = error_of(exc)
    await context.abort(
        error.code, error.message, trailing_metadata=_trailers(context, error.reason)
    )


# How long a stream that failed stays open after its failure record, so that the
# record reaches a caller who is still writing before the status ends the call.
RECORD_GRACE_SECONDS = 0.2


async def fail_stream(
    context: grpc.aio.ServicerContext, exc: BaseException, input_pending: bool
) -> AsyncIterator[dcf_pb2.CallResponse]:
    """End a Call stream with the status for ``exc``, announced first if input is still coming.

    Use as ``async for r in fail_stream(...): yield r``; it ends by aborting the call.
    """
    error = error_of(exc)
    if input_pending:
        record = dcf_pb2.CallFailure(
            code=error.code.name, message=error.message, reason=error.reason
        )
        yield dcf_pb2.CallResponse(failure=record)
        await asyncio.sleep(RECORD_GRACE_SECONDS)
    await context.abort(
        error.code, error.message, trailing_metadata=_trailers(context, error.reason)
    )


def failure_error(failure: dcf_pb2.CallFailure) -> CallError:
    """The error a failure record announces."""
    code = getattr(grpc.StatusCode, failure.code, grpc.StatusCode.UNKNOWN)
    return CallError(code, failure.message, failure.reason)


# What grpcio's asyncio client reports, in place of the peer's status, when a write
# fails because the peer already ended the call (grpc/aio/_call.py, the write path).
_CORE_WRITE_ERROR = "Internal error from Core"


async def upstream_error(call: grpc.aio.Call, exc: grpc.aio.AioRpcError) -> CallError:
    """The error the peer of ``call`` really ended it with (see ``upstream_status``)."""
    code, details = await upstream_status(call, exc)
    trailers = await call.trailing_metadata() or exc.trailing_metadata()
    return CallError(code, details or code.name, reason_in(trailers))


async def upstream_status(
    call: grpc.aio.Call, exc: grpc.aio.AioRpcError, wait_seconds: float = 1.0
) -> tuple[grpc.StatusCode, str]:
    """The status the peer really sent for ``call``, which failed with ``exc``.

    A write that loses the race with the peer's own status (it refused the input
    early, or crashed) stamps the call INTERNAL locally; the peer's status still
    arrives a moment later and replaces it. Wait for that. A call whose deadline
    has passed ended for that reason (the peer, told the same deadline, only
    cancels: it sends no status); a peer that sent none otherwise vanished, which
    is UNAVAILABLE.
    """
    code, details = exc.code(), exc.details() or ""
    if code != grpc.StatusCode.INTERNAL or details != _CORE_WRITE_ERROR:
        return code, details
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while not _expired(call) and loop.time() < deadline:
        await asyncio.sleep(0.01)
        code, details = await call.code(), await call.details() or ""
        if code != grpc.StatusCode.INTERNAL or details != _CORE_WRITE_ERROR:
            return code, details
    if _expired(call):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    return grpc.StatusCode.UNAVAILABLE, "the upstream ended the call without a status"


def _expired(call: grpc.aio.Call) -> bool:
    """Whether ``call`` had a deadline, and it has passed."""
    remaining = call.time_remaining()
    return remaining is not None and remaining <= 0
