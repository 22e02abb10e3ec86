"""All of the service's settings, built once from defaults < YAML < environment < flags.

One frozen ``Settings`` object is made in ``main`` and handed down; nothing reads the
environment or a file anywhere else. The registry of functions (name, handler module,
description, limits, worker addresses) is part of the same YAML file, so a
deployment edits one file, or overrides single values with DCF_* variables and flags.

Functions also come from function folders (server/repository/): every folder under
``functions_dirs`` that holds a ``function.yaml`` is a function beside the registry's.
A serving process that sees the folders change makes a new Settings object and swaps
it in whole; none is ever changed in place.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from handlers.base import PARAM_TYPES, Param, Params
from handlers.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).with_name("functions.yaml")

MiB = 1 << 20
# The queue's size when the registry gives none: a few rounds of the function's slots.
DEFAULT_QUEUE_PER_SLOT = 4

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


def _count(value: Any, name: str) -> int:
    """A whole number of things, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{name}: expected a whole number, got {value!r}")
    try:
        count = int(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None
    if count < 0:
        raise ConfigError(f"{name}: must not be negative, got {value!r}")
    return count


def _seconds(value: Any, name: str) -> float:
    """A finite, positive number of seconds."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected seconds, got {value!r}") from None
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{name}: expected seconds above 0, got {value!r}")
    return seconds


def _port(value: Any, name: str) -> int:
    """A TCP port, 0..65535."""
    port = _count(value, name)
    if port > 65535:
        raise ConfigError(f"{name}: expected 0..65535, got {value!r}")
    return port


def parse_size(value: int | str, name: str) -> int:
    """Bytes from an int or a string such as '64MiB', '1G' or '512k' (binary units)."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a size, got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ConfigError(f"{name}: expected a size such as 64MiB, got {value!r}")
        size = int(match.group(1)) * _UNITS[(match.group(2) or "")[:1].upper()]
    if size < 0:
        raise ConfigError(f"{name}: must not be negative, got {value!r}")
    return size


_PARAM_KEYS = {"name", "type", "help", "default", "range", "choices"}


def _param_default(value: Any, kind: str, where: str) -> Any:
    """A param's default as its type has it; ConfigError when it is not one."""
    if value is None:
        return None
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "string" and isinstance(value, str):
        return value
    raise ConfigError(f"{where}.default: expected a {kind}, got {value!r}")


def parse_params(entries: Any, where: str) -> dict[str, Param]:
    """Typed params from their YAML form: a list of {name, type, help, default, range,
    choices}, as a function folder's function.yaml (and the registry entry written
    from it) declares them. Each becomes a handlers.base.Param."""
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: expected a list of params (name, type, help, default...)")
    params: dict[str, Param] = {}
    for index, entry in enumerate(entries):
        at = f"{where}[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{at}: expected a mapping with name and type")
        unknown = set(entry) - _PARAM_KEYS
        if unknown:
            raise ConfigError(f"{at}: unknown keys {sorted(unknown)}")
        name, kind = entry.get("name"), entry.get("type")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
            raise ConfigError(f"{at}.name: expected a name such as size, got {name!r}")
        at = f"{where}.{name}"
        if name in params:
            raise ConfigError(f"{at}: declared twice")
        if kind not in PARAM_TYPES:
            raise ConfigError(f"{at}.type: expected one of {', '.join(PARAM_TYPES)}, got {kind!r}")
        low, high = _param_range(entry.get("range"), kind, at)
        choices = entry.get("choices") or []
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise ConfigError(f"{at}.choices: expected a list of strings")
        if choices and kind != "string":
            raise ConfigError(f"{at}.choices: only a string param has choices")
        default = _param_default(entry.get("default"), kind, at)
        param = Param(
            name,
            kind,
            str(entry.get("help", "")),
            default=default,
            low=low,
            high=high,
            choices=tuple(choices),
        )
        if default is not None:
            try:
                param.read(Params({name: param.wire_default}))
            except InvalidInput as exc:
                raise ConfigError(f"{at}.default: {exc.message}") from None
        params[name] = param
    return params


def _param_range(value: Any, kind: str, where: str) -> tuple[float | None, float | None]:
    """``range: [low, high]`` (either may be null) of a number or integer param."""
    if value is None:
        return None, None
    if kind not in ("number", "integer"):
        raise ConfigError(f"{where}.range: only a number or integer param has a range")
    if not isinstance(value, list) or len(value) != 2:
        raise ConfigError(f"{where}.range: expected [low, high], got {value!r}")
    bounds: list[float | None] = []
    for bound in value:
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))):
            raise ConfigError(f"{where}.range: expected numbers or null, got {value!r}")
        bounds.append(None if bound is None else float(bound))
    low, high = bounds
    if low is not None and high is not None and low > high:
        raise ConfigError(f"{where}.range: {low:g} is above {high:g}")
    return low, high


def params_yaml(params: Mapping[str, Param]) -> list[dict[str, Any]]:
    """``params`` in the YAML form ``parse_params`` reads back."""
    out = []
    for param in params.values():
        entry: dict[str, Any] = {"name": param.name, "type": param.type}
        if param.help:
            entry["help"] = param.help
        if param.default is not None:
            entry["default"] = param.default
        if param.low is not None or param.high is not None:
            entry["range"] = [param.low, param.high]
        if param.choices:
            entry["choices"] = list(param.choices)
        out.append(entry)
    return out


@dataclass(frozen=True)
class FunctionConfig:
    """One entry of the function registry, or one function folder.

    A registry entry names a handler module. A function folder's (server/repository/)
    names its handler file (``handler`` ends in ``.py``) or a module, its factory, and
    the params its function.yaml declares; ``source`` is the folder and ``version`` a
    digest of its files, which tells one version of it from the next.
    """

    name: str
    handler: str
    description: str = ""
    input_type: str = "application/octet-stream"
    output_type: str = "application/octet-stream"
    aliases: tuple[str, ...] = ()
    max_input_bytes: int = 0  # 0: no limit
    max_concurrency: int = 0  # 0: no limit
    # Uploads received whole before the call takes one of its max_concurrency slots, so
    # that slow uploads never hold a slot; 0: the handler reads its input as it comes.
    max_uploads: int = 0
    # Calls that may wait for a free slot once max_concurrency run; None: a few rounds' worth.
    max_queue: int | None = None
    # The longest a call may take, queue included: the deadline of calls that give none,
    # and the ceiling of those that give a longer one. None: the server's max_call_seconds.
    max_call_seconds: float | None = None
    workers: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""  # the function folder, for a folder function; "" for a module's
    factory: str = "create"  # what the handler file or module calls to make the Function
    params: Mapping[str, Param] | None = None  # a folder's params; None: the module's PARAMS
    version: str = ""  # a digest of the folder's files
    # Where its workers serve Prometheus metrics (server/worker/metrics.py); 0: nowhere.
    metrics_port: int = 0

    def declared_params(self) -> Mapping[str, Param]:
        """The params the function takes: a folder's, as its function.yaml declares them;
        else the handler module's ``PARAMS``, read by importing the module, which creates
        nothing: function modules defer their heavy imports."""
        if self.params is not None:
            return self.params
        return getattr(importlib.import_module(self.handler), "PARAMS", {})

    @property
    def handler_file(self) -> str:
        """The handler's file, for a folder function whose handler is one; else ""."""
        return self.handler if self.source and self.handler.endswith(".py") else ""

    @property
    def queue_size(self) -> int:
        """How many calls may wait once ``max_concurrency`` run (none without a limit)."""
        if not self.max_concurrency:
            return 0
        if self.max_queue is not None:
            return self.max_queue
        return DEFAULT_QUEUE_PER_SLOT * self.max_concurrency

    @classmethod
    def from_yaml(cls, name: str, entry: Mapping[str, Any]) -> FunctionConfig:
        """A registry entry. One with ``folder`` is a function folder's, as
        ``python -m server ship`` writes it: its params come with it (from the folder's
        function.yaml), and its handler file is read from the folder by its workers."""
        if not isinstance(entry, Mapping):
            raise ConfigError(f"functions.{name}: expected a mapping")
        folder = entry.get("folder")
        if "params" in entry and folder is None:
            raise ConfigError(
                f"functions.{name}.params: params are declared once, by the handler "
                f"(PARAMS in {entry.get('handler', 'its module')}), not in the registry"
            )
        known = {f.name for f in fields(cls)} - {"name", "source", "version"} | {"folder"}
        if folder is None:
            known -= {"factory", "params"}
        unknown = set(entry) - known
        if unknown:
            raise ConfigError(f"functions.{name}: unknown keys {sorted(unknown)}")
        if "handler" not in entry:
            raise ConfigError(f"functions.{name}: 'handler' is required")
        handler = str(entry["handler"])
        if folder is not None:
            if not isinstance(folder, str) or not Path(folder).is_absolute():
                raise ConfigError(f"functions.{name}.folder: expected an absolute path")
            if handler.endswith(".py"):
                handler = str(Path(folder, handler))
        workers = entry.get("workers", ())
        if isinstance(workers, str):
            workers = [w for w in workers.split(",") if w]
        return cls(
            name=name,
            handler=handler,
            description=str(entry.get("description", "")),
            input_type=str(entry.get("input_type", cls.input_type)),
            output_type=str(entry.get("output_type", cls.output_type)),
            aliases=tuple(str(a) for a in entry.get("aliases", ())),
            max_input_bytes=parse_size(entry.get("max_input_bytes", 0), f"{name}.max_input_bytes"),
            max_concurrency=_count(entry.get("max_concurrency", 0), f"{name}.max_concurrency"),
            max_uploads=_count(entry.get("max_uploads", 0), f"{name}.max_uploads"),
            max_queue=(
                None
                if entry.get("max_queue") is None
                else _count(entry["max_queue"], f"{name}.max_queue")
            ),
            max_call_seconds=(
                None
                if entry.get("max_call_seconds") is None
                else _seconds(entry["max_call_seconds"], f"{name}.max_call_seconds")
            ),
            workers=tuple(str(w) for w in workers),
            options=dict(entry.get("options") or {}),
            source="" if folder is None else str(folder),
            factory=str(entry.get("factory", cls.factory)),
            params=(
                None if folder is None else parse_params(entry.get("params"), f"{name}.params")
            ),
            metrics_port=_port(entry.get("metrics_port", 0), f"{name}.metrics_port"),
        )


@dataclass(frozen=True)
class Settings:
    """Everything a role needs to run. Sizes in bytes, times in seconds."""

    host: str = "127.0.0.1"
    port: int = 50051
    chunk_bytes: int = MiB
    max_invoke_bytes: int = 64 * MiB
    # What unary calls (Invoke, ModelInfer) may hold at once, inputs and answers together.
    max_unary_bytes: int = 128 * MiB
    grace_seconds: float = 10.0
    # How long a call may wait for a local worker that is starting (embedded default).
    startup_wait: float = 60.0
    # The longest a call may take, for functions whose entry names no max_call_seconds.
    max_call_seconds: float = 600.0
    # An upload that sends nothing for this long, or less than min_input_bytes_per_second
    # over a window once past a short grace, ends with DEADLINE_EXCEEDED (0: no rate).
    input_idle_seconds: float = 30.0
    min_input_bytes_per_second: int = 1024
    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one object a line (server/telemetry/logs.py)
    metrics_port: int = 9100
    # A worker's metrics port, over its registry entry's metrics_port (0: that one);
    # for a worker's own container. The embedded default does not pass it on.
    worker_metrics_port: int = 0
    http_port: int = 8080  # the HTTP API and web page (server/http/)
    # The HTTP front's guards (server/http/options.py, FrontOptions): the names it answers for
    # (empty: localhost names and its own address; "*": any), other origins whose pages
    # may call it, its timeouts and its cap on open connections.
    http_allowed_hosts: tuple[str, ...] = ()
    http_allowed_origins: tuple[str, ...] = ()
    http_header_timeout: float = 10.0
    http_body_timeout: float = 30.0
    http_keepalive_timeout: float = 5.0
    http_max_connections: int = 1000
    # Bearer tokens the gateway accepts; none: no token needed.
    tokens: tuple[str, ...] = ()
    # Where workers keep uploads received whole (max_uploads) past a small size in memory.
    spool_dir: str = ""
    # The credential between the gateway and its workers: the gateway sends it, workers
    # require it. Callers' tokens never reach the workers.
    worker_token: str = ""
    # TLS for this role's server (PEM paths); with tls_client_ca, clients need a cert too.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # TLS from the gateway to its workers: the CA they are trusted by.
    worker_ca: str = ""
    # Folders whose every sub-folder with a function.yaml is a function (server/repository/).
    functions_dirs: tuple[str, ...] = ()
    functions: tuple[FunctionConfig, ...] = ()

    def call_seconds(self, fn: FunctionConfig) -> float:
        """The longest a call of ``fn`` may take."""
        return fn.max_call_seconds or self.max_call_seconds

    def function(self, name: str) -> FunctionConfig | None:
        """The registry entry called ``name`` or having it as an alias."""
        for fn in self.functions:
            if fn.name == name or name in fn.aliases:
                return fn
        return None

    def resolve(self, name: str) -> FunctionConfig:
        """The registry entry for ``name``; NotFound naming the known functions if none."""
        fn = self.function(name)
        if fn is None:
            known = ", ".join(f.name for f in self.functions)
            shown = repr(name[:100]) + ("..." if len(name) > 100 else "")
            raise NotFound(f"no function named {shown} (known: {known})")
        return fn

    def with_routes(self, routes: Mapping[str, tuple[str, ...]]) -> Settings:
        """Point functions at other workers, as --route NAME=HOST:PORT[,HOST:PORT] does."""
        functions = list(self.functions)
        for name, addresses in routes.items():
            for i, fn in enumerate(functions):
                if fn.name == name or name in fn.aliases:
                    functions[i] = replace(fn, workers=tuple(addresses))
                    break
            else:
                raise ConfigError(f"--route {name}: no such function")
        return replace(self, functions=tuple(functions))


# Environment variables and the Settings fields they set.
ENVIRONMENT = {
    "DCF_HOST": "host",
    "DCF_PORT": "port",
    "DCF_CHUNK_BYTES": "chunk_bytes",
    "DCF_MAX_INVOKE_BYTES": "max_invoke_bytes",
    "DCF_MAX_UNARY_BYTES": "max_unary_bytes",
    "DCF_GRACE_SECONDS": "grace_seconds",
    "DCF_STARTUP_WAIT": "startup_wait",
    "DCF_MAX_CALL_SECONDS": "max_call_seconds",
    "DCF_INPUT_IDLE_SECONDS": "input_idle_seconds",
    "DCF_MIN_INPUT_BYTES_PER_SECOND": "min_input_bytes_per_second",
    "DCF_LOG_LEVEL": "log_level",
    "DCF_LOG_FORMAT": "log_format",
    "DCF_METRICS_PORT": "metrics_port",
    "DCF_WORKER_METRICS_PORT": "worker_metrics_port",
    "DCF_HTTP_PORT": "http_port",
    "DCF_HTTP_ALLOWED_HOSTS": "http_allowed_hosts",
    "DCF_HTTP_ALLOWED_ORIGINS": "http_allowed_origins",
    "DCF_HTTP_HEADER_TIMEOUT": "http_header_timeout",
    "DCF_HTTP_BODY_TIMEOUT": "http_body_timeout",
    "DCF_HTTP_KEEPALIVE_TIMEOUT": "http_keepalive_timeout",
    "DCF_HTTP_MAX_CONNECTIONS": "http_max_connections",
    "DCF_TOKENS": "tokens",
    "DCF_WORKER_TOKEN": "worker_token",
    "DCF_SPOOL_DIR": "spool_dir",
    "DCF_TLS_CERT": "tls_cert",
    "DCF_TLS_KEY": "tls_key",
    "DCF_TLS_CLIENT_CA": "tls_client_ca",
    "DCF_WORKER_CA": "worker_ca",
    "DCF_FUNCTIONS_DIRS": "functions_dirs",
}
# Settings that only the environment or flags give: secrets stay out of the file.
SECRET_SETTINGS = {"tokens", "worker_token"}


def _coerce(name: str, value: Any) -> Any:
    if name in ("chunk_bytes", "max_invoke_bytes", "max_unary_bytes"):
        return parse_size(value, name)
    if name == "log_format":
        if str(value).strip().lower() not in ("text", "json"):
            raise ConfigError(f"{name}: expected text or json, got {value!r}")
        return str(value).strip().lower()
    if name in ("port", "metrics_port", "http_port", "worker_metrics_port"):
        port = int(value)
        if not 0 <= port < 65536:
            raise ConfigError(f"{name}: expected 0..65535, got {value!r}")
        return port
    if name in ("tokens", "http_allowed_hosts", "http_allowed_origins"):
        items = value.split(",") if isinstance(value, str) else value
        return tuple(str(t).strip() for t in items if str(t).strip())
    if name == "functions_dirs":
        # Folders, as PATH lists them (``a:b``), or a YAML list.
        items = value.split(os.pathsep) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{name}: expected a list of folders, got {value!r}")
        return tuple(os.path.abspath(str(d).strip()) for d in items if str(d).strip())
    if name == "http_max_connections":
        count = _count(value, name)
        if count < 1:
            raise ConfigError(f"{name}: expected 1 or more, got {value!r}")
        return count
    if name in ("grace_seconds", "startup_wait"):
        seconds = float(value)
        if not 0 <= seconds < float("inf"):
            raise ConfigError(f"{name}: expected seconds, 0 or more, got {value!r}")
        return seconds
    if name in (
        "max_call_seconds",
        "input_idle_seconds",
        "http_header_timeout",
        "http_body_timeout",
        "http_keepalive_timeout",
    ):
        return _seconds(value, name)
    if name == "min_input_bytes_per_second":
        return _count(value, name)
    return str(value)


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    folders: bool = True,
    only: str = "",
) -> Settings:
    """Defaults, then the YAML file, then DCF_* variables, then ``overrides`` (flags).

    The file is ``config_path`` if given, else $DCF_CONFIG, else the packaged
    server/functions.yaml. With ``folders``, the function folders under
    ``functions_dirs`` join the registry's functions (``only``: just the folder of that
    name, as its worker reads it); a broken folder is left out with one log line
    naming its file and what is wrong, and the others are served.
    """
    environ = os.environ if environ is None else environ
    path = Path(config_path or environ.get("DCF_CONFIG") or DEFAULT_CONFIG)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if not isinstance(document, Mapping):
        raise ConfigError(f"config {path}: expected a mapping at the top")

    for section in ("server", "functions"):
        if not isinstance(document.get(section) or {}, Mapping):
            raise ConfigError(f"config {path}: {section}: expected a mapping")
    values: dict[str, Any] = {}
    for key, value in (document.get("server") or {}).items():
        if key not in ENVIRONMENT.values() or key in SECRET_SETTINGS:
            raise ConfigError(f"config {path}: unknown server setting {key!r}")
        if key == "functions_dirs" and isinstance(value, list):
            value = [path.parent / str(folder) for folder in value]  # relative to the file
        values[key] = value
    for variable, key in ENVIRONMENT.items():
        if environ.get(variable):
            values[key] = environ[variable]
    if environ.get("DCF_TOKENS_FILE") and "tokens" not in values:
        try:
            values["tokens"] = Path(environ["DCF_TOKENS_FILE"]).read_text().split()
        except OSError as exc:
            raise ConfigError(f"DCF_TOKENS_FILE: {exc.strerror}") from None
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    try:
        values = {key: _coerce(key, value) for key, value in values.items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None

    functions = tuple(
        FunctionConfig.from_yaml(str(name), entry)
        for name, entry in (document.get("functions") or {}).items()
    )
    names = [n for fn in functions for n in (fn.name, *fn.aliases)]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ConfigError(f"config {path}: names used twice: {sorted(duplicates)}")
    settings = Settings(functions=functions, **values)
    if folders and settings.functions_dirs:
        # Imported here: the folder reader builds on this module.
        from server.repository.folder import read_folders

        found, refused = read_folders(settings.functions_dirs, functions, only=only)
        for error in refused:
            log.error("function folder refused: %s", error)
        settings = replace(settings, functions=(*functions, *(f.config for f in found)))
    return settings


def parse_route(text: str) -> tuple[str, tuple[str, ...]]:
    """'ssd=10.0.0.5:50061,10.0.0.6:50061' -> ('ssd', ('10.0.0.5:50061', '10.0.0.6:50061'))."""
    name, sep, addresses = text.partition("=")
    targets = tuple(a.strip() for a in addresses.split(",") if a.strip())
    if not sep or not name or not targets:
        raise ConfigError(f"--route {text!r}: expected NAME=HOST:PORT[,HOST:PORT...]")
    return name.strip(), targets
