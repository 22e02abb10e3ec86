"""dcf's one error model: what went wrong, as a reason every front maps the same way.

Handlers raise these, and so do the gateway, the worker host and the fronts, so a
handler's "input too large" and the gateway's are the same error wherever it is
seen. Each error names a machine-readable ``reason``; ``TABLE`` maps the reason to
the gRPC status (by name: this module knows nothing of gRPC) and the HTTP status
every front answers with. The reason travels beside the status (the ``dcf-reason``
trailing metadata, and ``CallFailure.reason``), so no front, client or test ever
tells two errors apart by their message text: RESOURCE_EXHAUSTED is 413 for
``TOO_LARGE``, which a retry cannot cure, and 429 for ``OVERLOADED``, which it may.

Anything a handler raises that is not a ``FunctionError`` is a bug: the host logs
its traceback and the caller gets INTERNAL with a generic message.
"""

from __future__ import annotations

from typing import NamedTuple


class Answer(NamedTuple):
    """How one reason is answered: a gRPC status name and an HTTP status."""

    status: str
    http: int


# reason -> (gRPC status, HTTP status). A status relayed without a reason (from an
# older peer, or grpcio itself) takes the first reason listed for it: TOO_LARGE
# comes before OVERLOADED, so a bare RESOURCE_EXHAUSTED is never retried blindly.
TABLE: dict[str, Answer] = {
    "INVALID_INPUT": Answer("INVALID_ARGUMENT", 400),
    "UNAUTHENTICATED": Answer("UNAUTHENTICATED", 401),
    "PERMISSION_DENIED": Answer("PERMISSION_DENIED", 403),
    "NOT_FOUND": Answer("NOT_FOUND", 404),
    "TOO_LARGE": Answer("RESOURCE_EXHAUSTED", 413),
    "OVERLOADED": Answer("RESOURCE_EXHAUSTED", 429),
    "UNAVAILABLE": Answer("UNAVAILABLE", 503),
    "DEADLINE_EXCEEDED": Answer("DEADLINE_EXCEEDED", 504),
    "CANCELLED": Answer("CANCELLED", 500),
    "INTERNAL": Answer("INTERNAL", 500),
}
# The trailing metadata key the reason travels in.
REASON_KEY = "dcf-reason"
# What an HTTP client is told to wait before it tries an OVERLOADED call again, in seconds.
RETRY_AFTER_SECONDS = 1


def reason_for(status: str, reason: str = "") -> str:
    """``reason`` if it is a known reason for ``status``; else the status's default reason."""
    if reason in TABLE and TABLE[reason].status == status:
        return reason
    for name, answer in TABLE.items():
        if answer.status == status:
            return name
    return "INTERNAL"


def http_status(reason: str) -> int:
    """The HTTP status for ``reason`` (500 for one this table does not know)."""
    answer = TABLE.get(reason)
    return answer.http if answer else 500


class FunctionError(Exception):
    """An error the caller should see, with a one-line reason.

    Subclasses set ``reason`` (a key of ``TABLE``); ``status`` follows from it.
    """

    reason: str = "INTERNAL"
    status: str = "INTERNAL"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.status = TABLE[cls.reason].status

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(FunctionError):
    """The input or a param is wrong; the same call will fail again."""

    reason = "INVALID_INPUT"


class NotFound(FunctionError):
    reason = "NOT_FOUND"


class TooLarge(FunctionError):
    """The input, or a size a param asks for, is over the function's limit."""

    reason = "TOO_LARGE"


class Overloaded(FunctionError):
    """Too many calls at once: the function's queue is full. Worth trying again later."""

    reason = "OVERLOADED"


class DeadlineExceeded(FunctionError):
    reason = "DEADLINE_EXCEEDED"


class Unavailable(FunctionError):
    """The function cannot serve now (no worker, no model); another try may succeed."""

    reason = "UNAVAILABLE"


class Cancelled(Exception):
    """Raised inside a handler thread when its caller went away; let it propagate."""
