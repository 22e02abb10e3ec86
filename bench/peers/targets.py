"""The servers under comparison, each as how to start it and how to call it.

dcf is called through its gateway with dcf.v1 (``Invoke``; the 256 MiB echo with
the streaming ``Call``, as a caller moving that much would), the peers with Open
Inference ``ModelInfer``; every other part of the client is shared.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc

from bench import load, stream
from bench.peers import clients, mlserver, triton


class Running(Protocol):
    """A server up for one block: where to call it and the process to watch and stop."""

    address: str

    @property
    def pid(self) -> int: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Target:
    """One server: its name, how to start it, and its calls."""

    name: str
    family: str  # "dcf", "MLServer", "Triton": the goals compare dcf with the best MLServer
    start: Callable[[Path], Running]
    ssd: Callable[[grpc.aio.Channel, bytes], clients.OneCall]
    echo: Callable[[grpc.aio.Channel, bytes], clients.OneCall]
    big_echo: Callable[[str, int], float]  # (address, bytes) -> seconds
    description: str = ""


class DcfService:
    """``python -m server`` (gateway and one worker process per function) as a Running."""

    def __init__(self, folder: Path) -> None:
        from server.testing import start_service

        folder.mkdir(parents=True, exist_ok=True)
        self.service = start_service(folder, args=["--log-level", "WARNING", "--no-http"])
        self.address = self.service.address

    @property
    def pid(self) -> int:
        return self.service.process.pid

    def stop(self) -> None:
        self.service.stop()


def _dcf_big_echo(address: str, size: int) -> float:
    return asyncio.run(stream.echo(address, size))


def _infer_big_echo(address: str, size: int) -> float:
    """One ModelInfer of ``size`` bytes through the echo model; seconds to the answer."""

    async def one() -> float:
        payload = b"\x5a" * size
        async with grpc.aio.insecure_channel(address, options=clients.BIG_MESSAGES) as channel:
            call = clients.infer(channel, "echo", payload)
            started = time.perf_counter()
            answer = await call()
            elapsed = time.perf_counter() - started
        if len(answer) != size:
            raise RuntimeError(f"the echo returned {len(answer)} of {size} bytes")
        return elapsed

    return asyncio.run(one())


def dcf() -> Target:
    return Target(
        name="dcf",
        family="dcf",
        start=DcfService,
        ssd=lambda channel, data: load.invoke(channel, "ssd", data),
        echo=lambda channel, data: load.invoke(channel, "hello-dcf", data),
        big_echo=_dcf_big_echo,
    )


def mlserver_target(config: mlserver.MLServerConfig, label: str = "") -> Target:
    return Target(
        name=label or f"MLServer {config.parallel_workers},{config.interpreters},{config.threads}",
        family="MLServer",
        start=lambda folder: mlserver.start(folder, config),
        ssd=lambda channel, data: clients.infer(channel, "ssd", data),
        echo=lambda channel, data: clients.infer(channel, "echo", data),
        big_echo=_infer_big_echo,
        description=config.describe(),
    )


def triton_target(setup: triton.TritonSetup) -> Target:
    return Target(
        name=f"Triton {setup.instances},{setup.threads}",
        family="Triton",
        start=lambda folder: triton.start(folder, setup),
        ssd=lambda channel, data: clients.infer(channel, "ssd", data),
        echo=lambda channel, data: clients.infer(channel, "echo", data),
        big_echo=_infer_big_echo,
        description=setup.describe(),
    )
