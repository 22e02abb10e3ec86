"""The HTTP front's own settings (FrontOptions), read from the http_* fields of Settings."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from server.config import ConfigError
from server.rpc.address import bracketed

if TYPE_CHECKING:
    from server.config import Settings


log = logging.getLogger(__name__)

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
        if origin != "*" and origin_of(origin) is None:
            raise ConfigError(
                f"http allowed_origins: {origin!r} is not an origin (scheme://host[:port])"
            )
    return FrontOptions(**options)


def front_values(settings: Settings) -> dict[str, Any]:
    """The front's settings, for ``front_options``."""
    return {field: getattr(settings, "http_" + field) for field in FRONT_FIELDS}


# ---------------------------------------------------------------- host names and origins

WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
# Caller-supplied text shown in an answer or a log line is cut to this.
SHOWN_CHARS = 100


def shown(value: str) -> str:
    """A caller's string, quoted, escaped and cut, fit for a message or a log line."""
    return repr(value[:SHOWN_CHARS]) + ("..." if len(value) > SHOWN_CHARS else "")


def host_name(name: str) -> str:
    """A host name in one spelling: lower case, no trailing dot, IPs in canonical form."""
    name = name.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(name))
    return name


def split_host(value: str) -> tuple[str, int | None] | None:
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
    return host_name(name), int(port) if port is not None else None


DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an Origin header or a configured origin; None if not one."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    return scheme, host_name(parts.hostname), port or DEFAULT_PORTS[scheme]


def origin_text(origin: tuple[str, str, int]) -> str:
    """An origin as a browser writes it in its Origin header."""
    scheme, host, port = origin
    shown = bracketed(host)
    return f"{scheme}://{shown}" if port == DEFAULT_PORTS[scheme] else f"{scheme}://{shown}:{port}"
