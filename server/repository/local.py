"""A folder's function run in this process, as its worker would run it: for its tests.

``run_folder(FOLDER, data, size="64")`` reads the folder (function.yaml checked,
requirements included), loads the handler, checks the params and the input limit as
a worker does, and returns the whole answer. A scaffolded folder's test calls it::

    answer = run_folder(Path(__file__).parent, b"hello")
    assert answer.body == b"HELLO"

``local_settings`` is what ``python -m client call --local NAME`` needs to find a
folder function: the settings, plus the folder NAME (or the path NAME) if it is one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from handlers.base import Request
from server.config import Settings, load_settings
from server.repository.folder import is_function_folder, read_folder
from server.repository.load import load_folder_function
from server.rpc.framing import InputLimit, check_params


@dataclass(frozen=True)
class Answer:
    """A function's whole answer: its content type, and its body or partial results."""

    content_type: str
    body: bytes
    results: tuple[bytes, ...] = ()


def run_folder(
    folder: str | Path, data: bytes | Iterable[bytes], /, **params: str | float | bool
) -> Answer:
    """The answer of the function in ``folder`` to ``data`` (bytes, or chunks of them).

    Params are given as a caller would (``size=64`` or ``size="64"``); raises the
    FunctionError a caller would get (InvalidInput, TooLarge...), or FolderRefused.
    """
    config = read_folder(Path(folder)).config
    function = load_folder_function(config)
    try:
        given = {name: _wire(value) for name, value in params.items()}
        checked = check_params(config.name, given, function.params)
        function.check(checked)
        chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
        limit = InputLimit(config.name, config.max_input_bytes)
        reply = function.handle(Request(checked, (limit.count(bytes(c)) for c in chunks)))
        parts = [bytes(part) for part in reply.parts]
    finally:
        function.close()
    if reply.partial_results:
        return Answer(reply.content_type, b"", tuple(parts))
    return Answer(reply.content_type, b"".join(parts))


def _wire(value: str | float | bool) -> str:
    """A param as it travels: text, booleans as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def local_settings(name: str, settings: Settings | None = None) -> tuple[Settings, str]:
    """(settings, function name) for running ``name`` in this process.

    ``name`` is a function of the settings (the registry, DCF_FUNCTIONS_DIRS), or a
    function folder: a path, or a folder of that name in the working directory.
    """
    settings = settings if settings is not None else load_settings()
    if settings.function(name) is not None or not is_function_folder(Path(name)):
        return settings, name
    config = read_folder(Path(name)).config
    others = tuple(fn for fn in settings.functions if fn.name != config.name)
    return replace(settings, functions=(*others, config)), config.name
