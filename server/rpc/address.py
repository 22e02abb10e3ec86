"""HOST:PORT as dcf writes and reads it, IPv6 hosts in brackets.

Every role names servers this way (the registry's worker addresses, the listen
address, probes, the HTTP front's links to the gateway); one module reads and
writes the form so that an IPv6 address means the same thing everywhere.
"""

from __future__ import annotations

# Listen addresses that mean "every interface": reached from here through loopback.
WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})


def split(address: str) -> tuple[str, str]:
    """'host:port' or '[v6]:port' -> (host without brackets, port as written)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), port


def bracketed(host: str) -> str:
    """A host as it stands before ':port' (an IPv6 address in brackets)."""
    host = host.strip("[]")
    return f"[{host}]" if ":" in host else host


def join(host: str, port: int | str) -> str:
    return f"{bracketed(host)}:{port}"


def loopback(host: str | None, port: int | str) -> str:
    """Where to reach, from this machine, a server listening on ``host:port``."""
    return join("127.0.0.1" if host is None or host in WILDCARDS else host, port)
