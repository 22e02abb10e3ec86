"""What a caller may hand a call as its input and params, turned into what goes on the wire.

Inputs become chunks of at most ``CHUNK_BYTES``, read one at a time as the call sends
them: a file or an iterable is never read whole, so a gigabyte costs the client a
megabyte. Params become strings, spelled as ``python -m client call -p KEY=VALUE``
would spell them (``true``/``false`` for booleans), since that is what every dcf
function parses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Iterator, Mapping
from typing import IO, Any, TypeAlias

# The size of the chunks sent: the gateway's and the workers' own (server/functions.yaml).
CHUNK_BYTES = 1 << 20

Data: TypeAlias = (
    "bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes] | Iterable[bytes]"
)
"""A call's input: bytes; a str (sent as UTF-8 text); a path (``pathlib.Path``: the file);
a binary file object; or any iterable of bytes chunks. Files and iterables are streamed."""

AsyncData: TypeAlias = "Data | AsyncIterable[bytes]"
"""``Data``, or an async iterable of bytes chunks (``AsyncClient`` only)."""

ParamValue: TypeAlias = "str | bool | int | float"

_BYTES = (bytes, bytearray, memoryview)


def wire_params(params: Mapping[str, Any]) -> dict[str, str]:
    """``params`` as the strings a function receives; TypeError for a value of another type."""
    wire = {}
    for name, value in params.items():
        if isinstance(value, bool):  # before int: a bool is an int too
            wire[name] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            wire[name] = str(value)
        else:
            raise TypeError(
                f"param {name}: expected str, bool, int or float, got {type(value).__name__}"
            )
    return wire


def _pieces(data: bytes | bytearray | memoryview) -> Iterator[bytes]:
    view = memoryview(data).cast("B")
    for start in range(0, len(view), CHUNK_BYTES):
        yield bytes(view[start : start + CHUNK_BYTES])


def _rechunked(chunks: Iterable[Any]) -> Iterator[bytes]:
    """The caller's chunks, big ones cut to ``CHUNK_BYTES``, empty ones left out."""
    for chunk in chunks:
        if not isinstance(chunk, _BYTES):
            raise TypeError(f"input chunks must be bytes, got {type(chunk).__name__}")
        if len(chunk) > CHUNK_BYTES or not isinstance(chunk, bytes):
            yield from _pieces(chunk)
        elif chunk:
            yield chunk


def _read(source: IO[Any]) -> bytes:
    chunk = source.read(CHUNK_BYTES)
    if isinstance(chunk, str):
        raise TypeError("the input file is open in text mode: open it with 'rb'")
    return chunk or b""


def _file_chunks(source: IO[bytes]) -> Iterator[bytes]:
    while chunk := _read(source):
        yield chunk


def _is_path(data: object) -> bool:
    return isinstance(data, os.PathLike)


def _is_file(data: object) -> bool:
    return callable(getattr(data, "read", None))


def _unknown(data: object) -> TypeError:
    return TypeError(
        "the input must be bytes, str, a path, a binary file or an iterable of bytes, "
        f"not {type(data).__name__}"
    )


@contextlib.contextmanager
def chunks_of(data: Data) -> Iterator[Iterator[bytes]]:
    """The chunks of ``data``, read as they are taken.

    A path is opened here, so that a missing file fails before any call starts, and
    closed when the block ends. Files the caller opened stay the caller's to close.
    """
    if isinstance(data, _BYTES):
        yield _pieces(data)
    elif isinstance(data, str):
        yield _pieces(data.encode("utf-8"))
    elif _is_path(data):
        with open(data, "rb") as source:  # type: ignore[arg-type]  # a PathLike, checked above
            yield _file_chunks(source)
    elif _is_file(data):
        yield _file_chunks(data)  # type: ignore[arg-type]  # has read(), checked above
    elif isinstance(data, Iterable):
        yield _rechunked(data)
    else:
        raise _unknown(data)


async def _async_rechunked(chunks: AsyncIterable[Any]) -> AsyncGenerator[bytes, None]:
    async for chunk in chunks:
        for piece in _rechunked((chunk,)):
            yield piece


async def _as_async(chunks: Iterator[bytes]) -> AsyncGenerator[bytes, None]:
    for chunk in chunks:
        yield chunk


async def _in_thread(chunks: Iterator[bytes]) -> AsyncGenerator[bytes, None]:
    """A blocking iterator (a file's reads, a caller's generator) read off the event loop."""
    while True:
        chunk = await asyncio.to_thread(next, chunks, None)
        if chunk is None:
            return
        yield chunk


@contextlib.contextmanager
def async_chunks_of(data: AsyncData) -> Iterator[AsyncGenerator[bytes, None]]:
    """``chunks_of`` for the event loop: files and plain iterables are read in a thread.

    A plain context manager, so that a path is opened (or found missing) at once,
    before the call starts, as ``chunks_of`` does.
    """
    if isinstance(data, AsyncIterable):
        yield _async_rechunked(data)
        return
    with chunks_of(data) as chunks:
        in_memory = isinstance(data, (*_BYTES, str))
        yield _as_async(chunks) if in_memory else _in_thread(chunks)
