"""MLServer 1.7, configured and started from build/peers-venv for one block of measurements.

The model repository is written to a temporary folder: ``settings.json`` (the
server: free loopback ports, no metrics endpoint, no debug logging, gRPC messages
up to 512 MiB for the 256 MiB echo, ``parallel_workers``) and one
``model-settings.json`` per model, naming the runtimes of
bench/peers/mlserver_runtime.py, which MLServer imports from the checkout
(PYTHONPATH).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.peers import clients
from bench.peers.servers import PeerServer, spawn
from server.testing import ROOT, free_port

VENV = ROOT / "build" / "peers-venv"
RUNTIMES = "bench.peers.mlserver_runtime"
MODELS = ["ssd", "echo"]


@dataclass(frozen=True)
class MLServerConfig:
    """MLServer's knobs that matter on a small machine.

    ``parallel_workers``: inference processes (0: in the server's own process);
    ``interpreters`` and ``threads``: ssd's interpreters in each of them and each
    interpreter's threads.
    """

    parallel_workers: int = 1
    interpreters: int = 1
    threads: int = 2

    def describe(self) -> str:
        where = (
            "in the server process"
            if self.parallel_workers == 0
            else f"{self.parallel_workers} inference process(es)"
        )
        return (
            f"parallel_workers={self.parallel_workers} ({where}), each with "
            f"{self.interpreters} interpreter(s) of {self.threads} thread(s)"
        )

    @classmethod
    def parse(cls, text: str) -> MLServerConfig:
        """``WORKERS,INTERPRETERS,THREADS``, e.g. ``1,1,2``."""
        workers, interpreters, threads = (int(part) for part in text.split(","))
        return cls(workers, interpreters, threads)


def installed() -> bool:
    return (VENV / "bin" / "mlserver").is_file()


def write_repository(folder: Path, config: MLServerConfig, grpc_port: int) -> None:
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": free_port(),
        "grpc_port": grpc_port,
        "metrics_endpoint": None,
        "metrics_port": free_port(),
        "metrics_dir": str(folder / ".metrics"),
        "environments_dir": str(folder / ".envs"),
        "parallel_workers": config.parallel_workers,
        "grpc_max_message_length": 512 * clients.MiB,
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    models: dict[str, dict[str, Any]] = {
        "ssd": {
            "implementation": f"{RUNTIMES}.SsdRuntime",
            "parameters": {
                "extra": {"interpreters": config.interpreters, "threads": config.threads}
            },
        },
        "echo": {"implementation": f"{RUNTIMES}.EchoRuntime"},
    }
    for name, entry in models.items():
        (folder / name).mkdir()
        (folder / name / "model-settings.json").write_text(
            json.dumps({"name": name, **entry}, indent=2)
        )


def start(folder: Path, config: MLServerConfig, timeout: float = 180.0) -> PeerServer:
    """MLServer serving ssd and echo from ``folder``; returns once both models are ready."""
    if not installed():
        raise RuntimeError(f"MLServer is not installed in {VENV}: run `make bench-peers`")
    folder.mkdir(parents=True, exist_ok=True)
    grpc_port = free_port()
    write_repository(folder, config, grpc_port)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TF_ENABLE_ONEDNN_OPTS": "0",
    }
    env.pop("VIRTUAL_ENV", None)
    server = spawn(
        "MLServer",
        [str(VENV / "bin" / "mlserver"), "start", str(folder)],
        cwd=folder,
        env=env,
        log=folder / "mlserver.log",
    )
    server.address = f"127.0.0.1:{grpc_port}"
    try:
        asyncio.run(clients.wait_ready(server.address, MODELS, timeout, server.alive))
    except BaseException as exc:
        server.stop()
        raise RuntimeError(f"MLServer did not start:\n{server.log_tail()}") from exc
    return server
