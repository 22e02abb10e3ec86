"""The one place where errors become gRPC statuses.

Handlers and the gateway raise ``handlers.base.FunctionError`` subclasses, which
carry a status name and a one-line reason; this module turns them into statuses.
Anything else is a bug: its traceback goes to the server log and the caller gets
INTERNAL with a generic message, never the traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from handlers.base import FunctionError
from protos.dcf.v1 import dcf_pb2

log = logging.getLogger(__name__)


class CallError(FunctionError):
    """A status to return as is, e.g. one relayed from a worker."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = code.name


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The status code ``exc`` ends a call with (for accounting; logs nothing)."""
    if isinstance(exc, CallError):
        return exc.code
    if isinstance(exc, FunctionError):
        return getattr(grpc.StatusCode, exc.status, grpc.StatusCode.INTERNAL)
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC code and one-line message a caller should see for ``exc``."""
    if isinstance(exc, CallError):
        return exc.code, exc.message
    if isinstance(exc, FunctionError):
        code = getattr(grpc.StatusCode, exc.status, grpc.StatusCode.INTERNAL)
        return code, _one_line(exc.message)
    log.error("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error in the function (see the server log)"


def _one_line(message: str) -> str:
    first = message.strip().splitlines()[0] if message.strip() else ""
    return first[:500]


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the call with the status for ``exc``, keeping its trailing metadata; never returns."""
    code, message = status_of(exc)
    await context.abort(code, message, trailing_metadata=context.trailing_metadata() or ())


# How long a stream that failed stays open after its failure record, so that the
# record reaches a caller who is still writing before the status ends the call.
RECORD_GRACE_SECONDS = 0.2


async def fail_stream(
    context: grpc.aio.ServicerContext, exc: BaseException, input_pending: bool
) -> AsyncIterator[dcf_pb2.CallResponse]:
    """End a Call stream with the status for ``exc``, announced first if input is still coming.

    Use as ``async for r in fail_stream(...): yield r``; it ends by aborting the call.
    """
    code, message = status_of(exc)
    if input_pending:
        yield dcf_pb2.CallResponse(failure=dcf_pb2.CallFailure(code=code.name, message=message))
        await asyncio.sleep(RECORD_GRACE_SECONDS)
    await context.abort(code, message, trailing_metadata=context.trailing_metadata() or ())


def failure_error(failure: dcf_pb2.CallFailure) -> CallError:
    """The error a failure record announces."""
    code = getattr(grpc.StatusCode, failure.code, grpc.StatusCode.UNKNOWN)
    return CallError(code, failure.message)


# What grpcio's asyncio client reports, in place of the peer's status, when a write
# fails because the peer already ended the call (grpc/aio/_call.py, the write path).
_CORE_WRITE_ERROR = "Internal error from Core"


async def upstream_status(
    call: grpc.aio.Call, exc: grpc.aio.AioRpcError, wait_seconds: float = 1.0
) -> tuple[grpc.StatusCode, str]:
    """The status the peer really sent for ``call``, which failed with ``exc``.

    A write that loses the race with the peer's own status (it refused the input
    early, or crashed) stamps the call INTERNAL locally; the peer's status still
    arrives a moment later and replaces it. Wait for that; a peer that sent none
    vanished, which is UNAVAILABLE.
    """
    code, details = exc.code(), exc.details() or ""
    if code != grpc.StatusCode.INTERNAL or details != _CORE_WRITE_ERROR:
        return code, details
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while loop.time() < deadline:
        await asyncio.sleep(0.01)
        code, details = await call.code(), await call.details() or ""
        if code != grpc.StatusCode.INTERNAL or details != _CORE_WRITE_ERROR:
            return code, details
    return grpc.StatusCode.UNAVAILABLE, "the upstream ended the call without a status"
