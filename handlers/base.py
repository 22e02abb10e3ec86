"""What a function is, seen from the handler's side: bytes and params in, parts out.

Handlers know nothing of gRPC or HTTP. The worker host (server/worker/servicer.py) calls
``Function.handle`` on a worker thread, so a handler may block on decoding,
inference or encoding without stalling the event loop that answers health checks.
The host feeds ``Request.chunks`` as they arrive under flow control, enforces the
input size limit before the handler sees a byte, and streams back each part of the
``Reply`` as soon as the handler yields it.

Errors a caller should see are raised as ``FunctionError`` subclasses; each carries a
status name (a plain string, mapped to a gRPC or HTTP status at the edge) and a
one-line reason. Anything else a handler raises is a bug: the host logs the
traceback and the caller gets INTERNAL with a generic message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field


class FunctionError(Exception):
    """An error the caller should see, with a one-line reason."""

    status = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(FunctionError):
    status = "INVALID_ARGUMENT"


class NotFound(FunctionError):
    status = "NOT_FOUND"


class TooLarge(FunctionError):
    """The input, or a size a param asks for, is over the function's limit."""

    status = "RESOURCE_EXHAUSTED"


class Overloaded(FunctionError):
    """Too many calls at once: the function's queue is full. Worth trying again later."""

    status = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(FunctionError):
    status = "DEADLINE_EXCEEDED"


class Unavailable(FunctionError):
    status = "UNAVAILABLE"


class Cancelled(Exception):
    """Raised inside a handler thread when its caller went away; let it propagate."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class Params:
    """A function's params, given as strings on the wire, read with types and bounds.

    Every getter raises InvalidInput naming the param, so a typo in a value is a
    clear 400/INVALID_ARGUMENT rather than a traceback.
    """

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values = dict(values or {})

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def as_dict(self) -> dict[str, str]:
        return dict(self._values)

    def get_str(self, name: str, default: str, choices: Iterable[str] | None = None) -> str:
        value = self._values.get(name, default)
        if choices is not None:
            allowed = list(choices)
            if value not in allowed:
                raise InvalidInput(
                    f"param {name}: expected one of {', '.join(allowed)}, got {value!r}"
                )
        return value

    def get_float(
        self, name: str, default: float, *, low: float | None = None, high: float | None = None
    ) -> float:
        raw = self._values.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if (
            not math.isfinite(value)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            raise InvalidInput(f"param {name}: expected a number{_range(low, high)}, got {raw!r}")
        return value

    def get_int(
        self, name: str, default: int, *, low: int | None = None, high: int | None = None
    ) -> int:
        raw = self._values.get(name)
        if raw is None:
            return default
        try:
            value = int(raw.strip())
        except ValueError:
            raise InvalidInput(
                f"param {name}: expected a whole number{_range(low, high)}, got {raw!r}"
            ) from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise InvalidInput(
                f"param {name}: expected a whole number{_range(low, high)}, got {raw!r}"
            )
        return value

    def get_bool(self, name: str, default: bool) -> bool:
        raw = self._values.get(name)
        if raw is None:
            return default
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise InvalidInput(f"param {name}: expected true or false, got {raw!r}")


def _range(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" in [{low:g}, {high:g}]"
    if low is not None:
        return f" >= {low:g}"
    if high is not None:
        return f" <= {high:g}"
    return ""


@dataclass
class Request:
    """One call's input: params, and the input bytes as an iterator of chunks.

    ``chunks`` blocks until the next chunk arrives and raises Cancelled if the
    caller goes away; the host has already enforced the size limit.
    """

    params: Params
    chunks: Iterator[bytes]

    def read(self) -> bytes:
        """The whole input, for functions that need all of it (an image, a WAV)."""
        return b"".join(self.chunks)


@dataclass
class Reply:
    """A function's answer: its content type and the parts to stream back.

    With ``partial_results`` false the parts are consecutive chunks of one body;
    with it true each part is one complete result (a JSON document), sent as one
    message and printed as one line; the unary fronts gather them with
    ``Function.collect`` into one application/json document. ``parts`` may be a
    generator: the host pulls from it lazily and closes it if the caller goes away,
    so handlers release resources in ``finally``.
    """

    content_type: str
    parts: Iterable[bytes]
    partial_results: bool = False


def join_parts(parts: Iterable[bytes]) -> bytes:
    return b"".join(parts)


@dataclass(frozen=True)
class Function:
    """What a handler module's ``create(options)`` returns: the loaded, ready function.

    Its name, description, content types and limits live in the registry
    (server/registry.py), which the gateway reads without importing any handler.
    ``collect`` turns the parts of a partial-results reply into the one document
    that the unary Invoke answers (ssd-video's per-frame lines into one JSON).
    ``params`` names the params the function accepts, with a short description;
    anything else is refused as INVALID_ARGUMENT before the handler runs.
    ``check`` validates the params' values before any input is read (raising
    InvalidInput), so that a call the handler would refuse costs no upload.
    ``close`` releases what ``create`` loaded, when the worker stops.
    """

    handle: Callable[[Request], Reply]
    params: Mapping[str, str] = field(default_factory=dict)
    check: Callable[[Params], object] = lambda params: None
    collect: Callable[[Iterable[bytes]], bytes] = join_parts
    close: Callable[[], None] = lambda: None
