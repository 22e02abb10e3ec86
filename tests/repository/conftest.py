"""Fixtures of the function folder tests: dcf serving function folders on free ports.

``serve(DIR, ...)`` starts ``python -m server --functions DIR`` (the embedded default)
with a registry of the given built-in functions only (hello-dcf by default: registry
entries and folders mixed, and no TensorFlow worker to wait for unless asked), and
returns once its overall health is SERVING. ``scaffolded(NAME, DIR)`` makes a function
folder as ``python -m server init`` does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from protos.dcf.v1 import dcf_pb2
from server.repository.scaffold import scaffold
from tests.support import (
    REGISTRY,
    ROOT,
    Service,
    call_requests,
    collect_call,
    free_port,
    wait_listening,
    wait_serving,
)

CALL_TIMEOUT = 120  # seconds: generous, on a shared two-core machine


@dataclass
class Served:
    """A running ``python -m server`` with function folders, and how to talk to it."""

    service: Service
    channel: grpc.Channel

    @property
    def pid(self) -> int:
        return self.service.process.pid

    def call(
        self, name: str, data: bytes, params: Mapping[str, str] | None = None
    ) -> tuple[str, bytes, list[bytes]]:
        """The gateway's answer over Call; raises grpc.RpcError on a failed call."""
        stub = self.service.gateway(self.channel)
        return collect_call(
            stub.Call(call_requests(name, [data], dict(params or {})), timeout=CALL_TIMEOUT)
        )

    def names(self) -> list[str]:
        stub = self.service.gateway(self.channel)
        reply = stub.ListFunctions(dcf_pb2.ListFunctionsRequest(), timeout=CALL_TIMEOUT)
        return [fn.name for fn in reply.functions]

    def log(self) -> str:
        return self.service.log.read_text(errors="replace")


def registry_document(functions: tuple[str, ...]) -> dict:
    """The packaged registry's entries for ``functions``, on free ports everywhere."""
    packaged = yaml.safe_load(REGISTRY.read_text())
    entries = {name: dict(packaged["functions"][name]) for name in functions}
    for entry in entries.values():
        entry["workers"] = [f"127.0.0.1:{free_port()}"]
    server = {"port": free_port(), "metrics_port": free_port(), "http_port": free_port()}
    return {"server": {**packaged["server"], **server}, "functions": entries}


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(
        *dirs: Path,
        registry: tuple[str, ...] = ("hello-dcf",),
        http: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> Served:
        index = len(started)
        config = tmp_path / f"registry-{index}.yaml"
        document = registry_document(registry)
        config.write_text(yaml.safe_dump(document))
        log = tmp_path / f"server-{index}.log"
        args = [sys.executable, "-m", "server", "--config", str(config)]
        args += [word for folder in dirs for word in ("--functions", str(folder))]
        args += [] if http else ["--no-http"]
        process = subprocess.Popen(
            args,
            cwd=ROOT,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        address = f"127.0.0.1:{document['server']['port']}"
        http_port = document["server"]["http_port"] if http else None
        service = Service(process, address, config, document, log, http_port)
        served = Served(service, service.channel())
        started.append(served)
        try:
            wait_serving(address, timeout=CALL_TIMEOUT)
            if http_port is not None:
                wait_listening(http_port, timeout=CALL_TIMEOUT)
        except TimeoutError as exc:
            raise AssertionError(f"dcf did not come up:\n{log.read_text()[-4000:]}") from exc
        return served

    yield start
    for served in started:
        served.channel.close()
        served.service.stop()


@pytest.fixture
def scaffolded() -> Callable[[str, Path], Path]:
    return scaffold
