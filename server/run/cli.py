"""The command line of ``python -m server``: its roles, their flags, and the Settings they give.

Apart from the composition root (main.py) so that the probe can read a server's own
command line the way the server does, without importing the server.
"""

from __future__ import annotations

import argparse

from server.config import Settings, load_settings, parse_route


def build_parser() -> argparse.ArgumentParser:
    """The roles and their flags. Flags common to the roles may stand before or after
    the role; a role's copy only counts when given (SUPPRESS), so it never resets one
    given before the role."""

    def options(suppress: bool, gateway: bool) -> argparse.ArgumentParser:
        parent = argparse.ArgumentParser(add_help=False)
        default = argparse.SUPPRESS if suppress else None
        parent.add_argument(
            "--config",
            default=default,
            help="registry and settings YAML (default: $DCF_CONFIG or server/functions.yaml)",
        )
        parent.add_argument(
            "--host", default=default, help="address to listen on (default 127.0.0.1; $DCF_HOST)"
        )
        parent.add_argument(
            "--port", type=int, default=default, help="port to listen on ($DCF_PORT)"
        )
        parent.add_argument(
            "--log-level", default=default, help="DEBUG, INFO, WARNING... ($DCF_LOG_LEVEL)"
        )
        parent.add_argument(
            "--log-format",
            choices=("text", "json"),
            default=default,
            help="text, or json: one object a line ($DCF_LOG_FORMAT)",
        )
        parent.add_argument(
            "--functions",
            action="append",
            default=argparse.SUPPRESS if suppress else [],
            metavar="DIR",
            help="serve every function folder in DIR too (repeatable; $DCF_FUNCTIONS_DIRS)",
        )
        if gateway:
            parent.add_argument(
                "--route",
                action="append",
                default=argparse.SUPPRESS if suppress else [],
                metavar="NAME=HOST:PORT[,HOST:PORT...]",
                help="send function NAME to these workers instead of the registry's (repeatable)",
            )
            parent.add_argument(
                "--metrics-port",
                type=int,
                default=default,
                help="Prometheus metrics port (default 9100; $DCF_METRICS_PORT)",
            )
        return parent

    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="dcf: the gateway and its function workers",
        parents=[options(suppress=False, gateway=True)],
    )
    roles = parser.add_subparsers(dest="role")
    roles.add_parser("gateway", parents=[options(True, True)], help="run the gateway only")
    worker = roles.add_parser(
        "worker", parents=[options(True, False)], help="run one function's worker"
    )
    worker.add_argument("function", help="the function this worker serves")
    worker.add_argument(
        "--socket",
        default="",
        metavar="PATH",
        help="listen on this Unix domain socket too (the embedded default's gateway uses one)",
    )
    worker.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--http-port",
        type=int,
        help="port of the HTTP API and web page (default 8080; $DCF_HTTP_PORT)",
    )
    parser.add_argument("--no-http", action="store_true", help="serve no HTTP API and web page")
    http = roles.add_parser(
        "http",
        parents=[options(True, False)],
        help="run the HTTP API and web page only (--port is the HTTP port)",
    )
    http.add_argument(
        "--gateway",
        metavar="HOST:PORT",
        help="the gateway to call (default 127.0.0.1 and the gateway port)",
    )
    http.add_argument(
        "--gateway-ca",
        metavar="PEM",
        help="reach the gateway with TLS, trusting this CA certificate",
    )
    init = roles.add_parser(
        "init", help="make a function folder NAME to start from (DIR/NAME, default ./NAME)"
    )
    init.add_argument("name", metavar="NAME", help="the function's name (a-z, 0-9, -)")
    init.add_argument("--dir", default=".", help="where to make it (default: here)")
    ship = roles.add_parser(
        "ship",
        help="write what deploys a function folder: Dockerfile, compose, Kubernetes, registry",
    )
    ship.add_argument("folder", metavar="FOLDER", help="the function folder")
    ship.add_argument("--out", required=True, metavar="DIR", help="where to write them")
    ship.add_argument("--image", default="dcf:latest", help="dcf's image (default dcf:latest)")
    ship.add_argument(
        "--port", type=int, default=50061, help="the worker's port in its container (50061)"
    )
    ship.add_argument("--cpu", default="1", help="the worker's CPU limit (default 1)")
    ship.add_argument("--memory", default="512Mi", help="the worker's memory limit (512Mi)")
    ship.add_argument(
        "--registry",
        metavar="FILE",
        help="the deployments' registry to add the function to (default docker/functions.yaml)",
    )
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """The Settings of the role ``args`` name. Function folders: a worker reads its own
    alone; the embedded default reads them as it serves (server/run/reload.py)."""
    overrides = {
        "host": args.host,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "functions_dirs": getattr(args, "functions", None) or None,
    }
    if args.role != "worker":
        overrides["port"] = args.port
        overrides["metrics_port"] = args.metrics_port
    if args.role == "http":
        overrides.update(port=None, metrics_port=None, http_port=args.port)
    elif args.http_port is not None:
        overrides["http_port"] = args.http_port
    settings = load_settings(
        args.config,
        overrides=overrides,
        folders=args.role in ("gateway", "worker"),
        only=args.function if args.role == "worker" else "",
    )
    routes = dict(parse_route(text) for text in getattr(args, "route", []))
    return settings.with_routes(routes) if routes else settings
