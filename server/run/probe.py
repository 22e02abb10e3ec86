"""``python -m server.probe [ADDRESS [SERVICE]]``: exit 0 when a dcf server is serving.

For container health checks (the image's HEALTHCHECK) and for people:

    python -m server.probe 127.0.0.1:50062            # grpc.health.v1 Check, service ""
    python -m server.probe gateway:50051 ssd          # is the gateway's function ssd up?
    python -m server.probe                            # the server this container runs

With no ADDRESS the probe checks the server it runs beside: it reads the command
line and environment of process 1 (a container's ``python -m server ...``), works
out with the server's own parser and settings which port that role listens on, and
asks there. So one HEALTHCHECK line fits the gateway, every worker and the embedded
default, whatever ports a deployment gives them.

A role serving TLS cannot be asked over plaintext, and the probe holds no client
certificate; for it the probe checks that the port completes a TLS handshake. The
``http`` front is asked for its page, ``GET /`` (over HTTPS when it has TLS; any
answer below 500 counts), which does not depend on the gateway being up.

Exit status: 0 serving; 1 not serving or no answer (one line on stdout says which);
2 the probe cannot tell where to look.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.rpc.address import loopback, split


class ProbeError(Exception):
    """Where to probe cannot be worked out."""


@dataclass(frozen=True)
class Target:
    """What to ask: ``kind`` is grpc (health Check), tls (handshake), http or https (GET)."""

    address: str
    kind: str = "grpc"
    service: str = ""


def check_grpc(address: str, service: str = "", timeout: float = 3.0) -> tuple[bool, str]:
    """Ask grpc.health.v1 at ``address`` about ``service``; (serving, what was seen)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return False, exc.code().name
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def check_tls(address: str, timeout: float = 3.0) -> tuple[bool, str]:
    """Whether ``address`` completes a TLS handshake (ALPN h2); identity is not checked."""
    host, port = _split_port(address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # liveness on loopback, not who the peer is
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            return True, f"TLS handshake ok ({tls.version()})"
    except (OSError, ssl.SSLError) as exc:
        return False, f"no TLS handshake: {exc}"


def check_http(address: str, tls: bool = False, timeout: float = 3.0) -> tuple[bool, str]:
    """Whether ``GET /`` at ``address`` answers below 500 (certificate not checked)."""
    host, port = _split_port(address)
    connection: http.client.HTTPConnection
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/")
        status = connection.getresponse().status
    except OSError as exc:
        return False, f"no HTTP answer: {exc}"
    finally:
        connection.close()
    return status < 500, f"HTTP {status}"


def target_of(argv: Sequence[str], environ: Mapping[str, str]) -> Target:
    """Where the server started as ``python -m server *argv`` under ``environ`` answers.

    The port comes exactly as the server takes it: the flag, else for a worker the
    port of its registry address, else the settings (file < environment).
    """
    # Imported here: `python -m server.probe ADDRESS` does without the server's modules.
    from server.config import ConfigError, load_settings
    from server.run.cli import build_parser
    from server.run.supervisor import local_port

    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit:
        command = " ".join(argv)
        raise ProbeError(f"cannot read the command line: python -m server {command}") from None
    role = getattr(args, "role", None)
    port = getattr(args, "port", None)
    config, overrides = getattr(args, "config", None), {"host": getattr(args, "host", None)}
    try:
        # Function folders are not read: a probe needs ports, not handlers or digests.
        settings = load_settings(config, environ=environ, overrides=overrides, folders=False)
    except ConfigError as exc:
        raise ProbeError(str(exc)) from None
    if role == "http":
        address = loopback(settings.host, port or settings.http_port)
        return Target(address, "https" if settings.tls_cert else "http")
    if role == "worker":
        function = settings.function(args.function)
        if port is None and function is not None and function.workers:
            port = local_port(function.workers[0])
    elif port is None:
        port = settings.port
    if port is None:
        raise ProbeError(f"no port for the {role or 'embedded'} role")
    address = loopback(settings.host, port)
    return Target(address, "tls" if settings.tls_cert else "grpc")


def server_command(proc: Path = Path("/proc/1")) -> tuple[list[str], dict[str, str]]:
    """The ``python -m server`` arguments and the environment of process ``proc``."""
    try:
        raw = (proc / "cmdline").read_bytes().split(b"\0")
        words = [w.decode(errors="surrogateescape") for w in raw if w]
    except OSError as exc:
        raise ProbeError(f"cannot read {proc}/cmdline: {exc.strerror}") from None
    for i in range(len(words) - 1):
        if words[i] == "-m" and words[i + 1] == "server":
            break
    else:
        raise ProbeError(f"process {proc.name} is not `python -m server`; give ADDRESS")
    try:
        raw = (proc / "environ").read_bytes().split(b"\0")
        pairs = (w.decode(errors="surrogateescape").partition("=") for w in raw if b"=" in w)
        environ = {name: value for name, _, value in pairs}
    except OSError:
        environ = dict(os.environ)  # not ours to read: the container's is the same
    return words[i + 2 :], environ


def probe(target: Target, timeout: float) -> tuple[bool, str]:
    if target.kind == "tls":
        return check_tls(target.address, timeout)
    if target.kind in ("http", "https"):
        return check_http(target.address, target.kind == "https", timeout)
    return check_grpc(target.address, target.service, timeout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server.probe",
        description="Exit 0 if a dcf server is serving (gRPC health). "
        "Without ADDRESS: the `python -m server` that runs as process 1.",
    )
    parser.add_argument("address", nargs="?", help="HOST:PORT (default: process 1's server)")
    parser.add_argument("service", nargs="?", default="", help='health service (default "")')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    try:
        if args.address:
            target = Target(args.address, "grpc", args.service)
        else:
            command, environ = server_command()
            target = target_of(command, environ)
    except ProbeError as exc:
        print(f"probe: {exc}")
        return 2
    serving, seen = probe(target, args.timeout)
    print(f"{target.address}: {seen}")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())


def _split_port(address: str) -> tuple[str, int]:
    host, port = split(address)
    return host, int(port)
