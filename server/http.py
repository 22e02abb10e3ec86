"""The HTTP front: call any function from curl or a browser, and the web page.

    POST /v1/functions/{name}?param=value    body in, the function's answer out, both streamed
    GET  /v1/functions                       the functions, as JSON
    GET  /                                   the page: server/web/ (HTML, a module, a stylesheet)

It is a gRPC client of the gateway like any other; the handlers are in
``server/http_api.py``. ``create_app`` makes the ASGI app (Starlette), ``run_http``
serves it with uvicorn in the caller's event loop until a stop event: the
embedded default runs it beside the gateway (``serve_beside_gateway``, over a
loopback channel), ``python -m server http`` alone (``serve_role``).

Safe by default, because a browser on the same machine is a caller too:

* ``BrowserGuard`` answers only for the names this server is reached by (the
  ``Host`` header; DNS rebinding turns any other name into ours), refuses calls
  from another origin's page (403; a cross-site ``text/plain`` POST needs no
  preflight, so refusing its answer is not enough: it must not run), and puts a
  Content-Security-Policy and ``nosniff`` on every answer.
* ``FrontProtocol`` adds the deadlines uvicorn's h11 protocol lacks: a request's
  head must arrive within ``header_timeout``, and neither its body nor its answer
  may stall for ``body_timeout``; between requests uvicorn's keep-alive timeout
  applies.
* ``Listener`` accepts connections itself instead of asyncio's server: it keeps
  at most ``max_connections`` open (at most half the open-file limit, so the
  gateway's gRPC side in the same process always has descriptors), makes room by
  closing the connection idle the longest, and, out of file descriptors, logs
  once per interval instead of once per failed accept.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import ipaddress
import json
import logging
import math
import resource
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import grpc
import h11
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from protos.dcf.v1 import dcf_pb2_grpc
from server.address import bracketed, loopback
from server.config import ConfigError
from server.http_api import (
    ALL_METHODS,
    REQUEST_ID,
    TIMEOUT_HEADER,
    call_function,
    error_response,
    http_error,
    list_functions,
)

if TYPE_CHECKING:
    from server.config import Settings

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).with_name("web")

# The page may load nothing from another host, and nothing may frame it.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Everything else (API answers, errors) is data, never a document that runs or loads anything.
DATA_POLICY = "default-src 'none'; frame-ancestors 'none'; sandbox"

# ---------------------------------------------------------------- the front's settings


@dataclass(frozen=True)
class FrontOptions:
    """How the HTTP front guards itself. Times in seconds."""

    # Names the front answers for (the Host header); empty: localhost, 127.0.0.1, [::1]
    # and the address it is bound to. "*": any name.
    allowed_hosts: tuple[str, ...] = ()
    # Other origins whose pages may call the API (with CORS); the page's own always may.
    allowed_origins: tuple[str, ...] = ()
    # A request's head (request line and headers) must arrive within this, once begun.
    header_timeout: float = 10.0
    # A request body may go this long without a byte before the call is ended (408), and
    # an answer this long without the client taking a byte.
    body_timeout: float = 30.0
    # An idle connection between two requests is closed after this.
    keepalive_timeout: float = 5.0
    # Connections open at once; never more than half the process's open-file limit.
    max_connections: int = 1000


# The settings above; Settings has each as ``http_`` + its name (DCF_HTTP_... in the
# environment).
FRONT_FIELDS = (
    "allowed_hosts",
    "allowed_origins",
    "header_timeout",
    "body_timeout",
    "keepalive_timeout",
    "max_connections",
)


def front_options(values: Mapping[str, Any]) -> FrontOptions:
    """FrontOptions from ``values`` (field name -> a string, as the environment gives it,
    or a value of the field's type); absent fields keep their defaults.

    Raises ConfigError naming the setting that cannot be used.
    """
    options: dict[str, Any] = {}
    for name, value in values.items():
        if name in ("allowed_hosts", "allowed_origins"):
            items = value.split(",") if isinstance(value, str) else value
            options[name] = tuple(str(item).strip() for item in items if str(item).strip())
        elif name == "max_connections":
            try:
                count = int(value)
            except (TypeError, ValueError):
                count = 0
            if count < 1 or isinstance(value, bool):
                raise ConfigError(f"http {name}: expected a whole number, 1 or more, got {value!r}")
            options[name] = count
        elif name in ("header_timeout", "body_timeout", "keepalive_timeout"):
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                seconds = math.nan
            if not 0 < seconds < math.inf:
                raise ConfigError(f"http {name}: expected seconds, more than 0, got {value!r}")
            options[name] = seconds
        else:
            raise ConfigError(f"http: no setting called {name!r}")
    for origin in options.get("allowed_origins", ()):
        if origin != "*" and _origin(origin) is None:
            raise ConfigError(
                f"http allowed_origins: {origin!r} is not an origin (scheme://host[:port])"
            )
    return FrontOptions(**options)


def _front_values(settings: Settings) -> dict[str, Any]:
    """The front's settings, for ``front_options``."""
    return {field: getattr(settings, "http_" + field) for field in FRONT_FIELDS}


# ---------------------------------------------------------------- browser safety

WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
# Caller-supplied text shown in an answer or a log line is cut to this.
SHOWN_CHARS = 100


def _shown(value: str) -> str:
    """A caller's string, quoted, escaped and cut, fit for a message or a log line."""
    return repr(value[:SHOWN_CHARS]) + ("..." if len(value) > SHOWN_CHARS else "")


def _host_name(name: str) -> str:
    """A host name in one spelling: lower case, no trailing dot, IPs in canonical form."""
    name = name.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(name))
    return name


def _split_host(value: str) -> tuple[str, int | None] | None:
    """(name, port or None) of a Host header, None if it is not one."""
    value = value.strip()
    port: str | None = None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[: end + 1], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return None
            port = rest[1:]
    else:
        name, colon, port_text = value.partition(":")
        port = port_text if colon else None
    if port is not None and not (port.isdigit() and len(port) <= 5):
        return None
    if not name or any(c.isspace() or c in "/\\@?#" for c in name):
        return None
    return _host_name(name), int(port) if port is not None else None


DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an Origin header or a configured origin; None if not one."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    return scheme, _host_name(parts.hostname), port or DEFAULT_PORTS[scheme]


def _origin_text(origin: tuple[str, str, int]) -> str:
    """An origin as a browser writes it in its Origin header."""
    scheme, host, port = origin
    shown = bracketed(host)
    return f"{scheme}://{shown}" if port == DEFAULT_PORTS[scheme] else f"{scheme}://{shown}:{port}"


@dataclass(frozen=True)
class BrowserPolicy:
    """Which Host names the front answers for, and which other origins may call it."""

    hosts: frozenset[str]  # "*": any
    origins: frozenset[tuple[str, str, int]]
    any_origin: bool = False

    @classmethod
    def build(cls, options: FrontOptions, bound_host: str) -> BrowserPolicy:
        names = set(options.allowed_hosts)
        if not names:
            names.update(LOCAL_NAMES)
            if bound_host.strip("[]") not in WILDCARD_HOSTS:
                names.add(bound_host)
        origins = {o for o in map(_origin, options.allowed_origins) if o is not None}
        return cls(
            hosts=frozenset("*" if n == "*" else _host_name(n) for n in names),
            origins=frozenset(origins),
            any_origin="*" in options.allowed_origins,
        )

    def serves(self, name: str, local_address: str | None) -> bool:
        """Whether ``name`` (from a Host header) is one of ours.

        The address the connection came in on is always ours: an IP address is no
        DNS name an attacker's page can rebind, and it is what a Kubernetes probe or
        a load balancer's health check sends.
        """
        if "*" in self.hosts or name in self.hosts:
            return True
        return local_address is not None and name == _host_name(local_address)

    def same_origin(self, origin: tuple[str, str, int], host: tuple[str, int | None]) -> bool:
        """Whether the page at ``origin`` is this server's own, reached as ``host``.

        The scheme is not compared: behind a proxy that ends TLS the page is https
        and this server sees http; one host and port are one server either way.
        """
        scheme, name, port = origin
        host_name, host_port = host
        if host_port is None:
            return name == host_name and port == DEFAULT_PORTS[scheme]
        return name == host_name and port == host_port


class BrowserGuard:
    """ASGI middleware: the Host and Origin checks, and the headers every answer carries."""

    def __init__(self, app: ASGIApp, policy: BrowserPolicy) -> None:
        self.app = app
        self.policy = policy
        self._refusals = ThrottledLog(log, REFUSAL_LOG_SECONDS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_security_headers(scope, send)
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> Response | None:
        headers = Headers(scope=scope)
        close = {"connection": "close"}  # its body, if any, is not worth reading
        hosts = headers.getlist("host")
        host: tuple[str, int | None] | None = None
        if len(hosts) > 1:
            return error_response(400, "INVALID_ARGUMENT", "more than one Host header", close)
        if hosts:
            host = _split_host(hosts[0])
            if host is None:
                return error_response(
                    400,
                    "INVALID_ARGUMENT",
                    f"header Host: not a host name: {_shown(hosts[0])}",
                    close,
                )
            local = scope.get("server")
            if not self.policy.serves(host[0], local[0] if local else None):
                self._refusals.warning("HTTP: refused a request for host %s", _shown(hosts[0]))
                return error_response(
                    421,
                    "MISDIRECTED_REQUEST",
                    f"this server does not answer for host {_shown(host[0])} "
                    "(DCF_HTTP_ALLOWED_HOSTS lists the names it serves)",
                    close,
                )
        origins = headers.getlist("origin")
        if not origins or self.policy.any_origin:
            return None  # not a browser's cross-origin call: curl, a client library, a link
        origin = _origin(origins[0]) if len(origins) == 1 else None
        if origin is not None and (
            origin in self.policy.origins
            or (host is not None and self.policy.same_origin(origin, host))
        ):
            return None
        self._refusals.warning("HTTP: refused a call from origin %s", _shown(origins[0]))
        return error_response(
            403,
            "PERMISSION_DENIED",
            f"cross-origin call refused: {_shown(origins[0])} is not this server's page "
            "(DCF_HTTP_ALLOWED_ORIGINS lists the other origins it accepts)",
            close,
        )


def _with_security_headers(scope: Scope, send: Send) -> Send:
    """``send``, adding a CSP and ``nosniff`` to the answer's head unless it has its own."""
    path = scope.get("path", "")
    policy = PAGE_POLICY if path == "/" or path.startswith("/static/") else DATA_POLICY

    async def secured(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(raw=list(message.get("headers", [])))
            headers.setdefault("content-security-policy", policy)
            headers.setdefault("x-content-type-options", "nosniff")
            message = {**message, "headers": headers.raw}
        await send(message)

    return secured


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
        opened = [_origin_text(o) for o in map(_origin, options.allowed_origins) if o]
        app = CORSMiddleware(
            app,
            allow_origins=["*"] if "*" in options.allowed_origins else opened,
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["authorization", "content-type", REQUEST_ID, TIMEOUT_HEADER],
            expose_headers=[REQUEST_ID, "retry-after"],
            max_age=600,
        )
    return BrowserGuard(app, BrowserPolicy.build(options, bound_host))


# ---------------------------------------------------------------- connections

# accept() errors that mean "no descriptor or buffer for a new connection now".
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept() errors about one connection that went away before it was taken.
GONE_BEFORE_ACCEPT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})
# How long the accept loop waits before trying again when it has no descriptor to use.
ACCEPT_RETRY_SECONDS = 0.25
# At most one line per this many seconds about running out of descriptors, or about
# connections refused; each says how many events it stands for.
RESOURCE_LOG_SECONDS = 60.0
REFUSAL_LOG_SECONDS = 60.0


class ThrottledLog:
    """A warning that an attacker can trigger at will, logged at most once per interval.

    Each line after the first counts the events left out since the one before.
    """

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self.logger = logger
        self.interval = interval
        self._next = 0.0
        self._left_out = 0

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._left_out += 1
            return
        if self._left_out:
            message += " (and %d more like it in the last %.0f s)"
            args = (*args, self._left_out, self.interval)
        self.logger.warning(message, *args)
        self._next = now + self.interval
        self._left_out = 0


class IdleConnections:
    """The connections waiting for a request, oldest first: the first to go when the front
    needs room. A connection's place is kept while it trickles a request head."""

    def __init__(self) -> None:
        self._order: collections.OrderedDict[FrontProtocol, None] = collections.OrderedDict()

    def add(self, connection: FrontProtocol) -> None:
        self._order.setdefault(connection, None)

    def discard(self, connection: FrontProtocol) -> None:
        self._order.pop(connection, None)

    def oldest(self) -> FrontProtocol | None:
        return next(iter(self._order), None)


class FrontProtocol(H11Protocol):
    """uvicorn's h11 protocol with the deadlines it lacks.

    uvicorn closes an idle connection only after a response (``timeout_keep_alive``);
    one that never completes a request head, stops sending its body or stops reading
    its answer, it keeps for ever, and the call with it. Here a head must be complete
    within ``header_timeout`` of its first byte (or of the connection), and neither a
    body nor an answer may stall for ``body_timeout``. A connection waiting for a head
    is listed in ``idle``, so that the listener can close the oldest one to make room.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any],
        *,
        options: FrontOptions,
        idle: IdleConnections,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(config, server_state, app_state)
        self.options = options
        self.idle = idle
        self.made = False  # connection_made has run (after the TLS handshake, with TLS)
        self._on_lost = on_lost
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_seen = 0.0  # loop time of the body's last byte
        self._write_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol

    # An asyncio.Transport, not any BaseTransport: as uvicorn's own override declares.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.made = True
        super().connection_made(transport)
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self.idle.discard(self)
        self._cancel(head=True, body=True, write=True)
        try:
            super().connection_lost(exc)
        finally:
            self._on_lost()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.SEND_BODY:
            self._body_seen = self.loop.time()
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.options.body_timeout, self._write_late)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel(write=True)

    # -- the deadlines

    def _follow(self) -> None:
        """Track the client's side of the connection: waiting for a head, or sending one."""
        if self.transport is None or self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            self.idle.add(self)
            # Between requests uvicorn's keep-alive timer runs; the head's starts with its
            # first byte (which cancels that timer) or with the connection.
            if self._head_timer is None and self.timeout_keep_alive_task is None:
                self._head_timer = self.loop.call_later(
                    self.options.header_timeout, self._head_late
                )
            return
        self.idle.discard(self)
        self._cancel(head=True)
        if state is h11.SEND_BODY:
            if self._body_timer is None:
                self._body_seen = self.loop.time()
                self._body_timer = self.loop.call_later(self.options.body_timeout, self._body_check)
        else:
            self._cancel(body=True)

    def _cancel(self, head: bool = False, body: bool = False, write: bool = False) -> None:
        if head and self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if body and self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if write and self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE:
            self.drop()

    def _body_check(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        now = self.loop.time()
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            # We hold the body back (the call is not reading it yet, or has not yet said
            # "100 Continue" to a client that waits for it): not the client's stall.
            self._body_seen = now
        quiet = now - self._body_seen
        if quiet < self.options.body_timeout:
            self._body_timer = self.loop.call_later(
                self.options.body_timeout - quiet, self._body_check
            )
            return
        self._body_stalled()

    def _write_late(self) -> None:
        """The client has taken nothing of the answer for ``body_timeout``: let it go. The
        app sees it go away, which cancels the call."""
        self._write_timer = None
        if self.flow.write_paused and not self.transport.is_closing():
            log.debug("HTTP: a client stopped reading its answer; closing its connection")
            self.drop()

    def _body_stalled(self) -> None:
        """End a request whose body stopped coming: 408 if the answer has not begun, then close.

        The app sees the client go away, which cancels its call up to the worker.
        """
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            body = json.dumps(
                {
                    "code": "DEADLINE_EXCEEDED",
                    "message": f"the request body stalled: nothing came for "
                    f"{self.options.body_timeout:g} s",
                }
            ).encode()
            self._write_answer(408, body)
        if cycle is not None:
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _write_answer(self, status: int, body: bytes) -> None:
        """A JSON answer of our own, written straight to the connection, which then closes."""
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"content-security-policy", DATA_POLICY.encode()),
            (b"x-content-type-options", b"nosniff"),
        ]
        try:
            head = h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status])
            self.transport.write(self.conn.send(head))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            pass  # the connection's state allows no answer now: it just closes

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse: the API's JSON error, with the front's headers."""
        body = json.dumps({"code": "INVALID_ARGUMENT", "message": "invalid HTTP request"}).encode()
        self._write_answer(400, body)
        self.transport.close()

    def drop(self) -> None:
        """Close a connection at once: one with no request in progress (timed out, or to make
        room), or one whose client stopped reading. Whatever it has not read is dropped."""
        self.idle.discard(self)
        if self.transport.is_closing():
            return
        log.debug(
            "HTTP: dropping a connection from %s (client %s)",
            self.client,
            self.conn.their_state.__name__,
        )
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.abort()


def connection_cap(configured: int) -> tuple[int, int | None]:
    """(connections the front may hold, the process's open-file limit or None if unlimited).

    The front takes at most half the descriptors: the rest are the gateway's gRPC
    callers and workers (in the embedded default, the same process), the log, the
    model's files.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured, None
    return max(1, min(configured, soft // 2)), soft


class Listener:
    """The front's accept loop, in place of asyncio's.

    asyncio's server accepts every connection it can, and out of descriptors it logs
    one traceback per failed accept (thousands a second). This one holds at most
    ``cap`` connections: at the cap it closes the connection idle the longest, or,
    with every connection busy with a call, answers 503 and closes the new one; out
    of descriptors it closes an idle connection too, or waits a moment, and says so
    once per interval.
    """

    def __init__(
        self,
        sock: socket.socket,
        make_protocol: Callable[[Callable[[], None]], FrontProtocol],
        ssl_context: ssl.SSLContext | None,
        *,
        cap: int,
        handshake_timeout: float,
        idle: IdleConnections,
    ) -> None:
        self.sock = sock
        self.cap = cap
        # Accepted sockets not closed yet: each holds a descriptor, from accept() until
        # its protocol's connection_lost (or its failed start).
        self.open_connections = 0
        self._make_protocol = make_protocol
        self._ssl = ssl_context
        self._handshake_timeout = handshake_timeout
        self._idle = idle
        self._opening: set[asyncio.Task[None]] = set()
        self._starved = ThrottledLog(log, RESOURCE_LOG_SECONDS)
        self._full = ThrottledLog(log, RESOURCE_LOG_SECONDS)
        self._task = asyncio.create_task(self._accept_loop())
        self._task.add_done_callback(_report_end)

    def _closed(self) -> None:
        self.open_connections -= 1

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as exc:
                if exc.errno in OUT_OF_DESCRIPTORS:
                    await self._out_of_descriptors(exc)
                elif exc.errno not in GONE_BEFORE_ACCEPT:
                    self._starved.warning("HTTP: accept failed: %s", exc)
                    await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            if await self._room():
                conn.setblocking(False)
                self.open_connections += 1
                task = loop.create_task(self._open(conn, loop))
                self._opening.add(task)
                task.add_done_callback(self._opening.discard)
            else:
                self._refuse(conn)
            # A waiting connection is accepted without a pause; let the loop run the new
            # connection's start, the closed ones' ends and the gateway between accepts.
            await asyncio.sleep(0)

    async def _out_of_descriptors(self, exc: OSError) -> None:
        log.debug("HTTP: accept failed for want of a descriptor: %s", exc.strerror)
        self._starved.warning(
            "HTTP: out of file descriptors (%s) with %d HTTP connections open; "
            "closing idle ones and retrying",
            exc.strerror,
            self.open_connections,
        )
        victim = self._idle.oldest()
        if victim is not None:
            victim.drop()
            await asyncio.sleep(0)  # its descriptor is closed in the loop's next round
        else:
            await asyncio.sleep(ACCEPT_RETRY_SECONDS)

    async def _room(self) -> bool:
        """Make room for one more connection; False if every connection is busy with a call
        (or, with TLS, still shaking hands, which ``header_timeout`` bounds)."""
        while self.open_connections >= self.cap:
            victim = self._idle.oldest()
            if victim is None:
                return False
            victim.drop()
            await asyncio.sleep(0)  # its descriptor is closed in the loop's next round
        return True

    async def _open(self, conn: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        protocol = self._make_protocol(self._closed)
        try:
            await loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=self._ssl,
                ssl_handshake_timeout=self._handshake_timeout if self._ssl else None,
            )
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            log.debug("HTTP: a connection ended before it began: %s", exc)
        finally:
            if not protocol.made:  # no connection_lost will come to count it out
                conn.close()
                self._closed()

    def _refuse(self, conn: socket.socket) -> None:
        """Every connection is busy with a call: tell this one to come back, and close it."""
        self._full.warning(
            "HTTP: refused a connection: all %d connections are busy with calls", self.cap
        )
        if self._ssl is None:
            with contextlib.suppress(OSError):
                conn.setblocking(False)
                # Take the request if it is in already, so that the close is a FIN, not
                # a reset that could discard the answer before the client reads it.
                conn.recv(MAX_HEAD_BYTES)
            with contextlib.suppress(OSError):
                conn.send(BUSY_ANSWER)
                conn.shutdown(socket.SHUT_WR)
        conn.close()

    def close(self) -> None:
        self._task.cancel()
        for task in self._opening:
            task.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(self._task, *self._opening, return_exceptions=True)


def _report_end(task: asyncio.Task[None]) -> None:
    """The accept loop ends only when the front stops; anything else is a bug, said loudly."""
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "HTTP: the accept loop failed; no new connections are taken", exc_info=task.exception()
        )


def _busy_answer() -> bytes:
    body = json.dumps(
        {
            "code": "UNAVAILABLE",
            "message": "the HTTP front has no free connection: try again shortly",
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n"
        f"content-security-policy: {DATA_POLICY}\r\nx-content-type-options: nosniff\r\n\r\n"
    )
    return head.encode() + body


BUSY_ANSWER = _busy_answer()


class FrontServer(uvicorn.Server):
    """uvicorn's server with the front's own accept loop and protocol.

    uvicorn runs the app's lifespan and the graceful shutdown; the socket is ours.
    The caller owns SIGTERM and SIGINT: uvicorn's own signal handling is off.
    """

    def __init__(
        self, config: uvicorn.Config, sock: socket.socket, options: FrontOptions, cap: int
    ) -> None:
        super().__init__(config)
        self.sock = sock
        self.options = options
        self.cap = cap
        self.idle = IdleConnections()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the stop event is ours; uvicorn must not take the signals

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the lifespan only: no asyncio server
        self.servers = [
            Listener(  # type: ignore[list-item]  # closed and awaited like a Server
                self.sock,
                self._protocol,
                self.config.ssl,
                cap=self.cap,
                handshake_timeout=self.options.header_timeout,
                idle=self.idle,
            )
        ]

    def _protocol(self, on_lost: Callable[[], None]) -> FrontProtocol:
        return FrontProtocol(
            self.config,
            self.server_state,
            self.lifespan.state,
            options=self.options,
            idle=self.idle,
            on_lost=on_lost,
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
    options: FrontOptions | None = None,
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
        gateway_address, credentials, channel_options, options=options, bound_host=host
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
        sock = _listen(host, port)
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


# A request's line and headers together; more is refused (h11's default, said here).
MAX_HEAD_BYTES = 16 * 1024


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
    from server.grpc_server import message_options

    return message_options(settings.max_invoke_bytes + MESSAGE_SLACK)


def _options(settings: Settings) -> FrontOptions | None:
    """The front's options, or None (logged) when one cannot be used."""
    try:
        return front_options(_front_values(settings))
    except ConfigError as exc:
        log.error("HTTP: %s", exc)
        return None


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
    )


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
        code = await run_http(
            settings.host,
            settings.http_port,
            loopback(settings.host, gateway_port.result()),
            stop,
            credentials=credentials,
            channel_options=_channel_options(settings),
            tls_cert=settings.tls_cert,
            tls_key=settings.tls_key,
            grace_seconds=settings.grace_seconds,
            options=options,
        )
    except Exception:  # any error: the service stops rather than run without its front
        log.exception("HTTP front failed")
        code = 2
    if code:
        stop.set()
    return code
