"""Writing a function's answer to standard output as it arrives.

Chunks of one body are written raw (text, JSON, PNG alike) or as base64; partial
results become one line each, flushed at once so ``| jq`` sees every frame as soon
as it is done. Binary output is not dumped onto a terminal, as curl does.
"""

from __future__ import annotations

import base64
from typing import BinaryIO

from client.errors import CliError

_TEXT_TYPES = ("text/", "application/json", "application/x-ndjson")


class Output:
    def __init__(self, stream: BinaryIO, as_base64: bool = False, terminal: bool = False) -> None:
        self._stream = stream
        self._as_base64 = as_base64
        self._terminal = terminal
        self._pending = b""  # base64 encodes in 3-byte groups; the rest waits here
        self._binary = False
        self._last = b"\n"

    def begin(self, content_type: str, partial_results: bool) -> None:
        self._binary = not content_type.startswith(_TEXT_TYPES) and not partial_results
        if self._binary and self._terminal and not self._as_base64:
            raise CliError(
                "INVALID_ARGUMENT",
                f"the result is binary ({content_type}): redirect it to a file or use --base64",
            )

    def chunk(self, data: bytes) -> None:
        if self._as_base64:
            data = self._pending + data
            cut = len(data) - len(data) % 3
            self._pending = data[cut:]
            data = base64.b64encode(data[:cut])
        self._write(data)

    def result(self, data: bytes) -> None:
        if self._as_base64:
            data = base64.b64encode(data)
        self._write(data + b"\n")
        self._stream.flush()

    def end(self) -> None:
        if self._as_base64:
            self._write(base64.b64encode(self._pending) + b"\n")
        elif self._terminal and self._last != b"\n":
            self._write(b"\n")
        self._stream.flush()

    def _write(self, data: bytes) -> None:
        if data:
            self._stream.write(data)
            self._last = data[-1:]
