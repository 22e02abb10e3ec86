"""An upload received whole before its call takes a slot (``max_uploads`` in the registry).

A function that needs its whole input before it can work (an image, a video) does
nothing useful while the input trickles in, yet a slot it took at the start is
held all that time: four slow uploads kept ssd-video from everyone. So its worker
receives the input first, under a bound of its own, and takes a slot only when the
input is all there. The bytes stay in memory up to a small size, then go to a
temporary file that has no name on disk (it is unlinked as it is made), so a
worker killed mid-upload leaves nothing behind.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

# Received bytes kept in memory before the upload moves to a file.
IN_MEMORY_BYTES = 2 << 20


class Received:
    """The bytes of one upload, written as they arrive, read back as chunks."""

    def __init__(self, spool_dir: str = "", in_memory_bytes: int = IN_MEMORY_BYTES) -> None:
        self._file = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - closed by close()
            max_size=in_memory_bytes, dir=spool_dir or None, prefix="dcf-upload-"
        )
        self.size = 0

    def write(self, chunk: bytes | memoryview) -> None:
        self._file.write(chunk)
        self.size += len(chunk)

    def chunks(self, chunk_bytes: int) -> Iterator[bytes]:
        """The upload from its start, in pieces of at most ``chunk_bytes``."""
        self._file.seek(0)
        while piece := self._file.read(chunk_bytes):
            yield piece

    def close(self) -> None:
        self._file.close()
