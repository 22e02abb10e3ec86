"""A handler for the tests of the fault path: it fails the way a bug would."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from handlers.base import Function, Reply, Request


def explode(request: Request) -> Reply:
    request.read()
    raise RuntimeError("a bug in the handler: this text must stay in the server log")


def create(options: Mapping[str, Any]) -> Function:
    return Function(handle=explode)
