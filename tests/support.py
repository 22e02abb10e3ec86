"""What tests share: Call streams built and collected, and the server harness.

Tests import helpers from here only, never from conftest, another test module or
bench/: a conftest is pytest's to load, and importing one as a module loads it a
second time under another name. The harness that starts real servers lives in
server/testing.py (the benchmarks use it too); it is re-exported here so that a
test names one module for all it needs, wherever the harness moves.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable, Iterator, Mapping

from protos.dcf.v1 import dcf_pb2
from server.testing import (
    REGISTRY,
    ROOT,
    Service,
    free_port,
    metric,
    start_service,
    wait_listening,
    wait_serving,
    write_registry,
)

__all__ = [
    "REGISTRY",
    "ROOT",
    "Service",
    "call_requests",
    "collect_call",
    "collect_call_async",
    "free_port",
    "metric",
    "start_service",
    "wait_listening",
    "wait_serving",
    "write_registry",
]


def call_requests(
    function: str, chunks: Iterable[bytes], params: Mapping[str, str] | None = None
) -> Iterator[dcf_pb2.CallRequest]:
    """A Call's request stream: the header naming ``function``, then ``chunks`` as they come."""
    header = dcf_pb2.CallHeader(function=function)
    header.params.update(params or {})
    yield dcf_pb2.CallRequest(header=header)
    for chunk in chunks:
        yield dcf_pb2.CallRequest(chunk=chunk)


def collect_call(responses: Iterable[dcf_pb2.CallResponse]) -> tuple[str, bytes, list[bytes]]:
    """(content type, body from chunks, list of results) of a Call's responses."""
    content_type, body, results = "", [], []
    for response in responses:
        kind = response.WhichOneof("kind")
        if kind == "header":
            content_type = response.header.content_type
        elif kind == "chunk":
            body.append(response.chunk)
        else:
            results.append(response.result)
    return content_type, b"".join(body), results


async def collect_call_async(
    responses: AsyncIterable[dcf_pb2.CallResponse],
) -> tuple[str, bytes, list[bytes]]:
    """``collect_call`` for a call made on an asyncio channel."""
    return collect_call([response async for response in responses])
