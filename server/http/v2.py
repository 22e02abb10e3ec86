"""Open Inference over HTTP (KServe v2 REST): each route is one call of the gateway's
``inference.GRPCInferenceService``, so the models, their readiness and every check
are the gRPC adapter's own (server/oip/).

    GET  /v2                                              server metadata
    GET  /v2/health/live, /v2/health/ready                200, or 400 when not
    GET  /v2/models/{name}[/versions/{version}]           model metadata
    GET  /v2/models/{name}[/versions/{version}]/ready     200, or 400 when not
    POST /v2/models/{name}[/versions/{version}]/infer     JSON or binary tensor data

An infer body is read whole (server/http/body.py bounds it), converted to a
ModelInferRequest (server/http/v2_wire.py) and sent to the gateway; the answer comes
back in the form the request asked for. A client that goes away cancels the call.
Errors take the v2 shape ``{"error": "...", "reason": "..."}`` with the HTTP status
of the one table (handlers/errors.py) for the reason the gateway sent in
``dcf-reason``; a fault of the front's own is logged and answered 500 with a
generic message, never a traceback. ``Authorization``, ``X-Request-Id`` and
``X-Dcf-Timeout`` work as on /v1; the request id comes back in ``X-Request-Id``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers.errors import RETRY_AFTER_SECONDS, TooLarge, http_status
from protos.inference import grpc_predict_v2_pb2 as pb
from protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from server.admission import ByteBudget
from server.http import v2_wire
from server.http.api import REQUEST_ID, call_metadata, timeout_of
from server.http.body import BodyLimits, body_left, bounded_body
from server.rpc import status as errors
from server.telemetry import tracing

log = logging.getLogger(__name__)

INFER_ROUTE = "POST /v2/models/{name}/infer"  # the call's span name in its trace
# What the HTTP front adds to the gateway's server metadata.
EXTENSIONS = ["binary_tensor_data"]
# A refused body with no more than this left unread is drained, keeping the connection
# for the client's next call; a larger one (or one of unknown size) closes it.
DRAIN_BYTES = 64 * 1024
# The deadline of the metadata and readiness calls when the caller gives none.
INFO_SECONDS = 30.0

Reply = TypeVar("Reply")


@dataclass(frozen=True)
class Call:
    """What every /v2 call to the gateway carries: the stub, metadata, request id, deadline."""

    stub: pb_grpc.GRPCInferenceServiceStub
    metadata: list[tuple[str, str]]
    request_id: str
    timeout: float | None

    @property
    def info_timeout(self) -> float:
        return self.timeout if self.timeout is not None else INFO_SECONDS


def error_response(
    status: int, message: str, reason: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The v2 error shape, with the reason beside the message (tell errors apart by it)."""
    extra = dict(headers or {})
    if status == 429:
        extra["retry-after"] = str(RETRY_AFTER_SECONDS)
    return JSONResponse({"error": message, "reason": reason}, status, headers=extra)


def _failure(exc: BaseException, headers: dict[str, str]) -> JSONResponse:
    """The answer for ``exc``: its reason's status; anything unexpected is logged, 500."""
    if isinstance(exc, grpc.aio.AioRpcError):
        lines = (exc.details() or "").strip().splitlines() or [exc.code().name]
        reason = errors.reason_in(exc.trailing_metadata())
        error = errors.CallError(exc.code(), lines[0][:500], reason)
    else:
        error = errors.error_of(exc)  # logs the traceback of anything but a FunctionError
    return error_response(http_status(error.reason), error.message, error.reason, headers)


class OpenInference:
    """The /v2 routes, calling the gateway's inference service on the app's channel."""

    def __init__(self, limits: BodyLimits) -> None:
        self.limits = limits
        # What the infer bodies being read and held may hold together.
        self.budget = ByteBudget(limits.max_unary_bytes)

    def routes(self) -> list[Route]:
        model = "/v2/models/{name}"
        version = "/v2/models/{name}/versions/{version}"
        return [
            Route("/v2", self._wrap(self.server_metadata), methods=["GET"]),
            Route("/v2/health/live", self._wrap(self.live), methods=["GET"]),
            Route("/v2/health/ready", self._wrap(self.ready), methods=["GET"]),
            *(
                route
                for path in (model, version)
                for route in (
                    Route(path, self._wrap(self.model_metadata), methods=["GET"]),
                    Route(path + "/ready", self._wrap(self.model_ready), methods=["GET"]),
                    Route(path + "/infer", self._wrap(self.infer), methods=["POST"]),
                )
            ),
        ]

    def _wrap(
        self, handler: Callable[[Request, Call], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            headers: dict[str, str] = {}
            try:
                metadata, request_id = call_metadata(request)
                headers[REQUEST_ID] = request_id
                stub: pb_grpc.GRPCInferenceServiceStub = request.app.state.inference
                call = Call(stub, metadata, request_id, timeout_of(request))
                response = await handler(request, call)
            except ClientDisconnect:
                return Response(status_code=400)  # nobody is there to read it
            except Exception as exc:  # noqa: BLE001 - every error is answered in the v2 shape
                if request.method == "POST" and body_left(request) > DRAIN_BYTES:
                    headers["connection"] = "close"  # what is left of its body is not worth reading
                return _failure(exc, headers)
            response.headers.update({**headers, "cache-control": "no-store"})
            return response

        return endpoint

    async def server_metadata(self, request: Request, call: Call) -> Response:
        reply = await call.stub.ServerMetadata(
            pb.ServerMetadataRequest(), metadata=call.metadata, timeout=call.info_timeout
        )
        return JSONResponse(v2_wire.server_metadata(reply, EXTENSIONS))

    async def live(self, request: Request, call: Call) -> Response:
        reply = await call.stub.ServerLive(
            pb.ServerLiveRequest(), metadata=call.metadata, timeout=call.info_timeout
        )
        return _truth(reply.live)

    async def ready(self, request: Request, call: Call) -> Response:
        reply = await call.stub.ServerReady(
            pb.ServerReadyRequest(), metadata=call.metadata, timeout=call.info_timeout
        )
        return _truth(reply.ready)

    async def model_metadata(self, request: Request, call: Call) -> Response:
        name, version = _model(request)
        reply = await call.stub.ModelMetadata(
            pb.ModelMetadataRequest(name=name, version=version),
            metadata=call.metadata,
            timeout=call.info_timeout,
        )
        return JSONResponse(v2_wire.model_metadata(reply))

    async def model_ready(self, request: Request, call: Call) -> Response:
        name, version = _model(request)
        reply = await call.stub.ModelReady(
            pb.ModelReadyRequest(name=name, version=version),
            metadata=call.metadata,
            timeout=call.info_timeout,
        )
        return _truth(reply.ready)

    async def infer(self, request: Request, call: Call) -> Response:
        name, version = _model(request)
        json_bytes = v2_wire.header_length(request.headers.get(v2_wire.HEADER_LENGTH))
        limit = self.limits.body_bytes(binary=json_bytes is not None)
        hint = f"; stream a larger input with POST /v1/functions/{name}"
        trace = tracing.server_span(INFER_ROUTE, request.headers, call.request_id, function=name)
        status = "INTERNAL"
        try:
            async with bounded_body(request, limit, self.budget, hint) as body:
                message, form = v2_wire.infer_request(name, version, body, json_bytes)
                body.clear()  # the message holds the input now
                self._check_size(message, name)
                metadata = [*call.metadata, *trace.headers()]
                reply = await _while_connected(
                    request, call.stub.ModelInfer(message, metadata=metadata, timeout=call.timeout)
                )
            status = "OK"
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
            raise
        finally:
            trace.end(status)
        content, headers = v2_wire.infer_answer(reply, form)
        return Response(content, headers=headers)

    def _check_size(self, message: pb.ModelInferRequest, name: str) -> None:
        """Refuse an input a unary message cannot carry, with advice, before sending it."""
        size = sum(len(raw) for raw in message.raw_input_contents) + sum(
            len(element) for tensor in message.inputs for element in tensor.contents.bytes_contents
        )
        limit = self.limits.max_invoke_bytes
        if size > limit:
            raise TooLarge(
                f"{name}: an input of {size} bytes is over the limit of a unary call "
                f"({limit} bytes); stream it with POST /v1/functions/{name}"
            )


def _model(request: Request) -> tuple[str, str]:
    return request.path_params["name"], request.path_params.get("version", "")


def _truth(value: bool) -> Response:
    """Health and readiness as v2 says: 200 for true, 400 for false, no body."""
    return Response(status_code=200 if value else 400)


async def _while_connected(request: Request, call: Awaitable[Reply]) -> Reply:
    """The reply of ``call``, cancelled if the client goes away first (ClientDisconnect)."""
    answer: asyncio.Future[Reply] = asyncio.ensure_future(call)
    gone = asyncio.create_task(_disconnect(request))
    try:
        watched: set[asyncio.Future[Any]] = {answer, gone}
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            log.info("HTTP client went away: cancelling its infer call")
            raise ClientDisconnect()
        return answer.result()
    finally:
        gone.cancel()
        answer.cancel()
        await asyncio.gather(gone, answer, return_exceptions=True)


async def _disconnect(request: Request) -> None:
    """Return when the client goes away (the body is all in: the next message says so)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals under /v2 (no such route, a wrong method) in the v2 shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(405, message, "METHOD_NOT_ALLOWED", dict(exc.headers or {}))
    if exc.status_code == 404:
        message = f"no such path {request.url.path} (GET /openapi.json describes the API)"
        return error_response(404, message, "NOT_FOUND")
    status = exc.status_code
    reason = "INVALID_INPUT" if status < 500 else "INTERNAL"
    return error_response(status, str(exc.detail), reason, dict(exc.headers or {}))


def is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")
