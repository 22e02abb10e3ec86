"""Running a function in this process, with no server: the client's ``--local``.

It takes the same registry entry, the same param check, the same size limit and the
same handler as a worker, so a local result equals the served one byte for byte
(the original DCF's "local device versus function" check, built in).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from handlers.base import Reply, Request
from server.config import Settings
from server.rpc.framing import InputLimit, check_params
from server.worker.servicer import load_function


def _limited(chunks: Iterable[bytes], name: str, max_bytes: int) -> Iterator[bytes]:
    limit = InputLimit(name, max_bytes)
    return (limit.count(chunk) for chunk in chunks)


def run_local(
    settings: Settings, name: str, params: Mapping[str, str], chunks: Iterable[bytes]
) -> Reply:
    """The function's reply for ``chunks``; raises FunctionError as a worker would."""
    config = settings.resolve(name)
    function = load_function(config)
    checked = check_params(config.name, params, function.params)
    return function.handle(Request(checked, _limited(chunks, config.name, config.max_input_bytes)))
