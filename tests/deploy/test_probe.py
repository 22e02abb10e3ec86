"""``python -m server.probe``, the image's HEALTHCHECK, against real servers.

Each server is started the way a container starts it, ``python -m server ROLE ...``,
on a free loopback port; the probe finds the port from the process's command line
and environment (read from /proc, as it reads process 1 in a container).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.run.probe import (
    ProbeError,
    check_grpc,
    check_http,
    check_tls,
    probe,
    server_command,
    target_of,
)
from tests.support import ROOT, free_port, wait_serving


def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "DCF_LOG_LEVEL": "WARNING", **(env or {})},
    )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.probe", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def wait_for(process: subprocess.Popen, check) -> tuple[bool, str]:
    """``check()`` until it passes, the process exits, or 20 s have passed."""
    deadline = time.monotonic() + 20
    serving, seen = check()
    while not serving and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        serving, seen = check()
    return serving, seen


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    port = free_port()
    process = start(["worker", "hello-dcf", "--port", str(port)], tmp_path / "worker.log")
    try:
        wait_serving(f"127.0.0.1:{port}")
        yield process, port
    finally:
        stop(process)


def test_the_probe_passes_a_serving_worker_and_fails_a_stopped_one(worker) -> None:
    process, port = worker
    done = run_probe(f"127.0.0.1:{port}")
    assert (done.returncode, done.stdout) == (0, f"127.0.0.1:{port}: SERVING\n")
    stop(process)
    done = run_probe(f"127.0.0.1:{port}", "--timeout", "1")
    assert (done.returncode, done.stdout) == (1, f"127.0.0.1:{port}: UNAVAILABLE\n")


def test_the_probe_finds_the_port_from_the_command_line(worker) -> None:
    process, port = worker
    argv, environ = server_command(Path(f"/proc/{process.pid}"))
    assert argv == ["worker", "hello-dcf", "--port", str(port)]
    target = target_of(argv, environ)
    assert target.address == f"127.0.0.1:{port}" and target.kind == "grpc"
    assert probe(target, 3.0) == (True, "SERVING")


def test_the_probe_names_an_unknown_service(worker) -> None:
    _, port = worker
    assert check_grpc(f"127.0.0.1:{port}", "no-such-service") == (False, "NOT_FOUND")


def test_the_probe_follows_the_port_a_gateway_takes_from_its_settings(tmp_path: Path) -> None:
    port = free_port()
    env = {"DCF_PORT": str(port), "DCF_METRICS_PORT": "0"}
    process = start(["gateway"], tmp_path / "gateway.log", env)
    try:
        wait_serving(f"127.0.0.1:{port}")
        argv, environ = server_command(Path(f"/proc/{process.pid}"))
        assert argv == ["gateway"]
        target = target_of(argv, environ)  # the port is only in the environment
        assert target.address == f"127.0.0.1:{port}"
        assert probe(target, 3.0) == (True, "SERVING")
    finally:
        stop(process)


def test_the_probe_asks_the_http_front_for_its_page(tmp_path: Path) -> None:
    port = free_port()
    # The front serves its page whether or not the gateway is up: nothing listens on 1.
    args = ["http", "--gateway", "127.0.0.1:1", "--port", str(port)]
    process = start(args, tmp_path / "http.log")
    try:
        serving, seen = wait_for(process, lambda: check_http(f"127.0.0.1:{port}", timeout=1.0))
        assert (serving, seen) == (True, "HTTP 200"), (tmp_path / "http.log").read_text()
        target = target_of(*server_command(Path(f"/proc/{process.pid}")))
        assert (target.address, target.kind) == (f"127.0.0.1:{port}", "http")
        assert probe(target, 3.0) == (True, "HTTP 200")
    finally:
        stop(process)
    assert check_http(f"127.0.0.1:{port}", timeout=1.0)[0] is False


def test_the_probe_checks_a_tls_server_by_its_handshake(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    env = {"DCF_TLS_CERT": str(tmp_path / "cert.pem"), "DCF_TLS_KEY": str(tmp_path / "key.pem")}
    port = free_port()
    process = start(["worker", "hello-dcf", "--port", str(port)], tmp_path / "tls.log", env)
    try:
        serving, seen = wait_for(process, lambda: check_tls(f"127.0.0.1:{port}", timeout=1.0))
        assert serving and seen.startswith("TLS handshake ok"), (tmp_path / "tls.log").read_text()
        target = target_of(*server_command(Path(f"/proc/{process.pid}")))
        assert (target.address, target.kind) == (f"127.0.0.1:{port}", "tls")
        assert probe(target, 3.0)[0] is True
        assert check_grpc(target.address, timeout=2.0)[0] is False  # plaintext is refused
    finally:
        stop(process)
    assert check_tls(f"127.0.0.1:{port}", timeout=1.0)[0] is False


def test_the_probe_refuses_a_process_that_is_not_a_server() -> None:
    with pytest.raises(ProbeError, match="not `python -m server`"):
        server_command(Path(f"/proc/{os.getpid()}"))  # pytest's own process
    with pytest.raises(ProbeError, match="cannot read the command line"):
        target_of(["no-such-role"], {})
