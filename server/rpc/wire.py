"""The top level of an encoded protobuf message, read as spans of its bytes.

The gateway passes payloads through without decoding them: a unary call's
InvokeRequest goes on to the worker as it came, and the worker's InvokeResponse
back to the caller; a streamed call's chunks are read out of their CallRequests
(``sole``) and the worker's CallResponse chunks go back as they came
(server/gateway/core.py). Decoding and encoding again would copy a megabyte
payload six times on the way; this reads only the fields' keys and lengths (the
protobuf wire format's framing), so the payload is never copied here. What the
fields mean stays protobuf's to decode: ``without`` hands back the small fields as
a message of their own, for ``FromString``.
"""

from __future__ import annotations

from collections.abc import Iterator

# Wire types: https://protobuf.dev/programming-guides/encoding/#structure
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(view: memoryview, at: int) -> tuple[int, int]:
    """The varint at ``at`` and where the next thing starts."""
    value = shift = 0
    while shift < 64:
        if at >= len(view):
            raise WireError("a varint runs past the end of the message")
        byte = view[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
    raise WireError("a varint is longer than ten bytes")


def spans(raw: bytes | memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, value start, field end) for each field
    at the top level, in order; WireError where the framing is broken."""
    view = memoryview(raw)
    at = 0
    while at < len(view):
        start = at
        key, at = _varint(view, at)
        number, kind = key >> 3, key & 7
        if number == 0:
            raise WireError("a field numbered 0")
        if kind == VARINT:
            value, (_, at) = at, _varint(view, at)
        elif kind == FIXED64:
            value, at = at, at + 8
        elif kind == FIXED32:
            value, at = at, at + 4
        elif kind == LENGTH_DELIMITED:
            length, value = _varint(view, at)
            at = value + length
        else:
            raise WireError(f"wire type {kind} (groups are not used by dcf's messages)")
        if at > len(view):
            raise WireError("a field runs past the end of the message")
        yield number, kind, start, value, at


def without(raw: bytes | memoryview, number: int) -> tuple[memoryview, bytes]:
    """The value of length-delimited field ``number`` (its last occurrence, as protobuf
    reads it; empty when absent), uncopied, and the message's other fields as bytes."""
    view = memoryview(raw)
    value = view[0:0]
    rest: list[memoryview] = []
    for field, kind, start, begins, end in spans(view):
        if field != number:
            rest.append(view[start:end])
        elif kind != LENGTH_DELIMITED:
            raise WireError(f"field {number} is not length-delimited")
        else:
            value = view[begins:end]
    return value, b"".join(rest)


def sole(raw: bytes | memoryview, number: int) -> memoryview | None:
    """The value of length-delimited field ``number``, uncopied, when it is the message's
    only field; None for any other message, or bytes that are not one."""
    found = None
    try:
        for field, kind, _start, begins, end in spans(raw):
            if found is not None or field != number or kind != LENGTH_DELIMITED:
                return None
            found = memoryview(raw)[begins:end]
    except WireError:
        return None
    return found


def length_of(raw: bytes | memoryview, number: int) -> int:
    """The length of length-delimited field ``number`` (its last occurrence; 0 when absent)."""
    length = 0
    for field, kind, _start, begins, end in spans(raw):
        if field == number and kind == LENGTH_DELIMITED:
            length = end - begins
    return length


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def with_field(number: int, value: bytes | memoryview, rest: bytes) -> bytes:
    """The message ``rest`` with length-delimited field ``number`` set to ``value``,
    encoded in one copy of ``value`` (protobuf reads fields in any order)."""
    key = _encode_varint(number << 3 | LENGTH_DELIMITED)
    return b"".join((key, _encode_varint(len(value)), value, rest))
