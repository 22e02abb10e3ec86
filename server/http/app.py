"""The ASGI app (Starlette): the API's routes, the page, CORS and the browser guard."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from protos.dcf.v1 import dcf_pb2_grpc
from server.http.api import (
    ALL_METHODS,
    REQUEST_ID,
    TIMEOUT_HEADER,
    call_function,
    http_error,
    list_functions,
)
from server.http.guard import BrowserGuard, BrowserPolicy
from server.http.options import FrontOptions, origin_of, origin_text

if TYPE_CHECKING:
    pass


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
) -> ASGIApp:
    """The HTTP front as an ASGI app, calling the gateway at ``gateway_address``.

    Its gRPC channel is made when the app starts (in the loop that serves it) and
    closed when it stops. ``bound_host`` is the address it listens on, one of the
    names it answers for unless ``options.allowed_hosts`` says otherwise.
    """
    options = options or FrontOptions()
    page = (WEB_DIR / "index.html").read_bytes()

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html", headers={"cache-control": "no-cache"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        channel_args = list(channel_options)
        if credentials is None:
            channel = grpc.aio.insecure_channel(gateway_address, options=channel_args)
        else:
            channel = grpc.aio.secure_channel(gateway_address, credentials, options=channel_args)
        app.state.gateway = dcf_pb2_grpc.GatewayStub(channel)
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
        ],
        exception_handlers={HTTPException: http_error},
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
            allow_headers=["authorization", "content-type", REQUEST_ID, TIMEOUT_HEADER],
            expose_headers=[REQUEST_ID, "retry-after"],
            max_age=600,
        )
    return BrowserGuard(app, BrowserPolicy.build(options, bound_host))
