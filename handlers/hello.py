"""hello-dcf: the text echo. The input comes back unchanged, streamed as it arrives.

It returns the request's own chunk iterator as its parts, so a gigabyte passes
through one chunk at a time and is never held in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from handlers.base import Function, Reply, Request


def echo(request: Request) -> Reply:
    return Reply(content_type="text/plain", parts=request.chunks)


def create(options: Mapping[str, Any]) -> Function:
    return Function(handle=echo)
