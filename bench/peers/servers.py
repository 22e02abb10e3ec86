"""A peer server process started for one block of measurements, and how to stop it.

Each runs in a session of its own, so that stopping it reaches the worker processes
it forked (MLServer's inference pool, Triton's server and model proxies) and
nothing else: SIGTERM to its process group, then SIGKILL to whatever is left of
that group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PeerServer:
    """A running peer: its process (the group's leader), its gRPC address and its log."""

    name: str
    process: subprocess.Popen
    address: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, size: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM to the group, then SIGKILL to what remains after ``grace`` seconds."""
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait()


def spawn(name: str, command: list[str], cwd: Path, env: dict[str, str], log: Path) -> PeerServer:
    """Start ``command`` in a session of its own, its output to ``log``."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return PeerServer(name, process, "", log)
