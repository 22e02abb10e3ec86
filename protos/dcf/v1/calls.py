"""A dcf.v1 Call stream as every caller builds and reads it: a header, then chunks.

Beside the generated code so that any program holding the contract has it: the
client, the tests and the benchmarks all frame their calls with these two.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from protos.dcf.v1 import dcf_pb2


def call_requests(
    function: str,
    chunks: Iterable[bytes],
    params: Mapping[str, str] | None = None,
    *,
    collect: bool = False,
) -> Iterator[dcf_pb2.CallRequest]:
    """The header naming ``function`` (with ``params``), then each of ``chunks`` as it comes.

    ``collect`` asks a function with partial results to send them as one answer.
    """
    header = dcf_pb2.CallHeader(function=function, collect=collect)
    header.params.update(params or {})
    yield dcf_pb2.CallRequest(header=header)
    for chunk in chunks:
        yield dcf_pb2.CallRequest(chunk=chunk)


def collect_call(responses: Iterable[dcf_pb2.CallResponse]) -> tuple[str, bytes, list[bytes]]:
    """(content type, the chunks joined, the partial results) of a Call's responses.

    A failure record is left to the status that follows it, which the iteration raises.
    """
    content_type, body, results = "", [], []
    for response in responses:
        kind = response.WhichOneof("kind")
        if kind == "header":
            content_type = response.header.content_type
        elif kind == "chunk":
            body.append(response.chunk)
        elif kind == "result":
            results.append(response.result)
    return content_type, b"".join(body), results
