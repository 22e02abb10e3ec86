"""``python -m server``: the embedded default, or one role (gateway, worker) of a deployment.

    python -m server [--config F] [--host H] [--port N] [--route NAME=HOST:PORT,...]
        the gateway on 127.0.0.1:50051 and every locally addressed worker as its own process
    python -m server gateway [--config F] [--host H] [--port N] [--route ...]
    python -m server worker NAME [--config F] [--host H] [--port N]
    python -m server http [--host H] [--port 8080] [--gateway HOST:PORT]
        the HTTP API and web page alone, calling the gateway over gRPC; the embedded
        default serves them too, on --http-port (8080; $DCF_HTTP_PORT) unless --no-http
    python -m server --functions DIR
        the embedded default, plus every function folder in DIR, followed as it changes
    python -m server init NAME [--dir DIR]      a function folder to start from
    python -m server ship FOLDER --out DIR      what deploys it (docs/functions.md)

Settings come from defaults < the YAML file (--config, else $DCF_CONFIG, else
server/functions.yaml) < DCF_* environment variables < these flags.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from handlers.errors import FunctionError
from protos.dcf.v1 import dcf_pb2
from server.config import DEFAULT_CONFIG, ConfigError, Settings
from server.gateway.core import Gateway, GatewayServicer
from server.gateway.metrics import Metrics
from server.gateway.routing import Routes
from server.oip.servicer import SERVICE as INFERENCE_SERVICE
from server.oip.servicer import SERVICE_DESCRIPTOR as INFERENCE_DESCRIPTOR
from server.oip.servicer import InferenceServicer
from server.rpc.security import (
    RefusalLog,
    TokenInterceptor,
    server_credentials,
    worker_credentials,
)
from server.rpc.server import serve, servicer_adder
from server.run.cli import build_parser, settings_from
from server.run.live import Live
from server.run.reload import Folders, RegistryFile
from server.run.sockets import WorkerSockets, leave_socket_directory
from server.run.supervisor import Supervisor, WorkerProcess, local_port
from server.telemetry import logs, tracing
from server.telemetry.relay import relay_local_workers
from server.worker.servicer import worker_servicer

log = logging.getLogger("server")

# What follows changes while serving: given the live functions and the stop event.
Follow = Callable[[Live, asyncio.Event], Coroutine[Any, Any, None]]

GATEWAY_SERVICE = dcf_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name
WORKER_SERVICE = dcf_pb2.DESCRIPTOR.services_by_name["Worker"].full_name
MESSAGE_SLACK = 1 << 16  # room for a message's framing beside its payload
# Gateways reconnect to a worker this often, and so find replicas added behind a DNS name.
WORKER_CONNECTION_AGE_SECONDS = 60.0


def _stop_event() -> asyncio.Event:
    """Set on SIGTERM or SIGINT: the start of a graceful shutdown."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _watch_parent(stop: asyncio.Event) -> bool:
    """Stop when the process that started us is gone (the supervisor was killed);
    True if that is why we stop."""
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("parent process %d is gone; stopping", parent)
            stop.set()
            return True
        await asyncio.sleep(1)
    return False


async def run_worker(
    settings: Settings,
    name: str,
    port: int | None,
    exit_with_parent: bool = False,
    unix_socket: str = "",
) -> int:
    try:
        servicer, config = worker_servicer(settings, name)
    except FunctionError as exc:
        log.error("worker %s cannot start: %s", name, exc)
        return 2
    if port is None:
        port = local_port(config.workers[0]) if config.workers else None
    if port is None:
        log.error("worker %s: give --port (the registry has no local address for it)", name)
        return 2
    metrics_port = settings.worker_metrics_port or config.metrics_port
    if metrics_port and not servicer.metrics.start(settings.host, metrics_port):
        servicer.close()
        return 2
    stop = _stop_event()
    watchdog = asyncio.create_task(_watch_parent(stop)) if exit_with_parent else None
    try:
        async with serve(
            [servicer_adder(servicer, dcf_pb2.DESCRIPTOR.services_by_name["Worker"])],
            [WORKER_SERVICE],
            settings.host,
            port,
            settings.chunk_bytes + MESSAGE_SLACK,
            settings.grace_seconds,
            credentials=server_credentials(settings),
            interceptors=(
                [TokenInterceptor([settings.worker_token], RefusalLog(f"worker {name}"))]
                if settings.worker_token
                else []
            ),
            in_flight=lambda: servicer.in_flight,
            max_connection_age_seconds=WORKER_CONNECTION_AGE_SECONDS,
            max_send_bytes=settings.max_invoke_bytes + MESSAGE_SLACK,  # Invoke's answers
            unix_socket=unix_socket,
        ):
            await stop.wait()
            log.info("worker %s stopping", name)
    finally:
        orphaned = watchdog is not None and watchdog.done() and watchdog.result()
        if watchdog is not None:
            watchdog.cancel()
        servicer.close()
        if orphaned and unix_socket:
            # The gateway that made the sockets' directory is gone and cannot remove it.
            leave_socket_directory(unix_socket)
    return 0


async def run_gateway(
    settings: Settings,
    stop: asyncio.Event | None = None,
    serving: asyncio.Future[int] | None = None,
    local: Supervisor | None = None,
    follow: Follow | None = None,
) -> int:
    """The gateway until ``stop``; ``serving`` gets its port once it listens.

    With ``local`` workers (the embedded default) the gateway's overall health and
    its "serving" line wait until each of them answers, and calls for a function
    whose worker is starting wait for it. ``follow`` runs while it serves, changing
    its functions (function folders, the registry file: server/run/reload.py).
    """
    stop = stop or _stop_event()
    routes = Routes(
        settings.functions, settings.max_invoke_bytes + MESSAGE_SLACK, worker_credentials(settings)
    )
    if settings.tokens and not (settings.worker_token or settings.worker_ca):
        log.warning(
            "callers need a token but the workers do not: set DCF_WORKER_TOKEN (or mutual "
            "TLS with DCF_WORKER_CA) on the gateway and its workers, or anyone who reaches "
            "a worker's port skips the gateway's checks"
        )
    metrics = Metrics()
    try:
        metrics_port = metrics.serve(settings.host, settings.metrics_port)
    except OSError as exc:
        log.error("cannot serve metrics on port %d: %s", settings.metrics_port, exc.strerror)
        return 2
    log.info("metrics on http://%s:%d/metrics", settings.host, metrics_port)
    relay_local_workers(metrics.registry, settings, local.names if local else ())
    gateway = Gateway(
        settings, routes, metrics, starting=local.starting if local else lambda name: False
    )
    servicer = GatewayServicer(gateway)
    inference = InferenceServicer(gateway)
    awaited = set(local.names if local else ())
    try:
        async with serve(
            [
                servicer_adder(servicer, dcf_pb2.DESCRIPTOR.services_by_name["Gateway"]),
                servicer_adder(inference, INFERENCE_DESCRIPTOR),
            ],
            [GATEWAY_SERVICE, INFERENCE_SERVICE],
            settings.host,
            settings.port,
            settings.max_invoke_bytes + MESSAGE_SLACK,
            settings.grace_seconds,
            credentials=server_credentials(settings),
            interceptors=(
                [
                    TokenInterceptor(
                        settings.tokens,
                        RefusalLog(
                            "gateway", lambda code: metrics.token_refusals.labels(code).inc()
                        ),
                    )
                ]
                if settings.tokens
                else []
            ),
            in_flight=lambda: gateway.in_flight,
            ready=not awaited,
        ) as served:
            live = Live(gateway, served, awaited)
            live.start()
            if awaited:
                log.info(
                    "dcf gateway listening on %s:%d; waiting for workers: %s",
                    settings.host,
                    served.port,
                    ", ".join(sorted(awaited)),
                )
            following = asyncio.create_task(follow(live, stop)) if follow else None
            if serving is not None and not serving.done():
                serving.set_result(served.port)
            await stop.wait()
            log.info(
                "gateway stopping: finishing calls in flight (up to %gs)", settings.grace_seconds
            )
            if following is not None:
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)
            await live.close()
    finally:
        await routes.close()
    return 0


async def run_embedded(settings: Settings, config_args: list[str], http: bool = True) -> int:
    sockets = WorkerSockets(enabled=not settings.worker_ca)
    try:
        return await _run_embedded(settings, config_args, http, sockets)
    finally:
        sockets.close()


async def _run_embedded(
    settings: Settings, config_args: list[str], http: bool, sockets: WorkerSockets
) -> int:
    workers, functions = [], []
    for fn in settings.functions:
        port = local_port(fn.workers[0]) if fn.workers else None
        if port is not None:
            argv = Supervisor.command(fn.name, port, config_args, sockets.path(port))
            workers.append(WorkerProcess(name=fn.name, port=port, argv=argv))
            fn = sockets.routed(fn, port)
        functions.append(fn)
    settings = replace(settings, functions=tuple(functions))
    folders = Folders(settings, config_args, sockets) if settings.functions_dirs else None
    if folders is not None:
        # The folders as they are now, started with the others before any gRPC object.
        configs, folder_workers = folders.initial()
        settings = replace(settings, functions=(*settings.functions, *configs))
        workers += folder_workers
    if settings.tokens and not settings.worker_token and not settings.worker_ca:
        # Callers need a token: so does every way to the workers. One made up now
        # serves as long as these processes live.
        settings = replace(settings, worker_token=secrets.token_urlsafe(32))
    supervisor = Supervisor(workers, environment=worker_environment(settings))
    follow: Follow | None = None
    if folders is not None:
        follow = lambda live, stop: folders.serve(live, stop, supervisor)  # noqa: E731
    stop = _stop_event()
    await supervisor.start()
    front = None
    try:
        if not http:
            return await run_gateway(settings, stop, local=supervisor, follow=follow)
        from server.http.serve import serve_beside_gateway

        gateway_port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        front = asyncio.create_task(serve_beside_gateway(settings, stop, gateway_port))
        code = await run_gateway(settings, stop, gateway_port, local=supervisor, follow=follow)
        stop.set()
        return code or await front
    finally:
        if front is not None and not front.done():
            stop.set()
            await asyncio.gather(front, return_exceptions=True)
        await supervisor.stop(settings.grace_seconds)


async def run_http(settings: Settings, gateway: str | None, gateway_ca: str | None) -> int:
    from server.http.serve import serve_role

    address = gateway or f"127.0.0.1:{settings.port}"
    return await serve_role(settings, address, gateway_ca or "", _stop_event())


def worker_environment(settings: Settings) -> dict[str, str]:
    """The environment of local worker processes: the gateway's, less what is not theirs.

    Callers' tokens stay with the gateway; the workers get the internal token. Local
    workers speak TLS only when the gateway is told how to trust them.
    """
    environment = dict(os.environ)
    for name in ("DCF_TOKENS", "DCF_TOKENS_FILE"):
        environment.pop(name, None)
    environment.pop("DCF_WORKER_METRICS_PORT", None)  # one port each: the registry's
    if settings.worker_token:
        environment["DCF_WORKER_TOKEN"] = settings.worker_token
    if not settings.worker_ca:
        for name in ("DCF_TLS_CERT", "DCF_TLS_KEY", "DCF_TLS_CLIENT_CA"):
            environment.pop(name, None)
    return environment


def registry_path(args: argparse.Namespace) -> Path:
    """The registry file the settings of ``args`` were read from."""
    return Path(args.config or os.environ.get("DCF_CONFIG") or DEFAULT_CONFIG)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.role in ("init", "ship"):
        from server.run.tools import run_tool  # the function authors' commands

        return run_tool(args)
    # Logging first: reading function folders may refuse one, and says so in the log.
    level = args.log_level or os.environ.get("DCF_LOG_LEVEL") or "INFO"
    logs.configure(level, os.environ.get("DCF_LOG_FORMAT", "text"), args.role or "embedded")
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format, args.role or "embedded")
    tracing.configure(tracing.service_name(args.role, getattr(args, "function", "")))
    if args.role == "worker":
        return asyncio.run(
            run_worker(settings, args.function, args.port, args.exit_with_parent, args.socket)
        )
    if args.role == "gateway":
        registry = RegistryFile(registry_path(args), lambda: settings_from(args))
        return asyncio.run(run_gateway(settings, follow=registry.serve))
    if args.role == "http":
        return asyncio.run(run_http(settings, args.gateway, args.gateway_ca))
    config_args = ["--config", os.path.abspath(args.config)] if args.config else []
    if args.log_level:
        config_args += ["--log-level", args.log_level]
    return asyncio.run(run_embedded(settings, config_args, http=not args.no_http))
