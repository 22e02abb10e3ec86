"""Browser safety: answer only for our own host names, refuse calls from other origins'
pages, and mark every answer with a Content-Security-Policy and nosniff."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.http.api import (
    error_response,
)
from server.http.logs import REFUSAL_LOG_SECONDS, ThrottledLog
from server.http.options import (
    DEFAULT_PORTS,
    LOCAL_NAMES,
    WILDCARD_HOSTS,
    FrontOptions,
    host_name,
    origin_of,
    shown,
    split_host,
)

if TYPE_CHECKING:
    pass


log = logging.getLogger(__name__)


# The page may load nothing from another host, and nothing may frame it.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# The documents that get PAGE_POLICY: the page, and the API's description (/docs).
PAGES = frozenset({"/", "/docs"})
# Everything else (API answers, errors) is data, never a document that runs or loads anything.
DATA_POLICY = "default-src 'none'; frame-ancestors 'none'; sandbox"


# ---------------------------------------------------------------- browser safety


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
        origins = {o for o in map(origin_of, options.allowed_origins) if o is not None}
        return cls(
            hosts=frozenset("*" if n == "*" else host_name(n) for n in names),
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
        return local_address is not None and name == host_name(local_address)

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
            host = split_host(hosts[0])
            if host is None:
                return error_response(
                    400,
                    "INVALID_ARGUMENT",
                    f"header Host: not a host name: {shown(hosts[0])}",
                    close,
                )
            local = scope.get("server")
            if not self.policy.serves(host[0], local[0] if local else None):
                self._refusals.warning("HTTP: refused a request for host %s", shown(hosts[0]))
                return error_response(
                    421,
                    "MISDIRECTED_REQUEST",
                    f"this server does not answer for host {shown(host[0])} "
                    "(DCF_HTTP_ALLOWED_HOSTS lists the names it serves)",
                    close,
                )
        origins = headers.getlist("origin")
        if not origins or self.policy.any_origin:
            return None  # not a browser's cross-origin call: curl, a client library, a link
        origin = origin_of(origins[0]) if len(origins) == 1 else None
        if origin is not None and (
            origin in self.policy.origins
            or (host is not None and self.policy.same_origin(origin, host))
        ):
            return None
        self._refusals.warning("HTTP: refused a call from origin %s", shown(origins[0]))
        return error_response(
            403,
            "PERMISSION_DENIED",
            f"cross-origin call refused: {shown(origins[0])} is not this server's page "
            "(DCF_HTTP_ALLOWED_ORIGINS lists the other origins it accepts)",
            close,
        )


def _with_security_headers(scope: Scope, send: Send) -> Send:
    """``send``, adding a CSP and ``nosniff`` to the answer's head unless it has its own."""
    path = scope.get("path", "")
    policy = PAGE_POLICY if path in PAGES or path.startswith("/static/") else DATA_POLICY

    async def secured(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(raw=list(message.get("headers", [])))
            headers.setdefault("content-security-policy", policy)
            headers.setdefault("x-content-type-options", "nosniff")
            message = {**message, "headers": headers.raw}
        await send(message)

    return secured
