"""The library's failures: one exception class per status family, all of them ``DcfError``.

A caller decides what to do by the class (retry an ``Overloaded`` call later, fix the
input of an ``InvalidInput`` one) and never by the message, whose wording may change.
The class comes from the machine-readable reason the server sends (the trailing
metadata key ``dcf-reason``, or the ``reason`` of a CallFailure record) when there is
one, else from the gRPC status code. The one status that needs the reason is
RESOURCE_EXHAUSTED: a full queue (``Overloaded``, worth retrying) and an input over a
limit (``TooLarge``, which no retry cures) share it; without a reason it is taken as
``TooLarge``, the safe reading, since retrying a too-large input only loads the server.
"""

from __future__ import annotations


class DcfError(Exception):
    """A call that failed: the status a dcf server (or gRPC itself) ended it with.

    ``code`` is the gRPC status name (``"NOT_FOUND"``, ``"RESOURCE_EXHAUSTED"``...),
    ``message`` the server's one-line reason, meant for people; ``request_id`` the id
    the gateway logged the call under (None when no server answered, e.g. nothing
    listens at the address); ``reason`` the machine-readable reason the server sent
    (``"OVERLOADED"``, ``"TOO_LARGE"``...), None from a server that sends none.
    """

    def __init__(
        self,
        code: str,
        message: str,
        request_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.reason = reason


class NotFound(DcfError):
    """No function of that name (the message lists the known ones)."""


class InvalidInput(DcfError):
    """The input or a param was refused: not an image, a truncated WAV, an unknown param."""


class TooLarge(DcfError):
    """The input, or a size a param asks for, is over a limit: a retry cannot cure it."""


class Overloaded(DcfError):
    """The function is busy (its queue is full): the same call may succeed a moment later."""


class Unavailable(DcfError):
    """No server answered at the address, or the function's workers are down."""


class DeadlineExceeded(DcfError):
    """The call's deadline passed, or its upload idled or crawled."""


class Unauthenticated(DcfError):
    """The gateway needs a token and the call gave none."""


class PermissionDenied(DcfError):
    """The token the call gave is not one the gateway accepts."""


class Cancelled(DcfError):
    """The call was cancelled, by this program or by the server shutting down."""


class InternalError(DcfError):
    """A fault in the function or the server; the details are in the server's log."""


# The reasons a dcf server sends, and the status names: what each one means here.
_BY_REASON: dict[str, type[DcfError]] = {
    "INVALID_INPUT": InvalidInput,
    "NOT_FOUND": NotFound,
    "TOO_LARGE": TooLarge,
    "OVERLOADED": Overloaded,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "UNAVAILABLE": Unavailable,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
    "CANCELLED": Cancelled,
    "INTERNAL": InternalError,
}
_BY_CODE: dict[str, type[DcfError]] = {
    "INVALID_ARGUMENT": InvalidInput,
    "OUT_OF_RANGE": InvalidInput,
    "FAILED_PRECONDITION": InvalidInput,
    "NOT_FOUND": NotFound,
    "RESOURCE_EXHAUSTED": TooLarge,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
    "CANCELLED": Cancelled,
    "INTERNAL": InternalError,
    "UNKNOWN": InternalError,
    "DATA_LOSS": InternalError,
}


def error_for(
    code: str, message: str, request_id: str | None = None, reason: str | None = None
) -> DcfError:
    """The exception for a call that ended with status ``code`` (and ``reason``, if sent).

    A code of no family here (UNIMPLEMENTED from a server that is not dcf...) is a
    plain ``DcfError``.
    """
    kind = _BY_REASON.get(reason or "") or _BY_CODE.get(code, DcfError)
    return kind(code, message, request_id, reason or None)
