"""The Call stream's framing, shared by the gateway and the worker: a header, then chunks.

Both read the same request stream, so both refuse a malformed one the same way
(INVALID_ARGUMENT) and count input bytes against the same limit (RESOURCE_EXHAUSTED
the moment it is crossed, without reading the rest). Whoever relays a Call (the
gateway to its worker, the HTTP front to the gateway) writes it with ``send_call``
and reads its answer with ``read_response``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError

from handlers.base import Params
from handlers.errors import InvalidInput, TooLarge
from protos.dcf.v1 import dcf_pb2
from server.rpc import wire
from server.rpc.server import decode
from server.rpc.status import CallError

log = logging.getLogger(__name__)

# The chunk fields of CallRequest and CallResponse (protos/dcf/v1/dcf.proto).
REQUEST_CHUNK = dcf_pb2.CallRequest.DESCRIPTOR.fields_by_name["chunk"].number
RESPONSE_CHUNK = dcf_pb2.CallResponse.DESCRIPTOR.fields_by_name["chunk"].number

Data = bytes | memoryview


async def read_header(requests: AsyncIterator[bytes]) -> dcf_pb2.CallHeader:
    """The first message, which must be a header naming a function.

    ``requests`` are the stream's messages undecoded (server/rpc/server.py gives every
    stream its messages so), so that the chunks after the header need not be decoded
    (``read_chunks``)."""
    try:
        first = await anext(requests)
    except StopAsyncIteration:
        raise InvalidInput("empty stream: the first message must be a header") from None
    request = decode(dcf_pb2.CallRequest, first)
    if request.WhichOneof("kind") != "header":
        raise InvalidInput("the first message must be a header naming the function")
    if not request.header.function:
        raise InvalidInput("the header names no function")
    return request.header


async def read_chunks(requests: AsyncIterator[bytes]) -> AsyncIterator[Data]:
    """The chunks after the header, each a view of the message it came in: a chunk is
    read out of its CallRequest uncopied (server/rpc/wire.py), where decoding the
    message and reading its field would copy it twice."""
    async for raw in requests:
        chunk = wire.sole(raw, REQUEST_CHUNK)
        if chunk is None:  # any other framing protobuf reads as a chunk is one too
            request = decode(dcf_pb2.CallRequest, raw)
            if request.WhichOneof("kind") != "chunk":
                raise InvalidInput("a header may only be the first message of a stream")
            chunk = memoryview(request.chunk)
        yield chunk


def read_response(raw: bytes, function: str, peer: str) -> dcf_pb2.CallResponse | memoryview:
    """A Call's response as the hop that relays it reads it: a chunk as a view of its
    message, undecoded, to be passed on as it came; anything else decoded. CallError
    INTERNAL if it is no CallResponse (``peer``: who answered, for the reason)."""
    chunk = wire.sole(raw, RESPONSE_CHUNK)
    if chunk is not None:
        return chunk
    try:
        return dcf_pb2.CallResponse.FromString(raw)
    except DecodeError:
        log.error("%s: the %s answered a malformed CallResponse", function, peer)
        raise CallError(
            grpc.StatusCode.INTERNAL, f"{function}: the {peer}'s answer is malformed"
        ) from None


def encode_chunk(field: int, chunk: Data) -> bytes:
    """A CallRequest or CallResponse holding only ``chunk`` (``field``: its chunk field),
    encoded with one copy of the chunk, where building the message and encoding it
    copies it three times."""
    return wire.with_field(field, chunk, b"")


Chunk = TypeVar("Chunk", bound=Data)


class InputLimit:
    """A function's input size limit, counted chunk by chunk as the input arrives."""

    def __init__(self, function: str, max_bytes: int) -> None:
        self.function, self.max_bytes, self.total = function, max_bytes, 0

    def count(self, chunk: Chunk) -> Chunk:
        """``chunk``, or TooLarge the moment the input passes ``max_bytes`` (0: no limit)."""
        self.total += len(chunk)
        if self.max_bytes and self.total > self.max_bytes:
            raise TooLarge(f"{self.function}: input exceeds the limit of {self.max_bytes} bytes")
        return chunk


# The payload fields of InvokeRequest and InvokeResponse (protos/dcf/v1/dcf.proto).
INVOKE_INPUT = dcf_pb2.InvokeRequest.DESCRIPTOR.fields_by_name["input"].number
INVOKE_OUTPUT = dcf_pb2.InvokeResponse.DESCRIPTOR.fields_by_name["output"].number


def split_invoke(raw: bytes) -> tuple[dcf_pb2.InvokeRequest, bytes | memoryview]:
    """An encoded InvokeRequest as its head (function and params, decoded) and its
    input, uncopied (server/rpc/wire.py). InvalidInput if it is not one."""
    try:
        data, rest = wire.without(raw, INVOKE_INPUT)
        return decode(dcf_pb2.InvokeRequest, rest), data
    except wire.WireError:  # framing the reader does not take (groups): decode it all
        request = decode(dcf_pb2.InvokeRequest, raw)
        return request, request.input


def encode_answer(content_type: str, output: bytes | memoryview) -> bytes:
    """An InvokeResponse, encoded with one copy of ``output`` rather than two."""
    rest = dcf_pb2.InvokeResponse(content_type=content_type).SerializeToString()
    return wire.with_field(INVOKE_OUTPUT, output, rest)


def output_too_large(function: str, limit: int) -> TooLarge:
    """The error of a unary answer over its limit: the gateway's and the worker's alike."""
    return TooLarge(f"{function}: output exceeds the Invoke limit of {limit} bytes; use Call")


async def limited(
    chunks: AsyncIterator[Data], function: str, max_bytes: int
) -> AsyncIterator[Data]:
    """``chunks``, raising TooLarge as soon as more than ``max_bytes`` pass."""
    limit = InputLimit(function, max_bytes)
    async for chunk in chunks:
        yield limit.count(chunk)


def check_params(function: str, given: Mapping[str, str], accepted: Mapping[str, object]) -> Params:
    """Params as the handler reads them; a name the function does not take is refused."""
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        takes = ", ".join(sorted(accepted)) or "no params"
        raise InvalidInput(f"{function}: unknown param {', '.join(unknown)} (it takes {takes})")
    return Params(given)


async def send_call(
    call: grpc.aio.StreamStreamCall,
    header: dcf_pb2.CallHeader,
    chunks: AsyncIterator[Data],
    chunk_bytes: int = 0,
) -> None:
    """Write a Call stream to the next hop: ``header``, each non-empty chunk (cut to at
    most ``chunk_bytes``, if given: a worker takes messages of about its own
    ``chunk_bytes`` only), then the half-close. ``call`` must pass bytes on as they
    are (server/rpc/server.py ``encoded``): the chunks go encoded (``encode_chunk``).
    What the writes raise when the peer has ended the call is the caller's to handle."""
    await call.write(dcf_pb2.CallRequest(header=header))
    async for chunk in chunks:
        for piece in split(chunk, chunk_bytes) if chunk_bytes else (chunk,):
            if piece:
                await call.write(encode_chunk(REQUEST_CHUNK, piece))
    await call.done_writing()


def split(data: bytes | memoryview, size: int) -> list[memoryview]:
    """Slices of at most ``size`` bytes without copying; none for empty data."""
    view = memoryview(data)
    if not view:
        return []
    return [view[i : i + size] for i in range(0, len(view), size)]
