"""Channels from the gateway to each function's workers.

A function served by several workers, or by a DNS name with several records, gets
one channel balanced by gRPC's own round_robin policy: it connects to every address,
leaves out the ones that are down, and spreads calls over the rest.

While serving, the functions may change (a function folder edited, the registry file
rewritten): ``update`` swaps in a new ``Route`` for each function whose workers
changed, in one step. A call holds a lease on the route it started with, from its
first moment to its last; a replaced route takes no new call, and its channel is
closed once its last lease is given back (``Route.drained``), so no call is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping

import grpc

from server.config import FunctionConfig
from server.rpc.address import split
from server.rpc.server import encoded, message_options


def channel_target(addresses: Iterable[str]) -> str:
    """The gRPC target for a list of HOST:PORT addresses.

    One address is used as is (a DNS name resolves to all its records); several IP
    addresses become an ``ipv4:``/``ipv6:`` list; several names become one
    ``dns:///`` target per the first name, since gRPC takes a single name per channel.
    """
    addresses = [a.strip() for a in addresses if a.strip()]
    if not addresses:
        raise ValueError("no worker addresses")
    if len(addresses) == 1:
        address = addresses[0]
        return (
            address
            if "://" in address or address.startswith(("ipv4:", "ipv6:", "unix:"))
            else f"dns:///{address}"
        )
    hosts = [split(a)[0] for a in addresses]
    try:
        versions = {ipaddress.ip_address(h).version for h in hosts}
    except ValueError:
        raise ValueError(
            f"several workers must be given as IP addresses, or as one DNS name: {addresses}"
        ) from None
    if len(versions) != 1:
        raise ValueError(f"worker addresses mix IPv4 and IPv6: {addresses}")
    return f"ipv{versions.pop()}:{','.join(addresses)}"


WORKER_INVOKE = "/dcf.v1.Worker/Invoke"
WORKER_CALL = "/dcf.v1.Worker/Call"

# round_robin over every address, leaving out workers whose health check fails.
SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": "dcf.v1.Worker"},
    }
)


# The first and the longest pause between connection attempts to a worker that is down.
RECONNECT_BACKOFF_MS = (100, 1000)


class Route:
    """One channel to a function's workers, and the calls that hold it (its leases)."""

    def __init__(self, workers: tuple[str, ...], channel: grpc.aio.Channel, target: str) -> None:
        self.workers = workers
        self.channel = channel
        # Worker.Invoke and Worker.Call with their messages left encoded, bytes in and
        # out: the gateway passes payloads on undecoded (server/rpc/wire.py).
        self.invoke: grpc.aio.UnaryUnaryMultiCallable = channel.unary_unary(WORKER_INVOKE)
        self.call: grpc.aio.StreamStreamMultiCallable = channel.stream_stream(
            WORKER_CALL, request_serializer=encoded
        )
        self.target = target
        self.leases = 0
        self.retired = False
        # Whether its workers take a whole call as one Worker.Invoke (older ones do not).
        self.whole_calls = True
        self.drained = asyncio.Event()  # set once retired with no lease left

    def take(self) -> None:
        self.leases += 1

    def give(self) -> None:
        self.leases -= 1
        if self.retired and self.leases == 0:
            self.drained.set()

    def retire(self) -> None:
        """Take no new call; ``drained`` is set when the calls it has are done."""
        self.retired = True
        if self.leases == 0:
            self.drained.set()

    def ready(self) -> bool:
        return self.channel.get_state() == grpc.ChannelConnectivity.READY

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a ready worker; True if there is one."""

        async def connected() -> None:
            while (
                state := self.channel.get_state(try_to_connect=True)
            ) != grpc.ChannelConnectivity.READY:
                await self.channel.wait_for_state_change(state)

        try:
            await asyncio.wait_for(connected(), timeout)
        except TimeoutError:
            return False
        return True


class Routes:
    """One channel and Worker stub per function, shared by all calls, swapped whole."""

    def __init__(
        self,
        functions: Iterable[FunctionConfig],
        max_message_bytes: int,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._routes: dict[str, Route] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._credentials = credentials
        self._options = [
            *message_options(max_message_bytes),
            ("grpc.service_config", SERVICE_CONFIG),
            ("grpc.enable_retries", 0),
            # A worker that is down is tried again at least every second, so one that
            # comes up (a restart, a replica added) takes calls within a second;
            # gRPC's own backoff grows to two minutes.
            ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
            ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
            ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1]),
        ]
        for fn in functions:
            if fn.workers:
                self._routes[fn.name] = self.open(fn.workers)

    def open(self, workers: tuple[str, ...]) -> Route:
        """A new route to ``workers``, not yet taking calls (``update`` swaps it in)."""
        target = channel_target(workers)
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(target, options=self._options)
        else:
            channel = grpc.aio.secure_channel(target, self._credentials, options=self._options)
        return Route(tuple(workers), channel, target)

    def update(
        self, functions: Iterable[FunctionConfig], opened: Mapping[str, Route] | None = None
    ) -> dict[str, Route]:
        """Route ``functions`` from now on; the routes replaced, by name.

        A function whose workers are unchanged keeps its route; one with new workers
        gets the route ``opened`` for it, or a new one. A replaced route (its function
        changed or gone) takes no new call and is closed once its calls are done.
        """
        opened = dict(opened or {})
        routes: dict[str, Route] = {}
        for fn in functions:
            current = self._routes.get(fn.name)
            if not fn.workers:
                continue
            if fn.name in opened:
                routes[fn.name] = opened.pop(fn.name)
            elif current is not None and current.workers == tuple(fn.workers):
                routes[fn.name] = current
            else:
                routes[fn.name] = self.open(fn.workers)
        retired = {
            name: route for name, route in self._routes.items() if routes.get(name) is not route
        }
        self._routes = routes
        for route in [*retired.values(), *opened.values()]:  # opened and unused: closed too
            route.retire()
            task = asyncio.get_running_loop().create_task(_close_when_drained(route))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return retired

    def route(self, name: str) -> Route | None:
        return self._routes.get(name)

    @contextlib.contextmanager
    def lease(self, name: str) -> Iterator[Route | None]:
        """The function's route now, held for the block: it stays open until given back."""
        route = self._routes.get(name)
        if route is None:
            yield None
            return
        route.take()
        try:
            yield route
        finally:
            route.give()

    def target(self, name: str) -> str:
        route = self._routes.get(name)
        return route.target if route is not None else ""

    def channel(self, name: str) -> grpc.aio.Channel | None:
        route = self._routes.get(name)
        return route.channel if route is not None else None

    async def watch(self, name: str, report: Callable[[str, bool], Awaitable[None]]) -> None:
        """Report whether ``name`` has a ready worker each time its channel changes state.

        The channel is kept connecting, so a restarted worker is seen as soon as it is
        up; runs until cancelled.
        """
        channel = self.channel(name)
        if channel is None:
            await report(name, False)
            return
        ready = False
        while True:
            state = channel.get_state(try_to_connect=True)
            # A routine reconnect (the connection's age is up: the worker sends GOAWAY)
            # passes through IDLE and CONNECTING: a worker that was ready stays so unless
            # the attempt fails. One that died is refused at once (TRANSIENT_FAILURE).
            if state == grpc.ChannelConnectivity.READY:
                ready = True
            elif state in (
                grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                grpc.ChannelConnectivity.SHUTDOWN,
            ):
                ready = False
            await report(name, ready)
            await channel.wait_for_state_change(state)

    async def wait_ready(self, name: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``name`` to have a ready worker; True if it has."""
        route = self._routes.get(name)
        return route is not None and await route.wait_ready(timeout)

    def ready(self, name: str) -> bool:
        route = self._routes.get(name)
        return route is not None and route.ready()

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        for route in self._routes.values():
            await route.channel.close()


async def _close_when_drained(route: Route) -> None:
    """Close a replaced route's channel once no call holds it (at once when closing all)."""
    try:
        await route.drained.wait()
    finally:
        await route.channel.close()
