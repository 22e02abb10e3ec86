"""One way to start a gRPC server, shared by every role and by the tests.

Every server dcf runs has standard health checking and server reflection, binds
its port with SO_REUSEPORT off (so two servers never silently share a port),
reports the port it really bound (tests pass port 0), and shuts down the way
Kubernetes expects: health goes NOT_SERVING first, then calls in flight get a grace
period to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import message as protobuf_message
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from handlers.errors import InvalidInput
from server.rpc.address import join

log = logging.getLogger(__name__)

Adder = Callable[[grpc.aio.Server], None]
M = TypeVar("M", bound=protobuf_message.Message)


class Malformed:
    """What a unary request that is not a valid message of its type decodes to.

    gRPC would answer a message that fails to parse with UNKNOWN; it is the caller's
    bad input, INVALID_ARGUMENT, and the method is refused before the servicer runs.
    Streams (Call) take their messages undecoded and refuse a malformed one in their
    framing (server/rpc/framing.py).
    """

    def __init__(self, type_name: str) -> None:
        self.message = f"a request message is not a valid {type_name}"


def decode(message_type: type[M], raw: bytes) -> M:
    """A request the servicer takes undecoded (``RAW_REQUESTS``); InvalidInput if malformed."""
    try:
        return message_type.FromString(raw)
    except protobuf_message.DecodeError:
        raise InvalidInput(Malformed(message_type.DESCRIPTOR.full_name).message) from None


def _tolerant(parse: Callable[[bytes], Any], type_name: str) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except protobuf_message.DecodeError:
            return Malformed(type_name)

    return deserialize


def _refusing_malformed(
    behaviour: Callable[..., Any], streaming_response: bool
) -> Callable[..., Any]:
    """A unary-request method that answers INVALID_ARGUMENT to a malformed request."""
    if streaming_response:

        async def stream_out(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            async for response in behaviour(request, context):
                yield response

        return stream_out

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behaviour(request, context)

    return unary


def encoded(message: Any) -> bytes:
    """A message's bytes: a message encoded, or bytes passed on as they are (a
    servicer's answer, or a request on its way to the next hop, encoded already)."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def servicer_adder(servicer: object, service: ServiceDescriptor) -> Adder:
    """Registers ``servicer``'s methods for ``service``, malformed requests refused as
    INVALID_ARGUMENT (the generated ``add_..._to_server`` would let them be UNKNOWN).

    Unary methods the servicer names in ``RAW_REQUESTS`` get the request's bytes
    undecoded, to weigh a large message before paying for its decoded copy. Streamed
    requests always come undecoded: their framing (server/rpc/framing.py) decodes
    what it must and reads chunks out uncopied. Any method may answer bytes, an
    encoded response passed on as it is.
    """
    raw: frozenset[str] = getattr(servicer, "RAW_REQUESTS", frozenset())
    makers = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {}
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)
        behaviour = getattr(servicer, method.name)
        deserializer = None
        if not method.client_streaming and method.name not in raw:
            deserializer = _tolerant(request.FromString, method.input_type.full_name)
            behaviour = _refusing_malformed(behaviour, method.server_streaming)
        handlers[method.name] = makers[method.client_streaming, method.server_streaming](
            behaviour,
            request_deserializer=deserializer,
            response_serializer=encoded,
        )
    generic = grpc.method_handlers_generic_handler(service.full_name, handlers)

    def add(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((generic,))
        server.add_registered_method_handlers(service.full_name, handlers)

    return add


def message_options(
    max_message_bytes: int, max_send_bytes: int | None = None
) -> list[tuple[str, int]]:
    """Channel/server options allowing messages up to ``max_message_bytes`` both ways
    (sent ones up to ``max_send_bytes`` instead, if given).

    BDP probing is off: it grows HTTP/2 flow-control windows toward a fast peer, and
    on a pass-through those windows are bytes held in memory (about 40 MB more in the
    gateway while 1 GiB streamed). A fixed 4 MiB stream window keeps the throughput
    (measured: 254 MB/s with it, 155 MB/s with the 64 KiB default) at a known cost.
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_send_bytes or max_message_bytes),
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 4 << 20),
    ]


@dataclass
class Served:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer

    async def set_serving(self, service: str, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(service, status)


@contextlib.asynccontextmanager
async def serve(
    adders: Iterable[Adder],
    service_names: Iterable[str],
    host: str,
    port: int,
    max_message_bytes: int,
    grace_seconds: float,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    in_flight: Callable[[], int] | None = None,
    max_connection_age_seconds: float | None = None,
    ready: bool = True,
    max_send_bytes: int | None = None,
    unix_socket: str = "",
) -> AsyncIterator[Served]:
    """Start a server with ``adders``' servicers plus health and reflection; stop it on exit.

    With ``credentials`` it speaks TLS only; ``interceptors`` see every call.
    ``in_flight`` counts the servicers' own calls: on exit the server waits for it to
    reach zero (up to the grace period) rather than for every stream, since peers'
    health watches never end by themselves. ``max_connection_age_seconds`` makes
    clients reconnect now and then (streams in progress finish first), so a gateway
    balancing over a DNS name notices replicas added since it last resolved it.
    With ``ready`` false the server's overall health (the "" service) starts
    NOT_SERVING, for the caller to set once what it depends on is up.
    ``max_send_bytes``: the largest answer, where it differs from the largest request.
    ``unix_socket``: a path to listen on as well, without TLS (same-machine peers only).
    """
    options = [*message_options(max_message_bytes, max_send_bytes), ("grpc.so_reuseport", 0)]
    if max_connection_age_seconds:
        options.append(("grpc.max_connection_age_ms", int(max_connection_age_seconds * 1000)))
    server = grpc.aio.server(options=options, interceptors=list(interceptors))
    names = list(service_names)
    for add in adders:
        add(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    address = join(host, port)
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if not bound:
        raise OSError(f"cannot listen on {address}")
    if unix_socket and not server.add_insecure_port(f"unix:{unix_socket}"):
        raise OSError(f"cannot listen on unix:{unix_socket}")
    await server.start()
    served = Served(server=server, port=bound, health=health_servicer)
    await served.set_serving("", ready)
    for name in names:
        await served.set_serving(name, True)
    also = f" and unix:{unix_socket}" if unix_socket else ""
    log.info("listening on %s:%d%s (%s)", host, bound, also, ", ".join(names))
    try:
        yield served
    finally:
        await health_servicer.enter_graceful_shutdown()
        grace = grace_seconds
        if in_flight is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace_seconds
            while in_flight() > 0 and loop.time() < deadline:  # noqa: ASYNC110 - a count, no event
                await asyncio.sleep(0.05)
            grace = max(0.0, deadline - loop.time()) if in_flight() else 0.5
        await server.stop(grace)
