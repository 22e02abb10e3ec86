"""What tests share: Call streams built and collected, and the server harness.

Tests import helpers from this package only, never from conftest, another test
module or bench/: a conftest is pytest's to load, and importing one as a module
loads it a second time under another name. Beside this module:

- ``media``: real inputs made in the test (photos, WAVs, videos, broken files);
- ``inprocess`` and ``inprocess_handlers``: the fast tier's gateway and worker
  host in the test's own event loop, with small handlers and no TensorFlow;
- ``fixture_handlers``: a tiny function the served tests register;
- ``http``, ``oip``, ``reliability``: helpers of those test folders;
- ``examples``: the README's and docs' commands, pulled out to be run;
- ``original_send_wav``: the original DCF procedure, the oracle of send-wav's
  picture (the benchmark's baseline too);
- ``dockerfile``: a Dockerfile's instructions. The harness that starts real servers lives in
server/testing.py (the benchmarks use it too); it is re-exported here so that a
test names one module for all it needs, wherever the harness moves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterable, Mapping
from pathlib import Path

import yaml

from protos.dcf.v1 import dcf_pb2
from protos.dcf.v1.calls import call_requests, collect_call
from server.testing import (
    REGISTRY,
    ROOT,
    Service,
    free_port,
    metric,
    start_service,
    wait_listening,
    wait_serving,
    write_registry,
)

__all__ = [
    "REGISTRY",
    "ROOT",
    "Service",
    "call_requests",
    "collect_call",
    "collect_call_async",
    "free_port",
    "k8s_memory_limit",
    "memory",
    "metric",
    "reset_peak",
    "run_client",
    "spawn_gateway",
    "spawn_server",
    "start_service",
    "wait_listening",
    "wait_serving",
    "write_registry",
]


async def collect_call_async(
    responses: AsyncIterable[dcf_pb2.CallResponse],
) -> tuple[str, bytes, list[bytes]]:
    """``collect_call`` for a call made on an asyncio channel."""
    return collect_call([response async for response in responses])


def spawn_server(
    args: list[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``python -m server ARGS`` (one role: gateway, worker, http) with its output in ``log``."""
    with log.open("ab") as output:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "server", *args],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )


def memory(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (the peak) of process ``pid``, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def reset_peak(pid: int) -> bool:
    """Start VmHWM afresh from VmRSS ("5" in clear_refs, Linux 4.0+); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False  # the peak then also covers start-up, which only makes a test stricter
    return True


def k8s_memory_limit(manifest: str) -> int:
    """The memory limit, in bytes, of the container of the Deployment in docker/k8s/``manifest``."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for document in yaml.safe_load_all((ROOT / "docker" / "k8s" / manifest).read_text()):
        if document and document.get("kind") == "Deployment":
            (container,) = document["spec"]["template"]["spec"]["containers"]
            text = str(container["resources"]["limits"]["memory"])
            return int(text[:-2]) * units[text[-2:]]
    raise AssertionError(f"no Deployment in {manifest}")


def spawn_gateway(
    port: int, route: str, log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """The gateway role alone on ``port``, its one function routed by ``route``
    ('NAME=HOST:PORT[,HOST:PORT]'), with its metrics on a free port."""
    args = ["gateway", "--port", str(port), "--metrics-port", "0", "--route", route]
    return spawn_server(args, log, env)


def run_client(
    *args: str, stdin: bytes = b"", env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``python -m client ARGS`` to its end, as a user runs it: output and status."""
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        env=None if env is None else dict(env),
    )


def run_probe(script: Path, address: str, steps: list[dict], timeout: float = 300) -> list[dict]:
    """Run ``steps`` (JSON in, one JSON result per step out) with a probe script in a
    process of its own: tritonclient's protos and ours share message names, so they
    cannot live in one process (tests/oip/triton_probe.py, tests/http/v2_probe.py)."""
    done = subprocess.run(
        [sys.executable, str(script), address],
        input=json.dumps(steps),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{script.name} failed:\n{done.stderr[-4000:]}"
    results = json.loads(done.stdout)
    assert len(results) == len(steps)
    return results
