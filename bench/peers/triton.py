"""Triton Inference Server through PyTriton, started from build/pytriton-venv for one block.

An optional second peer (``make bench-peers TRITON=1``). PyTriton 0.7 needs NumPy 1,
so its environment cannot hold dcf's NumPy 2 and OpenCV 4.14: it has NumPy 1.26
and OpenCV 4.11 with the same TensorFlow, and the table says so.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from bench.peers import clients
from bench.peers.servers import PeerServer, spawn
from server.testing import ROOT, free_port

VENV = ROOT / "build" / "pytriton-venv"
MODELS = ["ssd", "echo"]


@dataclass(frozen=True)
class TritonSetup:
    """ssd's model instances (each its own interpreter) and each interpreter's threads."""

    instances: int = 1
    threads: int = 2

    def describe(self) -> str:
        return (
            f"{self.instances} ssd model instance(s), each with an interpreter of "
            f"{self.threads} thread(s); NumPy 1.26 and OpenCV 4.11 (PyTriton needs NumPy 1)"
        )

    @classmethod
    def parse(cls, text: str) -> TritonSetup:
        """``INSTANCES,THREADS``, e.g. ``1,2``."""
        instances, threads = (int(part) for part in text.split(","))
        return cls(instances, threads)


def installed() -> bool:
    return (VENV / "bin" / "python").is_file() and any(
        VENV.glob("lib/python*/site-packages/pytriton")
    )


def start(folder: Path, setup: TritonSetup, timeout: float = 240.0) -> PeerServer:
    """Triton serving ssd and echo; returns once both models are ready."""
    if not installed():
        raise RuntimeError(f"PyTriton is not installed in {VENV}: run `make bench-peers TRITON=1`")
    folder.mkdir(parents=True, exist_ok=True)
    grpc_port = free_port()
    ports = [str(grpc_port), str(free_port()), str(free_port())]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "HOME": str(folder)}
    env.pop("VIRTUAL_ENV", None)
    server = spawn(
        "Triton",
        [
            str(VENV / "bin" / "python"),
            "-m",
            "bench.peers.triton_server",
            *ports,
            str(setup.instances),
            str(setup.threads),
        ],
        cwd=folder,
        env=env,
        log=folder / "triton.log",
    )
    server.address = f"127.0.0.1:{grpc_port}"
    try:
        asyncio.run(clients.wait_ready(server.address, MODELS, timeout, server.alive))
    except BaseException as exc:
        server.stop()
        raise RuntimeError(f"Triton did not start:\n{server.log_tail()}") from exc
    return server
