"""What a function is, seen from the handler's side: bytes and params in, parts out.

Handlers know nothing of gRPC or HTTP. The worker host (server/worker/servicer.py) calls
``Function.handle`` on a worker thread, so a handler may block on decoding,
inference or encoding without stalling the event loop that answers health checks.
The host feeds ``Request.chunks`` as they arrive under flow control, enforces the
input size limit before the handler sees a byte, and streams back each part of the
``Reply`` as soon as the handler yields it.

Errors a caller should see are raised as ``FunctionError`` subclasses from
``handlers.errors`` (the one error model, which every front maps the same way), each
with a one-line message. Anything else a handler raises is a bug: the host logs the
traceback and the caller gets INTERNAL with a generic message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from handlers.errors import InvalidInput

Value = float | int | bool | str


@dataclass(frozen=True)
class Param:
    """One param a function takes, declared once, in its handler module's ``PARAMS``.

    The handler reads it with ``read``; the worker refuses any param a function does
    not declare; ListFunctions, the HTTP API and its OpenAPI description show its
    type, bounds and default from here, so what a caller is told is what is checked.
    """

    name: str
    type: str  # "number", "integer", "boolean" or "string"
    help: str
    default: Value | None = None  # None: none (``shown_default`` says what happens)
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    shown_default: str = ""  # the default in words, when it is not a value
    note: str = ""  # said after the default: limits across params, ...

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise ValueError(f"param {self.name}: type must be one of {', '.join(PARAM_TYPES)}")

    @property
    def wire_default(self) -> str:
        """The default as a caller would send it ("0.5", "true", "jet"); "" for none."""
        if self.default is None:
            return ""
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)

    def describe(self) -> str:
        """One line for people: what it does, its range or choices, and its default."""
        text = self.help
        if self.choices:
            text += f": {' or '.join(self.choices)}"
        if self.low is not None and self.high is not None:
            text += f", {self.low:g}..{self.high:g}"
        elif self.low is not None:
            text += f", at least {self.low:g}"
        default = self.wire_default or self.shown_default
        if default:
            text += f" (default {default})" if self.wire_default else f" (default: {default})"
        return text + (f"; {self.note}" if self.note else "")

    def read(self, params: Params) -> Value | None:
        """This param's value in a call's ``params``, checked; its default when absent."""
        if self.name not in params:
            return self.default
        if self.type == "number":
            return self.number(params)
        if self.type == "integer":
            return self.integer(params)
        if self.type == "boolean":
            return self.flag(params)
        return self.text(params)

    # Typed readers, for handler code: each checks the value as ``read`` does, and
    # raises TypeError for an absent param declared without a default (a handler bug:
    # read such a param only when ``name in params``).
    def number(self, params: Params) -> float:
        return params.get_float(
            self.name, float(self._fallback(params)), low=self.low, high=self.high
        )

    def integer(self, params: Params) -> int:
        low = None if self.low is None else int(self.low)
        high = None if self.high is None else int(self.high)
        return params.get_int(self.name, int(self._fallback(params)), low=low, high=high)

    def flag(self, params: Params) -> bool:
        return params.get_bool(self.name, bool(self._fallback(params)))

    def text(self, params: Params) -> str:
        return params.get_str(self.name, str(self._fallback(params)), self.choices or None)

    def _fallback(self, params: Params) -> Value:
        """What the getters fall back on: the default, needed only when the param is absent."""
        if self.default is not None:
            return self.default
        if self.name in params:
            return 0  # never used: the value given is read
        raise TypeError(f"param {self.name} has no default: read it only when given")


PARAM_TYPES = ("number", "integer", "boolean", "string")


def declare(*params: Param) -> Mapping[str, Param]:
    """A handler module's ``PARAMS``: its params by name, in the order given."""
    return {param.name: param for param in params}


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

    ``path``, when not None, opens the same whole input as a file while the call
    lasts: the host had it on disk already (a large upload received whole). A
    handler that needs a file (FFmpeg reads a path) reads it there instead of
    copying ``chunks`` to a file of its own; it reads one or the other, not both.
    """

    params: Params
    chunks: Iterator[bytes]
    path: str | None = None

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
    (server/config.py, server/functions.yaml); its params in its module's ``PARAMS``,
    which the gateway reads too, so a function module imports nothing heavy.
    ``collect`` turns the parts of a partial-results reply into the one document
    that the unary Invoke answers (ssd-video's per-frame lines into one JSON).
    ``params`` are the params the function accepts (its module's ``PARAMS``);
    anything else is refused as INVALID_ARGUMENT before the handler runs.
    ``check`` validates the params' values before any input is read (raising
    InvalidInput), so that a call the handler would refuse costs no upload.
    ``close`` releases what ``create`` loaded, when the worker stops.
    """

    handle: Callable[[Request], Reply]
    params: Mapping[str, Param] = field(default_factory=dict)
    check: Callable[[Params], object] = lambda params: None
    collect: Callable[[Iterable[bytes]], bytes] = join_parts
    close: Callable[[], None] = lambda: None
