"""The Call stream's framing, shared by the gateway and the worker: a header, then chunks.

Both read the same request stream, so both refuse a malformed one the same way
(INVALID_ARGUMENT) and count input bytes against the same limit (RESOURCE_EXHAUSTED
the moment it is crossed, without reading the rest).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TypeVar

import grpc

from handlers.base import Params
from handlers.errors import InvalidInput, TooLarge
from protos.dcf.v1 import dcf_pb2
from server.rpc import wire
from server.rpc.server import Malformed, decode


async def read_header(requests: AsyncIterator[dcf_pb2.CallRequest]) -> dcf_pb2.CallHeader:
    """The first message, which must be a header naming a function."""
    try:
        first = await anext(requests)
    except StopAsyncIteration:
        raise InvalidInput("empty stream: the first message must be a header") from None
    if isinstance(first, Malformed):
        raise InvalidInput(first.message)
    if first.WhichOneof("kind") != "header":
        raise InvalidInput("the first message must be a header naming the function")
    if not first.header.function:
        raise InvalidInput("the header names no function")
    return first.header


async def read_chunks(requests: AsyncIterator[dcf_pb2.CallRequest]) -> AsyncIterator[bytes]:
    """The chunks after the header."""
    async for request in requests:
        if request.WhichOneof("kind") != "chunk":
            if isinstance(request, Malformed):
                raise InvalidInput(request.message)
            raise InvalidInput("a header may only be the first message of a stream")
        yield request.chunk


Chunk = TypeVar("Chunk", bytes, memoryview)


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
    chunks: AsyncIterator[bytes], function: str, max_bytes: int
) -> AsyncIterator[bytes]:
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
    chunks: AsyncIterator[bytes],
    chunk_bytes: int = 0,
) -> None:
    """Write a Call stream to the next hop: ``header``, each non-empty chunk (cut to at
    most ``chunk_bytes``, if given), then the half-close. What the writes raise when
    the peer has ended the call is the caller's to handle."""
    await call.write(dcf_pb2.CallRequest(header=header))
    async for chunk in chunks:
        for piece in resplit(chunk, chunk_bytes) if chunk_bytes else (chunk,):
            if piece:
                await call.write(dcf_pb2.CallRequest(chunk=piece))
    await call.done_writing()


def resplit(chunk: bytes, size: int) -> Iterable[bytes]:
    """``chunk`` as pieces of at most ``size`` bytes, for the next hop.

    Callers choose their own chunk sizes; a worker takes messages of about its
    ``chunk_bytes`` only, so the gateway cuts bigger chunks before passing them on
    (without a copy for the usual chunk, which is small enough already).
    """
    if len(chunk) <= size:
        return (chunk,)
    return [bytes(piece) for piece in split(chunk, size)]


def split(data: bytes | memoryview, size: int) -> list[memoryview]:
    """Slices of at most ``size`` bytes without copying; one empty slice for empty data."""
    view = memoryview(data)
    if not view:
        return []
    return [view[i : i + size] for i in range(0, len(view), size)]
