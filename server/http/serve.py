"""Serving the front: alone (``python -m server http``) or beside the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import uvicorn

from server.config import ConfigError
from server.http.app import create_app
from server.http.body import BodyLimits
from server.http.listener import MAX_HEAD_BYTES, FrontServer, connection_cap, listen
from server.http.options import FrontOptions, front_options, front_values
from server.rpc.address import bracketed, loopback

if TYPE_CHECKING:
    from server.config import Settings


log = logging.getLogger(__name__)


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
    options: FrontOptions | None = None,
    limits: BodyLimits | None = None,
) -> int:
    """Serve the HTTP front on ``host:port`` until ``stop`` is set; 0, or 2 if it cannot start.

    Runs in the caller's event loop (beside the gateway in the embedded default).
    The caller owns SIGTERM and SIGINT: uvicorn's own signal handling is off.
    """
    options = options or FrontOptions()
    if bool(tls_cert) != bool(tls_key):
        log.error("HTTP: TLS needs both DCF_TLS_CERT and DCF_TLS_KEY")
        return 2
    app = create_app(
        gateway_address,
        credentials,
        channel_options,
        options=options,
        bound_host=host,
        limits=limits,
    )
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
        # uvicorn declares an int, and takes float seconds as they are.
        timeout_keep_alive=options.keepalive_timeout,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        timeout_graceful_shutdown=max(1, math.ceil(grace_seconds)),
    )
    try:
        config.load()
    except (OSError, ssl.SSLError) as exc:
        log.error("HTTP: cannot load the TLS certificate or key: %s", exc)
        return 2
    try:
        sock = listen(host, port)
    except OSError as exc:
        log.error(
            "HTTP: cannot listen on %s:%d: %s (choose another with --http-port or "
            "DCF_HTTP_PORT, or turn it off with --no-http)",
            host,
            port,
            exc.strerror or exc,
        )
        return 2
    bound = sock.getsockname()[1]
    scheme = "https" if tls_cert else "http"
    shown = bracketed(host)
    cap, open_files = connection_cap(options.max_connections)
    log.info(
        "HTTP front on %s://%s:%d/ (gateway %s; at most %d connections%s; head within %g s, "
        "body stalls %g s, keep-alive %g s)",
        scheme,
        shown,
        bound,
        gateway_address,
        cap,
        f" of {open_files} open files" if open_files else "",
        options.header_timeout,
        options.body_timeout,
        options.keepalive_timeout,
    )
    server = FrontServer(config, sock, options, cap)
    serving = asyncio.create_task(server.serve())
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


# Room for a message's framing beside its payload, as the gateway allows.
MESSAGE_SLACK = 1 << 16


def _channel_options(settings: Settings) -> list[tuple[str, Any]]:
    from server.rpc.server import message_options

    return message_options(settings.max_invoke_bytes + MESSAGE_SLACK)


def _limits(settings: Settings) -> BodyLimits:
    """The /v2 infer bodies' bounds: the gateway's own unary limits."""
    return BodyLimits(settings.max_invoke_bytes, settings.max_unary_bytes)


def _options(settings: Settings) -> FrontOptions | None:
    """The front's options, or None (logged) when one cannot be used."""
    try:
        return front_options(front_values(settings))
    except ConfigError as exc:
        log.error("HTTP: %s", exc)
        return None


async def _run_with(
    settings: Settings,
    gateway_address: str,
    stop: asyncio.Event,
    credentials: grpc.ChannelCredentials | None,
    options: FrontOptions,
) -> int:
    """``run_http`` as ``settings`` say, calling the gateway at ``gateway_address``."""
    return await run_http(
        settings.host,
        settings.http_port,
        gateway_address,
        stop,
        credentials=credentials,
        channel_options=_channel_options(settings),
        tls_cert=settings.tls_cert,
        tls_key=settings.tls_key,
        grace_seconds=settings.grace_seconds,
        options=options,
        limits=_limits(settings),
    )


async def serve_role(
    settings: Settings, gateway_address: str, gateway_ca: str, stop: asyncio.Event
) -> int:
    """``python -m server http``: the front alone, calling a gateway elsewhere.

    The channel speaks TLS when ``gateway_ca`` (the CA the gateway's certificate is
    signed by) is given, presenting this role's certificate if it has one.
    """
    options = _options(settings)
    if options is None:
        return 2
    try:
        credentials = gateway_credentials(gateway_ca, settings.tls_cert, settings.tls_key)
    except OSError as exc:
        log.error("HTTP: cannot read the gateway CA %s: %s", gateway_ca, exc.strerror)
        return 2
    return await _run_with(settings, gateway_address, stop, credentials, options)


async def serve_beside_gateway(
    settings: Settings, stop: asyncio.Event, gateway_port: asyncio.Future[int]
) -> int:
    """The embedded default's front: same process and loop as the gateway, reaching it
    over loopback gRPC once it serves. If the front cannot start, it sets ``stop``."""
    options = _options(settings)
    if options is None:
        stop.set()
        return 2
    waiting = asyncio.create_task(stop.wait())
    try:
        watched: set[asyncio.Future[Any]] = {gateway_port, waiting}
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
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
        gateway = loopback(settings.host, gateway_port.result())
        code = await _run_with(settings, gateway, stop, credentials, options)
    except Exception:  # any error: the service stops rather than run without its front
        log.exception("HTTP front failed")
        code = 2
    if code:
        stop.set()
    return code
