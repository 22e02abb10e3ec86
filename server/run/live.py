"""The functions a serving gateway answers for, and their health, changed in one place.

``Live.replace`` hands the gateway new settings (``Gateway.update``: one swap of the
settings, admissions and routes) and keeps the health service in step: a watcher
per function follows its current route's channel and reports the function SERVING
while a worker of it is up; a function that is gone is NOT_SERVING. The gateway's
overall health (the "" service) and its "serving" log line come once each of the
functions it waits for at start-up has answered, or has been given up
(``forget``: a function folder refused at start-up).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any

from server.config import Settings
from server.gateway.core import Gateway
from server.gateway.routing import Route
from server.rpc.server import Served

log = logging.getLogger("server")


class Live:
    def __init__(self, gateway: Gateway, served: Served, awaited: Iterable[str] = ()) -> None:
        self.gateway = gateway
        self._served = served
        self._awaited = set(awaited)
        self._watchers: dict[str, tuple[Route | None, asyncio.Task[None]]] = {}
        self._announced = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def settings(self) -> Settings:
        return self.gateway.settings

    def start(self) -> None:
        """Watch every function's health; announce at once if nothing is awaited."""
        self._follow()
        if not self._awaited:
            self._soon(self._announce())

    def replace(
        self, settings: Settings, opened: Mapping[str, Route] | None = None
    ) -> dict[str, Route]:
        """Serve ``settings`` from now on; the routes replaced, by name (see Gateway.update)."""
        retired = self.gateway.update(settings, opened)
        self._follow()
        return retired

    def forget(self, name: str) -> None:
        """Stop waiting for ``name`` at start-up (it was refused)."""
        if name in self._awaited:
            self._awaited.discard(name)
            if not self._awaited:
                self._soon(self._announce())

    def _follow(self) -> None:
        """A watcher for each function's current route; the gone ones NOT_SERVING."""
        routes = self.gateway.routes
        names = [fn.name for fn in self.settings.functions]
        for name in names:
            watched = self._watchers.get(name)
            route = routes.route(name)
            if watched is not None and watched[0] is route:
                continue
            if watched is not None:
                watched[1].cancel()
            task = asyncio.create_task(routes.watch(name, self._report), name=f"health-{name}")
            self._watchers[name] = (route, task)
        for name in set(self._watchers) - set(names):
            self._watchers.pop(name)[1].cancel()
            self._soon(self._served.set_serving(name, False))
            self.forget(name)

    async def _report(self, name: str, ready: bool) -> None:
        await self._served.set_serving(name, ready)
        if ready and name in self._awaited:
            self._awaited.discard(name)
            if not self._awaited:
                await self._announce()

    async def _announce(self) -> None:
        """The overall health SERVING, and the log line saying so; once."""
        if self._announced:
            return
        self._announced = True
        await self._served.set_serving("", True)
        settings = self.settings
        names = ", ".join(fn.name for fn in settings.functions)
        log.info("dcf gateway serving on %s:%d: %s", settings.host, self._served.port, names)

    def _soon(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        tasks = [task for _, task in self._watchers.values()] + list(self._tasks)
        for _, task in self._watchers.values():
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watchers.clear()
