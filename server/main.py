"""``python -m server``: the embedded default, or one role (gateway, worker) of a deployment.

    python -m server [--config F] [--host H] [--port N] [--route NAME=HOST:PORT,...]
        the gateway on 127.0.0.1:50051 and every locally addressed worker as its own process
    python -m server gateway [--config F] [--host H] [--port N] [--route ...]
    python -m server worker NAME [--config F] [--host H] [--port N]

Settings come from defaults < the YAML file (--config, else $DCF_CONFIG, else
server/functions.yaml) < DCF_* environment variables < these flags.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Sequence

from handlers.base import FunctionError
from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from server.config import ConfigError, Settings, load_settings, parse_route
from server.gateway import Gateway, GatewayServicer
from server.grpc_server import serve
from server.routing import Routes
from server.supervisor import Supervisor, WorkerProcess, local_port
from server.worker import worker_servicer

log = logging.getLogger("server")

GATEWAY_SERVICE = dcf_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name
WORKER_SERVICE = dcf_pb2.DESCRIPTOR.services_by_name["Worker"].full_name
MESSAGE_SLACK = 1 << 16  # room for a message's framing beside its payload


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="registry and settings YAML (default: $DCF_CONFIG or server/functions.yaml)")
    common.add_argument("--host", help="address to listen on (default 127.0.0.1; $DCF_HOST)")
    common.add_argument("--port", type=int, help="port to listen on ($DCF_PORT)")
    common.add_argument("--log-level", help="DEBUG, INFO, WARNING... ($DCF_LOG_LEVEL)")

    routing = argparse.ArgumentParser(add_help=False)
    routing.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT[,HOST:PORT...]",
        help="send function NAME to these workers instead of the registry's (repeatable)",
    )

    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="dcf: the gateway and its function workers",
        parents=[common, routing],
    )
    roles = parser.add_subparsers(dest="role")
    roles.add_parser("gateway", parents=[common, routing], help="run the gateway only")
    worker = roles.add_parser("worker", parents=[common], help="run one function's worker")
    worker.add_argument("function", help="the function this worker serves")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {"host": args.host, "log_level": args.log_level}
    if args.role != "worker":
        overrides["port"] = args.port
    settings = load_settings(args.config, overrides=overrides)
    routes = dict(parse_route(text) for text in getattr(args, "route", []))
    return settings.with_routes(routes) if routes else settings


def _stop_event() -> asyncio.Event:
    """Set on SIGTERM or SIGINT: the start of a graceful shutdown."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_worker(settings: Settings, name: str, port: int | None) -> int:
    try:
        servicer, config = worker_servicer(settings, name)
    except (FunctionError, LookupError) as exc:
        log.error("worker %s cannot start: %s", name, exc)
        return 2
    if port is None:
        port = local_port(config.workers[0]) if config.workers else None
    if port is None:
        log.error("worker %s: give --port (the registry has no local address for it)", name)
        return 2
    stop = _stop_event()
    try:
        async with serve(
            [lambda server: dcf_pb2_grpc.add_WorkerServicer_to_server(servicer, server)],
            [WORKER_SERVICE],
            settings.host,
            port,
            settings.chunk_bytes + MESSAGE_SLACK,
            settings.grace_seconds,
        ):
            await stop.wait()
            log.info("worker %s stopping", name)
    finally:
        servicer.close()
    return 0


async def run_gateway(settings: Settings, stop: asyncio.Event | None = None) -> int:
    stop = stop or _stop_event()
    routes = Routes(settings.functions, settings.max_invoke_bytes + MESSAGE_SLACK)
    gateway = Gateway(settings, routes)
    servicer = GatewayServicer(gateway)
    try:
        async with serve(
            [lambda server: dcf_pb2_grpc.add_GatewayServicer_to_server(servicer, server)],
            [GATEWAY_SERVICE],
            settings.host,
            settings.port,
            settings.max_invoke_bytes + MESSAGE_SLACK,
            settings.grace_seconds,
        ) as served:
            watchers = [
                asyncio.create_task(routes.watch(fn.name, served.set_serving))
                for fn in settings.functions
            ]
            names = ", ".join(fn.name for fn in settings.functions)
            log.info("dcf gateway serving on %s:%d: %s", settings.host, served.port, names)
            await stop.wait()
            log.info("gateway stopping: finishing calls in flight (up to %gs)", settings.grace_seconds)
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
    finally:
        await routes.close()
    return 0


async def run_embedded(settings: Settings, config_args: list[str]) -> int:
    workers = []
    for fn in settings.functions:
        port = local_port(fn.workers[0]) if fn.workers else None
        if port is not None:
            argv = Supervisor.command(fn.name, port, config_args)
            workers.append(WorkerProcess(name=fn.name, port=port, argv=argv))
    supervisor = Supervisor(workers)
    stop = _stop_event()
    await supervisor.start()
    try:
        return await run_gateway(settings, stop)
    finally:
        await supervisor.stop(settings.grace_seconds)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    if args.role == "worker":
        return asyncio.run(run_worker(settings, args.function, args.port))
    if args.role == "gateway":
        return asyncio.run(run_gateway(settings))
    config_args = ["--config", os.path.abspath(args.config)] if args.config else []
    if args.log_level:
        config_args += ["--log-level", args.log_level]
    return asyncio.run(run_embedded(settings, config_args))
