"""What the servers log about a call, made safe: request ids and caller-supplied text.

Anything a caller sends may reach a log line: a function name, a request id. Raw,
a newline in it forges a log line of its own and a 10 MiB name writes a 10 MiB
line. So every such string is printed through ``loggable``: control and non-ASCII
characters escaped, the length cut. A request id is kept only if it is a short
run of plain characters, which is what tracing systems send; anything else is
replaced by a fresh id, so ids can be matched across processes and logs as they are.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

REQUEST_ID = "x-request-id"
_PLAIN_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,64}")
LOGGED_CHARACTERS = 120


def request_id_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The caller's ``x-request-id`` if it is a plain id, else a new one."""
    for key, value in metadata or ():
        if key == REQUEST_ID and isinstance(value, str) and _PLAIN_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex[:16]


def loggable(text: str, limit: int = LOGGED_CHARACTERS) -> str:
    """``text`` fit for one log line: printable ASCII, at most about ``limit`` characters."""
    cut = text[:limit].encode("ascii", "backslashreplace").decode("ascii")
    safe = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in cut)
    return safe if len(text) <= limit else f"{safe}...({len(text)} characters)"
