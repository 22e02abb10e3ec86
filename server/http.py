"""The HTTP front: call any function from curl or a browser, and the web page.

    POST /v1/functions/{name}?param=value    body in, the function's answer out, both streamed
    GET  /v1/functions                       the functions, as JSON
    GET  /                                   the page: server/web/ (HTML, a module, a stylesheet)

It is a gRPC client of the gateway like any other; the handlers are in
``server/http_api.py``. ``create_app`` makes the ASGI app (Starlette), ``run_http``
serves it with uvicorn in the caller's event loop until a stop event: the
embedded default runs it beside the gateway (``serve_beside_gateway``, over a
loopback channel), ``python -m server http`` alone (``serve_role``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Sequence

import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from protos.dcf.v1 import dcf_pb2_grpc
from server.http_api import ALL_METHODS, call_function, http_error, list_functions

if TYPE_CHECKING:
    from server.config import Settings

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).with_name("web")

# The page may load nothing from another host, and nothing may frame it.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def create_app(
    gateway_address: str,
    credentials: grpc.ChannelCredentials | None = None,
    channel_options: Sequence[tuple[str, Any]] = (),
) -> Starlette:
    """The HTTP front as an ASGI app, calling the gateway at ``gateway_address``.

    Its gRPC channel is made when the app starts (in the loop that serves it) and
    closed when it stops.
    """
    page = (WEB_DIR / "index.html").read_bytes()

    async def index(request: Request) -> Response:
        return Response(
            page,
            media_type="text/html",
            headers={"content-security-policy": PAGE_POLICY, "cache-control": "no-cache"},
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        options = list(channel_options)
        if credentials is None:
            channel = grpc.aio.insecure_channel(gateway_address, options=options)
        else:
            channel = grpc.aio.secure_channel(gateway_address, credentials, options=options)
        app.state.gateway = dcf_pb2_grpc.GatewayStub(channel)
        try:
            yield
        finally:
            await channel.close(grace=None)

    return Starlette(
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


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that a busy port is a clear error of ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and without it each answer's last small write waits for a delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def run_http(
    host: str,
    port: int,
    gateway_address: str,
    stop: asyncio.Event,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    channel_options: Sequence[tuple[str, Any]] = (),
    tls_cert: str = "",
    tls_key: str = "",
    grace_seconds: float = 10.0,
) -> int:
    """Serve the HTTP front on ``host:port`` until ``stop`` is set; 0, or 2 if it cannot start.

    Runs in the caller's event loop (beside the gateway in the embedded default).
    The caller owns SIGTERM and SIGINT: uvicorn's own signal handling is off.
    """
    import uvicorn  # here: the worker processes never need it

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[override]
            yield  # the stop event is ours; uvicorn must not take the signals

    if bool(tls_cert) != bool(tls_key):
        log.error("HTTP: TLS needs both DCF_TLS_CERT and DCF_TLS_KEY")
        return 2
    app = create_app(gateway_address, credentials, channel_options)
    config = uvicorn.Config(
        app,
        http="h11",
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        ssl_certfile=tls_cert or None,
        ssl_keyfile=tls_key or None,
        timeout_graceful_shutdown=max(1, math.ceil(grace_seconds)),
    )
    try:
        config.load()
    except (OSError, ssl.SSLError) as exc:
        log.error("HTTP: cannot load the TLS certificate or key: %s", exc)
        return 2
    try:
        sock = _listen(host, port)
    except OSError as exc:
        log.error(
            "HTTP: cannot listen on %s:%d: %s (choose another with --http-port or "
            "DCF_HTTP_PORT, or turn it off with --no-http)", host, port, exc.strerror or exc,
        )
        return 2
    bound = sock.getsockname()[1]
    scheme = "https" if tls_cert else "http"
    shown = f"[{host}]" if ":" in host else host
    log.info("HTTP front on %s://%s:%d/ (gateway %s)", scheme, shown, bound, gateway_address)
    server = Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.should_exit = True
        stopping.cancel()
        with contextlib.suppress(SystemExit):
            await serving
        sock.close()
    if not stop.is_set():
        log.error("HTTP front stopped on its own")
        return 2
    return 0


def gateway_credentials(ca: str, cert: str = "", key: str = "") -> grpc.ChannelCredentials | None:
    """TLS to a gateway trusted by the PEM file ``ca``, presenting ``cert`` and ``key``
    if given (for a gateway that asks its callers for certificates); None: plaintext."""
    if not ca:
        return None
    pair = {}
    if cert and key:
        pair = {"private_key": Path(key).read_bytes(), "certificate_chain": Path(cert).read_bytes()}
    return grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes(), **pair)


def loopback(host: str, port: int) -> str:
    """An address for reaching a server bound to ``host:port`` from this machine."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"


# Room for a message's framing beside its payload, as the gateway allows.
MESSAGE_SLACK = 1 << 16


def _channel_options(settings: "Settings") -> list[tuple[str, Any]]:
    from server.grpc_server import message_options

    return message_options(settings.max_invoke_bytes + MESSAGE_SLACK)


async def serve_role(
    settings: "Settings", gateway_address: str, gateway_ca: str, stop: asyncio.Event
) -> int:
    """``python -m server http``: the front alone, calling a gateway elsewhere.

    The channel speaks TLS when ``gateway_ca`` (the CA the gateway's certificate is
    signed by) is given, presenting this role's certificate if it has one.
    """
    try:
        credentials = gateway_credentials(gateway_ca, settings.tls_cert, settings.tls_key)
    except OSError as exc:
        log.error("HTTP: cannot read the gateway CA %s: %s", gateway_ca, exc.strerror)
        return 2
    return await run_http(
        settings.host, settings.http_port, gateway_address, stop,
        credentials=credentials, channel_options=_channel_options(settings),
        tls_cert=settings.tls_cert, tls_key=settings.tls_key,
        grace_seconds=settings.grace_seconds,
    )


async def serve_beside_gateway(
    settings: "Settings", stop: asyncio.Event, gateway_port: "asyncio.Future[int]"
) -> int:
    """The embedded default's front: same process and loop as the gateway, reaching it
    over loopback gRPC once it serves. If the front cannot start, it sets ``stop``."""
    waiting = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({gateway_port, waiting}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    if not gateway_port.done() or gateway_port.cancelled():
        return 0
    try:
        # A gateway with TLS is reached with TLS, trusting its own certificate, and
        # presenting it when the gateway asks callers for one.
        pair = (settings.tls_cert, settings.tls_key) if settings.tls_client_ca else ()
        credentials = gateway_credentials(settings.tls_cert, *pair)
    except OSError as exc:
        log.error("HTTP: cannot read the TLS files: %s", exc)
        stop.set()
        return 2
    try:
        code = await run_http(
            settings.host, settings.http_port, loopback(settings.host, gateway_port.result()),
            stop, credentials=credentials, channel_options=_channel_options(settings),
            tls_cert=settings.tls_cert, tls_key=settings.tls_key,
            grace_seconds=settings.grace_seconds,
        )
    except Exception:  # noqa: BLE001 - the service stops rather than run without its front
        log.exception("HTTP front failed")
        code = 2
    if code:
        stop.set()
    return code
