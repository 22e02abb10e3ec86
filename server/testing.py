"""Real dcf servers on free loopback ports: dcf's public testing API.

Our own tests and benchmarks use it, and so may a function's author::

    with start_service(tmp_path, extra={"mine": {...registry entry...}}) as dcf:
        stub = dcf.gateway(dcf.channel())     # dcf.address, dcf.http_url, dcf.log

serves the packaged functions plus ``extra`` on free ports and returns once every
worker answers; leaving the block stops it. It ships with the package so that it
works from an installed dcf as well as from a checkout.

``start_service`` runs ``python -m server`` (the embedded default: the gateway and
one process per worker) from a copy of the packaged registry whose ports are all
free ones, and returns once every function's worker is ready.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from protos.dcf.v1 import dcf_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "server" / "functions.yaml"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_serving(address: str, service: str = "", timeout: float = 60.0) -> None:
    """Poll grpc.health.v1 at ``address`` until ``service`` is SERVING."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                last = exc.code().name
            time.sleep(0.1)
    raise TimeoutError(f"{address} service {service!r} not serving after {timeout}s ({last})")


def wait_listening(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    """Wait until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def write_registry(path: Path, extra: dict | None = None, server: dict | None = None) -> dict:
    """The packaged registry with free ports everywhere, plus ``extra`` functions."""
    document = yaml.safe_load(REGISTRY.read_text())
    document.setdefault("server", {}).update(
        {
            "port": free_port(),
            "metrics_port": free_port(),
            "http_port": free_port(),
            **(server or {}),
        }
    )
    functions = document["functions"]
    functions.update(extra or {})
    for entry in functions.values():
        entry["workers"] = [f"127.0.0.1:{free_port()}"]
    path.write_text(yaml.safe_dump(document))
    return document


@dataclass
class Service:
    """A running ``python -m server`` and where to reach it."""

    process: subprocess.Popen
    address: str
    config: Path
    document: dict
    log: Path
    http_port: int | None = None  # the HTTP front's, None with --no-http

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the HTTP API and web page."""
        if self.http_port is None:
            raise RuntimeError("this service runs without its HTTP front (--no-http)")
        return f"http://127.0.0.1:{self.http_port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(
            self.address, options=[("grpc.max_receive_message_length", 1 << 28)]
        )

    def gateway(self, channel: grpc.Channel) -> dcf_pb2_grpc.GatewayStub:
        return dcf_pb2_grpc.GatewayStub(channel)

    def metrics_text(self) -> str:
        """The gateway's Prometheus metrics, as its metrics port serves them."""
        url = f"http://127.0.0.1:{self.document['server']['metrics_port']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.read().decode()

    def worker_address(self, name: str) -> str:
        return self.document["functions"][name]["workers"][0]

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_service(
    tmp: Path,
    extra: dict | None = None,
    args: list[str] | None = None,
    env: dict | None = None,
    server: dict | None = None,
) -> Service:
    """Serve ``python -m server`` from ``tmp`` (its registry and log go there) until stopped.

    ``extra`` adds registry entries, ``server`` overrides server settings, ``args``
    and ``env`` go to the process. Raises RuntimeError, with the log's end, if it
    does not come up.
    """
    config = tmp / "functions.yaml"
    document = write_registry(config, extra, server)
    log = tmp / "server.log"
    with log.open("wb") as output:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--config", str(config), *(args or [])],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    service = Service(process, f"127.0.0.1:{document['server']['port']}", config, document, log)
    given = list(args or [])
    if "--http-port" in given:
        service.http_port = int(given[given.index("--http-port") + 1])
    elif "--no-http" not in given:
        service.http_port = int(document["server"]["http_port"])
    try:
        wait_serving(service.address)
        for name in document["functions"]:
            wait_serving(service.address, name, timeout=120)
        if service.http_port is not None:
            wait_listening(service.http_port)
    except BaseException as exc:
        service.stop()
        raise RuntimeError(f"server did not start:\n{log.read_text()[-4000:]}") from exc
    return service


def metric(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with ``labels`` in ``text`` (0 when it has none yet)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0
