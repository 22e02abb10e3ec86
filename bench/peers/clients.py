"""The client side of the peer benchmark: one way to call each kind of server.

Every server gets the same load code (bench.load.measure on grpc.aio channels from
this process); only the call differs: Open Inference ``ModelInfer`` for MLServer
and Triton, sent as Triton's clients send it (one BYTES input in
``raw_input_contents``: a 4-byte little-endian length, then the bytes), and
dcf.v1 ``Invoke`` (and ``Call`` for the streamed echo) for dcf.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable

import grpc

from protos.inference import grpc_predict_v2_pb2 as pb
from protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc

MiB = 1 << 20
# Room for a 256 MiB echo and its framing, both ways.
BIG_MESSAGES = [
    ("grpc.max_receive_message_length", 512 * MiB),
    ("grpc.max_send_message_length", 512 * MiB),
]

OneCall = Callable[[], Awaitable[bytes]]


def infer_request(model: str, data: bytes) -> pb.ModelInferRequest:
    """A ModelInfer request of one BYTES element, in raw_input_contents."""
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(struct.pack("<I", len(data)) + data)
    return request


def output_bytes(reply: pb.ModelInferResponse) -> bytes:
    """The one BYTES element of a ModelInfer answer, raw or in contents."""
    if reply.raw_output_contents:
        raw = reply.raw_output_contents[0]
        (size,) = struct.unpack_from("<I", raw)
        return raw[4 : 4 + size]
    return reply.outputs[0].contents.bytes_contents[0]


def infer(channel: grpc.aio.Channel, model: str, data: bytes) -> OneCall:
    """A coroutine function making one ModelInfer of ``model`` on ``data``."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = infer_request(model, data)

    async def one() -> bytes:
        return output_bytes(await stub.ModelInfer(request))

    return one


async def wait_ready(address: str, models: list[str], timeout: float, alive: Callable) -> None:
    """Until the server at ``address`` says it and every model are ready.

    ``alive()`` is checked meanwhile: a server that exits fails at once.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if not alive():
                raise RuntimeError(f"the server at {address} exited while starting")
            try:
                if (await stub.ServerReady(pb.ServerReadyRequest(), timeout=2)).ready and all(
                    [
                        (await stub.ModelReady(pb.ModelReadyRequest(name=m), timeout=2)).ready
                        for m in models
                    ]
                ):
                    return
                last = "not ready"
            except grpc.aio.AioRpcError as exc:
                last = exc.code().name
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{address} not ready after {timeout:.0f} s ({last})")
