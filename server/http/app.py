"""The ASGI app (Starlette): the API's routes, Open Inference (/v2), the OpenAPI
description and its page, the page, CORS and the browser guard."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from protos.inference import grpc_predict_v2_pb2_grpc as inference_grpc
from server.http import openapi, v2, v2_wire
from server.http.api import (
    ALL_METHODS,
    REQUEST_ID,
    TIMEOUT_HEADER,
    auth_metadata,
    call_error_response,
    call_function,
    http_error,
    list_functions,
)
from server.http.body import BodyLimits
from server.http.guard import BrowserGuard, BrowserPolicy
from server.http.options import FrontOptions, origin_of, origin_text
from server.rpc import status as errors
from server.rpc.server import encoded

GATEWAY_CALL = "/dcf.v1.Gateway/Call"


log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).with_name("web")


# ---------------------------------------------------------------- the app


def create_app(
    gateway_address: str,
    credentials: grpc.ChannelCredentials | None = None,
    channel_options: Sequence[tuple[str, Any]] = (),
    *,
    options: FrontOptions | None = None,
    bound_host: str = "127.0.0.1",
    limits: BodyLimits | None = None,
) -> ASGIApp:
    """The HTTP front as an ASGI app, calling the gateway at ``gateway_address``.

    Its gRPC channel is made when the app starts (in the loop that serves it) and
    closed when it stops. ``bound_host`` is the address it listens on, one of the
    names it answers for unless ``options.allowed_hosts`` says otherwise. ``limits``
    bound the /v2 infer bodies (the gateway's max_invoke_bytes and max_unary_bytes).
    """
    options = options or FrontOptions()
    page = (WEB_DIR / "index.html").read_bytes()
    docs_page = (WEB_DIR / "docs.html").read_bytes()
    inference = v2.OpenInference(limits or BodyLimits())

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html", headers={"cache-control": "no-cache"})

    async def docs(request: Request) -> Response:
        return Response(docs_page, media_type="text/html", headers={"cache-control": "no-cache"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        channel_args = list(channel_options)
        if credentials is None:
            channel = grpc.aio.insecure_channel(gateway_address, options=channel_args)
        else:
            channel = grpc.aio.secure_channel(gateway_address, credentials, options=channel_args)
        app.state.gateway = dcf_pb2_grpc.GatewayStub(channel)
        # Gateway.Call with its messages left encoded both ways, as the gateway's own
        # calls to workers are: chunks go up encoded once (framing ``send_call``), and
        # come down as they came (``Relay.next``).
        app.state.gateway_call = channel.stream_stream(GATEWAY_CALL, request_serializer=encoded)
        app.state.inference = inference_grpc.GRPCInferenceServiceStub(channel)
        try:
            yield
        finally:
            await channel.close(grace=None)

    app: ASGIApp = Starlette(
        routes=[
            Route("/", index, methods=["GET", "HEAD"]),
            Mount("/static", StaticFiles(directory=WEB_DIR), name="static"),
            Route("/v1/functions", list_functions, methods=["GET", "HEAD"]),
            # Every method reaches call_function, which answers all but POST with 405.
            Route("/v1/functions/{name}", call_function, methods=ALL_METHODS),
            *inference.routes(),
            Route("/openapi.json", openapi_document, methods=["GET"]),
            Route("/docs", docs, methods=["GET"]),
        ],
        exception_handlers={HTTPException: refusal},
        lifespan=lifespan,
    )
    if options.allowed_origins:
        # The origins an operator opened up may read the answers too (CORS), and send
        # the headers the API takes.
        opened = [origin_text(o) for o in map(origin_of, options.allowed_origins) if o]
        app = CORSMiddleware(
            app,
            allow_origins=["*"] if "*" in options.allowed_origins else opened,
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=[
                "authorization",
                "content-type",
                REQUEST_ID,
                TIMEOUT_HEADER,
                v2_wire.HEADER_LENGTH,
            ],
            expose_headers=[REQUEST_ID, "retry-after", v2_wire.HEADER_LENGTH],
            max_age=600,
        )
    return BrowserGuard(app, BrowserPolicy.build(options, bound_host))


async def openapi_document(request: Request) -> Response:
    """GET /openapi.json: the API as the gateway's registry has it now."""
    stub: dcf_pb2_grpc.GatewayStub = request.app.state.gateway
    try:
        reply = await stub.ListFunctions(
            dcf_pb2.ListFunctionsRequest(), metadata=auth_metadata(request), timeout=30
        )
    except errors.CallError as exc:  # a header that cannot be metadata
        return call_error_response(exc)
    except grpc.aio.AioRpcError as exc:
        reason = errors.reason_in(exc.trailing_metadata())
        return call_error_response(
            errors.CallError(exc.code(), exc.details() or exc.code().name, reason)
        )
    return JSONResponse(openapi.document(reply.functions), headers={"cache-control": "no-cache"})


async def refusal(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, a wrong method): v2's error shape under
    /v2, the API's elsewhere."""
    if v2.is_v2(request.url.path):
        return await v2.http_error(request, exc)
    return await http_error(request, exc)
