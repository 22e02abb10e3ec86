"""Functions added, changed and removed while serving, with no restart of the gateway.

``Folders`` (the embedded default): the function folders of ``functions_dirs``, each
version served by a worker process of its own, on a free local port.

- A new folder: its worker starts; once it answers its health check, the function
  is swapped into the gateway's settings (server/run/live.py) and takes calls.
- A changed folder: a new worker starts beside the one serving. Once it answers,
  new calls go to it; the calls under way finish on the old one (each holds its
  route), which is stopped when the last is done. No call fails for the change.
- A removed folder: the function is gone for new calls (NOT_FOUND); the calls under
  way finish, then its worker stops.
- A broken folder: refused with one log line naming the file and the reason (bad
  YAML, a missing requirement: read here; an import error: the worker's own line
  as it exits). A version that does not load leaves the one before serving.

MLServer loads a model's new version and only then swaps it in, and lets the old one
drain; this is the same, with processes. ``RegistryFile`` (the gateway role): the
registry file read again when it changes, as a Kubernetes ConfigMap update rewrites
it, and its functions swapped in the same way (their workers are elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

from server.config import ConfigError, FunctionConfig, Settings
from server.gateway.routing import Route
from server.repository.watch import Change, Repository
from server.rpc.address import join
from server.run.live import Live
from server.run.sockets import WorkerSockets
from server.run.supervisor import Supervisor, WorkerProcess

log = logging.getLogger("server")

# How often the functions directories are looked at; a change is acted upon once it
# has looked the same twice, so within two of these (plus the new worker's start).
WATCH_SECONDS = 0.25
# How often the gateway looks at its registry file (a ConfigMap update takes a minute).
REGISTRY_WATCH_SECONDS = 2.0
# How long a new version may take to answer when startup_wait is 0.
DEFAULT_PATIENCE_SECONDS = 60.0


def free_port(host: str) -> int:
    """A port nothing listens on now, for a new worker (kept across its restarts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def with_function(settings: Settings, fn: FunctionConfig) -> Settings:
    """``settings`` serving ``fn``: in the place of the function of that name, or added."""
    if settings.function(fn.name) is None:
        return replace(settings, functions=(*settings.functions, fn))
    return replace(
        settings, functions=tuple(fn if f.name == fn.name else f for f in settings.functions)
    )


def without_function(settings: Settings, name: str) -> Settings:
    return replace(settings, functions=tuple(f for f in settings.functions if f.name != name))


class Folders:
    """The function folders of the embedded default, from start-up to shutdown."""

    def __init__(
        self, settings: Settings, config_args: list[str], sockets: WorkerSockets | None = None
    ) -> None:
        self._repository = Repository(settings.functions_dirs, settings.functions)
        self._host = "127.0.0.1"
        self._sockets = sockets or WorkerSockets(enabled=False)
        self._args = [
            *config_args,
            *(a for d in settings.functions_dirs for a in ("--functions", d)),
        ]
        self._grace = settings.grace_seconds
        self._patience = settings.startup_wait or DEFAULT_PATIENCE_SECONDS
        self._workers: dict[str, WorkerProcess] = {}  # the worker of each version serving
        self._paths: dict[str, Path] = {}  # the folder each function is served from
        self._busy: dict[str, asyncio.Task[None]] = {}
        self._pending: dict[str, Change] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def initial(self) -> tuple[list[FunctionConfig], list[WorkerProcess]]:
        """The folders as they are now, each with its worker to start (before any gRPC
        object exists); the broken ones refused, each with its line."""
        configs, workers = [], []
        for change in self._repository.changes(settle=False):
            if change.folder is None:
                log.error("function folder refused: %s", change.error)
                continue
            fn, worker = self._worker_for(change.folder.config)
            configs.append(fn)
            workers.append(worker)
            self._workers[fn.name] = worker
            self._paths[fn.name] = change.path
        return configs, workers

    def _worker_for(self, config: FunctionConfig) -> tuple[FunctionConfig, WorkerProcess]:
        port = free_port(self._host)
        fn = replace(config, workers=(join(self._host, port),))
        argv = Supervisor.command(fn.name, port, self._args, self._sockets.path(port))
        return self._sockets.routed(fn, port), WorkerProcess(fn.name, port, argv, on_trial=True)

    async def serve(self, live: Live, stop: asyncio.Event, supervisor: Supervisor) -> None:
        """Confirm the start-up versions, then follow the folders until ``stop``."""
        self._live, self._supervisor = live, supervisor
        for name, worker in list(self._workers.items()):
            self._start(name, self._confirm(name, worker))
        try:
            while not stop.is_set():
                for change in self._repository.changes():
                    self._submit(change)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), WATCH_SECONDS)
        finally:
            tasks = [*self._busy.values(), *self._tasks]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _submit(self, change: Change) -> None:
        """Act on ``change`` now, or after the change of the same function under way."""
        if change.name in self._busy:
            self._pending[change.name] = change
        else:
            self._start(change.name, self._apply(change))

    def _start(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"function-{name}")
        self._busy[name] = task

        def done(_: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                log.error("function %s: the change failed", name, exc_info=task.exception())
            if self._busy.get(name) is task:
                del self._busy[name]
            if name in self._pending:
                self._submit(self._pending.pop(name))

        task.add_done_callback(done)

    async def _apply(self, change: Change) -> None:
        name = change.name
        if change.error is not None:
            serving = self._paths.get(name) == change.path
            log.error(
                "function folder refused: %s%s",
                change.error,
                " (the version before keeps serving)" if serving else "",
            )
        elif change.folder is None:
            if self._paths.get(name) == change.path:
                self._remove(name)
        else:
            await self._load(change.folder.config, change.path)

    async def _load(self, config: FunctionConfig, path: Path) -> None:
        """Start the new version; swap it in once it answers; retire the one before."""
        fn, worker = self._worker_for(config)
        await self._supervisor.add(worker)
        route = self._live.gateway.routes.open(fn.workers)
        if not await self._ready(fn.name, route, worker):
            await self._supervisor.retire(worker, 0)
            await route.channel.close()
            return
        replaced = self._live.replace(with_function(self._live.settings, fn), {fn.name: route})
        before = self._workers.get(fn.name)
        self._workers[fn.name], self._paths[fn.name] = worker, path
        log.info(
            "function %s %s: version %s serving (%s)",
            fn.name,
            "changed" if before else "added",
            fn.version,
            path,
        )
        self._retire_when_drained(replaced.get(fn.name), before)

    def _remove(self, name: str) -> None:
        replaced = self._live.replace(without_function(self._live.settings, name))
        self._paths.pop(name, None)
        log.info("function %s removed: its calls under way finish, then its worker stops", name)
        self._retire_when_drained(replaced.get(name), self._workers.pop(name, None))

    async def _confirm(self, name: str, worker: WorkerProcess) -> None:
        """A start-up version that exits before it answers is refused (it said why)."""
        route = self._live.gateway.routes.route(name)
        if route is None or await self._ready(name, route, worker):
            return
        replaced = self._live.replace(without_function(self._live.settings, name))
        self._live.forget(name)
        self._workers.pop(name, None)
        self._paths.pop(name, None)
        self._retire_when_drained(replaced.get(name), worker)

    async def _ready(self, name: str, route: Route, worker: WorkerProcess) -> bool:
        """Whether the worker answers its health check before it exits or runs out of time."""
        assert worker.process is not None
        exited = asyncio.ensure_future(worker.process.wait())
        answered = asyncio.ensure_future(route.wait_ready(self._patience))
        try:
            await asyncio.wait({exited, answered}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            answered.cancel()
        if answered.done() and not answered.cancelled() and answered.result():
            worker.on_trial = False  # from now on, restarted if it dies
            return True
        if not exited.done() or exited.cancelled():
            log.error(
                "function %s refused: its worker did not answer within %g s", name, self._patience
            )
        return False

    def _retire_when_drained(self, route: Route | None, worker: WorkerProcess | None) -> None:
        async def retire() -> None:
            if route is not None:
                await route.drained.wait()
            if worker is not None:
                await self._supervisor.retire(worker, self._grace)

        task = asyncio.create_task(retire())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class RegistryFile:
    """The gateway's registry file, read again whenever its text changes."""

    def __init__(self, path: Path, load: Callable[[], Settings]) -> None:
        self._path = path
        self._load = load
        self._text = self._read()

    def _read(self) -> str | None:
        try:
            return self._path.read_text()
        except OSError:
            return None  # being replaced (a ConfigMap swaps a symlink): look again later

    async def serve(self, live: Live, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REGISTRY_WATCH_SECONDS)
            text = self._read()
            if text is None or text == self._text:
                continue
            self._text = text
            try:
                fresh = self._load()
            except ConfigError as exc:
                log.error(
                    "registry %s refused: %s; the functions before keep serving", self._path, exc
                )
                continue
            except Exception:  # a bug here must not end the watch
                log.exception("registry %s: reading it again failed", self._path)
                continue
            current = live.settings
            if replace(fresh, functions=()) != replace(current, functions=()):
                log.warning("registry %s: server settings apply at the next start", self._path)
            live.replace(replace(current, functions=fresh.functions))
            names = ", ".join(fn.name for fn in fresh.functions)
            log.info("registry %s read again: %s", self._path, names)
