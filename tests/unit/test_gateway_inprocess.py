"""The gateway and a worker host end to end, in this process: answers, statuses, the queue.

The same path as the service tests (caller -> gateway -> worker -> handler and
back, over real gRPC on loopback), with small handlers instead of the model, so
each test starts its servers in milliseconds (tests/support/inprocess.py).
"""

from __future__ import annotations

import asyncio
import logging
import os

import grpc
import pytest

from protos.dcf.v1 import dcf_pb2
from tests.support import call_requests, collect_call_async
from tests.support.inprocess import CHUNK_BYTES, InProcess, in_process, until
from tests.support.inprocess_handlers import BUG_TEXT

# A bound on any one call of these tests; none should come near it.
SECONDS = 30.0
KNOWN = "known: echo, raises, blocking, parts"


async def call(
    dcf: InProcess, function: str, chunks: list[bytes], params: dict[str, str] | None = None
) -> tuple[str, bytes, list[bytes]]:
    """(content type, body, results) of one Call through the gateway."""
    responses = dcf.stub.Call(call_requests(function, chunks, params), timeout=SECONDS)
    return await collect_call_async(responses)


async def refusal(
    dcf: InProcess, function: str, chunks: list[bytes], **params: str
) -> grpc.aio.AioRpcError:
    """The error a Call ends with; fails if it ends well."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(dcf, function, chunks, params)
    return raised.value


def test_echo_comes_back_byte_for_byte_in_chunks_of_the_servers_size():
    # Chunks smaller and larger than the servers' chunk size (64 KiB here), and empty.
    chunks = [os.urandom(size) for size in (1, CHUNK_BYTES * 3 + 5, 0, 1000, CHUNK_BYTES)]

    async def scenario() -> None:
        async with in_process() as dcf:
            responses = [
                response
                async for response in dcf.stub.Call(call_requests("echo", chunks), timeout=SECONDS)
            ]
            assert responses[0].header == dcf_pb2.ResponseHeader(content_type="text/plain")
            pieces = [response.chunk for response in responses[1:]]
            assert b"".join(pieces) == b"".join(chunks)
            assert all(0 < len(piece) <= CHUNK_BYTES for piece in pieces)
            assert await call(dcf, "echo-alias", [b"by ", b"its alias"]) == (
                "text/plain",
                b"by its alias",
                [],
            )
            assert await call(dcf, "echo", []) == ("text/plain", b"", [])
            reply = await dcf.stub.Invoke(
                dcf_pb2.InvokeRequest(function="echo", input=b"".join(chunks)), timeout=SECONDS
            )
            assert (reply.content_type, reply.output) == ("text/plain", b"".join(chunks))

    asyncio.run(scenario())


def test_partial_results_come_one_by_one_in_order_and_invoke_collects_them():
    expected = [b'{"part": %d}' % i for i in range(500)]

    async def scenario() -> None:
        async with in_process() as dcf:
            assert await call(dcf, "parts", [b"x"], {"count": "500"}) == (
                "application/json",
                b"",
                expected,
            )
            reply = await dcf.stub.Invoke(
                dcf_pb2.InvokeRequest(function="parts", params={"count": "500"}), timeout=SECONDS
            )
            assert (reply.content_type, reply.output) == (
                "application/json",
                b"[" + b",".join(expected) + b"]",
            )

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "raises: the input is not what it takes"),
        (
            "too-large",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "raises: the input asks for more than it may have",
        ),
        ("bug", grpc.StatusCode.INTERNAL, "internal error in the function (see the server log)"),
    ],
)
def test_a_handlers_error_reaches_the_caller_as_its_status(error, code, message, caplog):
    async def scenario() -> None:
        async with in_process() as dcf:
            refused = await refusal(dcf, "raises", [b"some ", b"input"], error=error)
            assert (refused.code(), refused.details()) == (code, message)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await dcf.stub.Invoke(
                    dcf_pb2.InvokeRequest(function="raises", input=b"x", params={"error": error}),
                    timeout=SECONDS,
                )
            assert (raised.value.code(), raised.value.details()) == (code, message)
            # Both keep serving.
            assert await call(dcf, "echo", [b"still here"]) == ("text/plain", b"still here", [])

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    # A bug's details are for the server log only.
    assert (BUG_TEXT in caplog.text) == (error == "bug")


def test_a_param_the_function_does_not_take_is_invalid_argument():
    async def scenario() -> None:
        async with in_process() as dcf:
            refused = await refusal(dcf, "raises", [b"x"], nope="1")
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.details() == "raises: unknown param nope (it takes error)"

    asyncio.run(scenario())


def test_an_unknown_function_is_not_found_and_the_message_lists_the_known_ones():
    async def scenario() -> None:
        async with in_process() as dcf:
            refused = await refusal(dcf, "nope", [b"x"])
            assert (refused.code(), refused.details()) == (
                grpc.StatusCode.NOT_FOUND,
                f"no function named 'nope' ({KNOWN})",
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await dcf.stub.Invoke(dcf_pb2.InvokeRequest(function="nope"), timeout=SECONDS)
            assert (raised.value.code(), raised.value.details()) == (
                grpc.StatusCode.NOT_FOUND,
                f"no function named 'nope' ({KNOWN})",
            )

    asyncio.run(scenario())


def header(function: str) -> dcf_pb2.CallRequest:
    return dcf_pb2.CallRequest(header=dcf_pb2.CallHeader(function=function))


def chunk(data: bytes) -> dcf_pb2.CallRequest:
    return dcf_pb2.CallRequest(chunk=data)


MALFORMED: dict[str, tuple[list[dcf_pb2.CallRequest | bytes], str]] = {
    "no header": ([chunk(b"no header")], "the first message must be a header naming the function"),
    "nothing": ([], "empty stream: the first message must be a header"),
    "a header naming nothing": ([header("")], "the header names no function"),
    "a second header": (
        [header("echo"), chunk(b"x"), header("echo")],
        "a header may only be the first message of a stream",
    ),
    "not a CallRequest": (
        [header("echo").SerializeToString(), b"\xff\xff\xff"],
        "a request message is not a valid dcf.v1.CallRequest",
    ),
}


def _as_sent(request: dcf_pb2.CallRequest | bytes) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_stream_is_invalid_argument_with_its_reason(case):
    requests, message = MALFORMED[case]

    async def scenario() -> None:
        async with in_process() as dcf:
            # Bytes as they are, so that a message need not be a valid CallRequest.
            raw_call = dcf.channel.stream_stream(
                "/dcf.v1.Gateway/Call",
                request_serializer=_as_sent,
                response_deserializer=dcf_pb2.CallResponse.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await collect_call_async(raw_call(iter(requests), timeout=SECONDS))
            assert (raised.value.code(), raised.value.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                message,
            )

    asyncio.run(scenario())


# Chunk messages framed otherwise than protobuf encodes them, each with the chunk
# protobuf reads from it: the chunk is read out of a message without decoding it only
# when that is all the message holds; any other framing is decoded, as protobuf would.
UNKNOWN_FIELD = b"\xaa\x06\x03abc"  # field 101, which CallRequest does not know
FRAMINGS: dict[str, tuple[bytes, bytes]] = {
    "canonical": (chunk(b"plain").SerializeToString(), b"plain"),
    "the chunk field twice": (
        chunk(b"first").SerializeToString() + chunk(b"second").SerializeToString(),
        b"second",
    ),
    "an unknown field after it": (chunk(b"known").SerializeToString() + UNKNOWN_FIELD, b"known"),
    "an unknown field before it": (UNKNOWN_FIELD + chunk(b"later").SerializeToString(), b"later"),
    "an empty chunk field": (b"\x12\x00", b""),
}


@pytest.mark.parametrize("hop", ["gateway", "worker"])
def test_a_chunk_is_read_as_protobuf_reads_it_however_it_is_framed(hop):
    async def scenario() -> None:
        async with in_process() as dcf:
            target = dcf.address if hop == "gateway" else dcf.workers["echo"].address
            sent = [header("echo").SerializeToString(), *(raw for raw, _ in FRAMINGS.values())]
            async with grpc.aio.insecure_channel(target) as channel:
                raw_call = channel.stream_stream(
                    f"/dcf.v1.{hop.capitalize()}/Call",
                    request_serializer=_as_sent,
                    response_deserializer=dcf_pb2.CallResponse.FromString,
                )
                answer = await collect_call_async(raw_call(iter(sent), timeout=SECONDS))
            assert answer == ("text/plain", b"".join(data for _, data in FRAMINGS.values()), [])
            for raw, data in FRAMINGS.values():  # what protobuf itself reads
                assert dcf_pb2.CallRequest.FromString(raw).chunk == data

    asyncio.run(scenario())


def test_one_runs_one_waits_and_a_third_is_refused_while_the_queue_is_full():
    """``blocking`` runs one call at a time with one place in its queue."""

    async def scenario() -> None:
        async with in_process() as dcf:
            probe = dcf.probe("blocking")
            first = asyncio.create_task(call(dcf, "blocking", [b"first ", b"call"]))
            await until(lambda: probe.started == 1, "the first call to hold the slot")
            second = asyncio.create_task(call(dcf, "blocking", [b"second call"]))
            await until(lambda: dcf.gateway.in_flight == 2, "the second call to wait its turn")
            refused = await refusal(dcf, "blocking", [b"third call"])
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.details() == (
                "blocking: queue is full (1 calls running, 1 waiting); try again later"
            )
            assert probe.started == 1
            probe.release()
            assert await asyncio.wait_for(first, SECONDS) == ("text/plain", b"first call", [])
            assert await asyncio.wait_for(second, SECONDS) == ("text/plain", b"second call", [])
            assert (probe.started, probe.finished, dcf.in_flight()) == (2, 2, 0)

    asyncio.run(scenario())


def test_cancelled_calls_leave_nothing_running():
    """A caller that goes away, running or waiting, frees its place at once, up to the
    worker; the handler thread, busy in its own code, ends at its next write."""

    async def scenario() -> None:
        async with in_process() as dcf:
            probe = dcf.probe("blocking")
            running = dcf.stub.Call(call_requests("blocking", [b"running"]), timeout=SECONDS)
            await until(lambda: probe.started == 1, "the first call to hold the slot")
            waiting = dcf.stub.Call(call_requests("blocking", [b"waiting"]), timeout=SECONDS)
            await until(lambda: dcf.gateway.in_flight == 2, "the second call to wait its turn")
            waiting.cancel()
            await until(lambda: dcf.gateway.in_flight == 1, "the waiting call to leave the queue")
            running.cancel()
            await until(lambda: dcf.in_flight() == 0, "the gateway and worker to let the call go")
            assert await running.code() == await waiting.code() == grpc.StatusCode.CANCELLED
            assert probe.finished == 0  # still in the handler's own code
            probe.release()
            await until(lambda: probe.finished == 1, "the handler to end at its next write")
            # The slot and the thread are free: the next call runs.
            assert await call(dcf, "blocking", [b"next"]) == ("text/plain", b"next", [])
            assert (probe.started, probe.finished) == (2, 2)

    asyncio.run(scenario())


def test_list_functions_names_the_servers_functions():
    async def scenario() -> None:
        async with in_process() as dcf:
            listed = await dcf.stub.ListFunctions(dcf_pb2.ListFunctionsRequest(), timeout=SECONDS)
            assert [(fn.name, list(fn.aliases)) for fn in listed.functions] == [
                ("echo", ["echo-alias"]),
                ("raises", []),
                ("blocking", []),
                ("parts", []),
            ]

    asyncio.run(scenario())
