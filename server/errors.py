"""The one place where errors become gRPC statuses.

Handlers and the gateway raise ``handlers.base.FunctionError`` subclasses, which
carry a status name and a one-line reason; this module turns them into statuses.
Anything else is a bug: its traceback goes to the server log and the caller gets
INTERNAL with a generic message, never the traceback.
"""

from __future__ import annotations

import logging

import grpc

from handlers.base import FunctionError

log = logging.getLogger(__name__)


class CallError(FunctionError):
    """A status to return as is, e.g. one relayed from a worker."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = code.name


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
    """End the call with the status for ``exc``; never returns."""
    code, message = status_of(exc)
    await context.abort(code, message)
