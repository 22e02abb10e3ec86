"""Whole request bodies, read within a size limit and a byte budget.

The /v1 API streams bodies and never holds one; Open Inference's infer (/v2) is
unary, its body one JSON object (and binary tensors) that must be whole before it
can be parsed. So each is read into one buffer no larger than its limit: a body
whose Content-Length is over the limit is refused before a byte of it is read, and
a chunked one the moment it crosses the limit. The bodies being read and held at
once share a budget (the gateway's ``max_unary_bytes``, as its unary calls do), so
a thousand large uploads cannot each take their fill: past it a body is refused
with OVERLOADED, except that one body alone is always let through.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.requests import Request

from handlers.errors import InvalidInput, Overloaded, TooLarge
from server.admission import ByteBudget

MiB = 1 << 20
# Room beside a body's payload for its JSON: names, shapes, parameters.
HEADER_ROOM = 1 << 16


@dataclass(frozen=True)
class BodyLimits:
    """How large an infer body may be, and what all of them together may hold."""

    # The largest input a unary call takes (the gateway's max_invoke_bytes).
    max_invoke_bytes: int = 64 * MiB
    # What the bodies being read and held at once may hold together (max_unary_bytes).
    max_unary_bytes: int = 128 * MiB

    def body_bytes(self, binary: bool) -> int:
        """The largest body: the input as binary tensor data, or in base64 inside JSON."""
        payload = self.max_invoke_bytes if binary else 4 * math.ceil(self.max_invoke_bytes / 3)
        return payload + HEADER_ROOM


def body_left(request: Request) -> float:
    """How much of the body ``bounded_body`` has left unread: 0 once it read it all,
    infinity when the body is chunked and unread (its size is unknown)."""
    if getattr(request.state, "body_read", False):
        return 0
    length = declared_length(request)
    if length is None:
        return math.inf if "transfer-encoding" in request.headers else 0
    return length


def declared_length(request: Request) -> int | None:
    """The body's Content-Length, None for a chunked body (h11 has checked its form)."""
    value = request.headers.get("content-length")
    return int(value) if value is not None else None


@contextlib.asynccontextmanager
async def bounded_body(
    request: Request, limit: int, budget: ByteBudget, hint: str = ""
) -> AsyncIterator[bytearray]:
    """The whole body, held against ``budget`` for the block.

    Raises TooLarge past ``limit`` (before reading, when Content-Length says so; its
    message ends with ``hint``), Overloaded when the budget is spent, InvalidInput
    for a compressed body, and lets ClientDisconnect through when the client goes away.
    """
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise InvalidInput(
            f"Content-Encoding {encoding[:40]!r} is not supported: send the body as is"
        )
    length = declared_length(request)
    if length is not None and length > limit:
        raise TooLarge(f"a body of {length} bytes is over the limit of {limit} bytes{hint}")
    held = 0
    try:
        if length is not None:
            _take(budget, length, held)
            held = length
            buffer = bytearray(length)
            await _fill(request, buffer)
        else:
            buffer = bytearray()
            async for chunk in request.stream():
                if len(buffer) + len(chunk) > limit:
                    raise TooLarge(f"the body is over the limit of {limit} bytes{hint}")
                _take(budget, len(chunk), held)
                held += len(chunk)
                buffer += chunk
        request.state.body_read = True
        yield buffer
    finally:
        budget.give(held)


def _take(budget: ByteBudget, size: int, mine: int) -> None:
    """Count ``size`` more bytes of a body that holds ``mine`` already; Overloaded if
    other bodies hold bytes and together they would pass the budget (one body alone
    always passes)."""
    others = budget.held - mine
    if others and budget.held + size > budget.limit:
        raise Overloaded(
            f"infer bodies in flight hold {others} bytes already, at most {budget.limit} "
            "at once; try again later"
        )
    budget.grow(size)


async def _fill(request: Request, buffer: bytearray) -> None:
    """Read a body of ``len(buffer)`` bytes into ``buffer`` (h11 holds it to its length)."""
    filled = 0
    with memoryview(buffer) as view:
        async for chunk in request.stream():
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
