"""An upload received whole before its call takes a slot (``max_uploads`` in the registry).

A function that needs its whole input before it can work (an image, a video) does
nothing useful while the input trickles in, yet a slot it took at the start is
held all that time: four slow uploads kept ssd-video from everyone. So its worker
receives the input first, under a bound of its own, and takes a slot only when the
input is all there. The bytes stay in memory up to a small size, then go to a
temporary file that has no name on disk (it is unlinked as it is made), so a
worker killed mid-upload leaves nothing behind.

A handler that wants its input as a file (ssd-video: FFmpeg reads a path) is given
that file's path (``path``) when the upload went to disk, so that it is not copied
to a second file of the handler's own: one copy of a large upload on disk, not two.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from typing import IO

# Received bytes kept in memory before the upload moves to a file.
IN_MEMORY_BYTES = 2 << 20
# Where Linux shows a process's open files by descriptor: an unlinked file's only path.
_FD_PATHS = "/proc/self/fd"


class Received:
    """The bytes of one upload, written as they arrive, read back as chunks."""

    def __init__(self, spool_dir: str = "", in_memory_bytes: int = IN_MEMORY_BYTES) -> None:
        self._spool_dir = spool_dir or None
        self._in_memory_bytes = in_memory_bytes
        self._memory = io.BytesIO()
        self._file: IO[bytes] = self._memory  # the memory, until the upload outgrows it
        self.size = 0

    @property
    def _on_disk(self) -> bool:
        return self._file is not self._memory

    def write(self, chunk: bytes | memoryview) -> None:
        if not self._on_disk and self.size + len(chunk) > self._in_memory_bytes:
            self._move_to_disk()
        self._file.write(chunk)
        self.size += len(chunk)

    def _move_to_disk(self) -> None:
        disk = tempfile.TemporaryFile(dir=self._spool_dir, prefix="dcf-upload-")  # noqa: SIM115 - closed by close()
        try:
            with self._memory.getbuffer() as held:
                disk.write(held)
        except BaseException:
            disk.close()
            raise
        self._memory.close()
        self._file = disk

    def chunks(self, chunk_bytes: int) -> Iterator[bytes]:
        """The upload from its start, in pieces of at most ``chunk_bytes``."""
        self._file.seek(0)
        while piece := self._file.read(chunk_bytes):
            yield piece

    def path(self) -> str | None:
        """A path that opens the upload while this is open, if it went to disk and the
        system shows open files by descriptor (Linux); else None."""
        if not self._on_disk or not os.path.isdir(_FD_PATHS):
            return None
        self._file.flush()
        return f"{_FD_PATHS}/{self._file.fileno()}"

    def close(self) -> None:
        self._file.close()
