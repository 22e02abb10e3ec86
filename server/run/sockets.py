"""Unix domain sockets between the embedded default's gateway and its local workers.

A call crosses the gateway-to-worker hop twice, and on one machine a Unix socket
does that hop in about two thirds of loopback TCP's time (docs/performance.md).
So each local worker listens on a socket in a directory of its own as well as on
its registry port: the gateway routes there, while the port still serves anyone
who calls the worker directly (tests, ``grpcurl``, a gateway elsewhere).

The directory is private to the user (mode 0700) and removed when the gateway
stops. A gateway that is killed cannot remove it; its workers then stop too
(``--exit-with-parent``), and the last one out removes it. Workers that speak
TLS keep TCP: their certificates name a host, not a path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from server.config import FunctionConfig

log = logging.getLogger(__name__)

# sun_path holds 108 bytes on Linux, 104 on macOS, with its terminating NUL.
MAX_SOCKET_PATH = 103


class WorkerSockets:
    """A socket path per local worker (by its port), or none when ``enabled`` is false."""

    def __init__(self, enabled: bool) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="dcf-workers-")) if enabled else None

    def path(self, port: int) -> str:
        """Where the worker on ``port`` also listens, or "" (TCP only)."""
        if self._directory is None:
            return ""
        path = str(self._directory / f"{port}.sock")
        if len(path.encode()) > MAX_SOCKET_PATH:
            log.warning("worker socket path too long for a Unix socket, using TCP: %s", path)
            return ""
        return path

    def routed(self, fn: FunctionConfig, port: int) -> FunctionConfig:
        """``fn`` as the gateway reaches it: through its worker's socket, if it has one."""
        path = self.path(port)
        return replace(fn, workers=(f"unix:{path}",)) if path else fn

    def close(self) -> None:
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)


def leave_socket_directory(path: str) -> None:
    """A worker whose gateway is gone, stopping: its socket file goes, and the directory
    with it once it is empty (the last worker out)."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(path))
