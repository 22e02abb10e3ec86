"""Channels from the gateway to each function's workers.

A function served by several workers, or by a DNS name with several records, gets
one channel balanced by gRPC's own round_robin policy: it connects to every address,
leaves out the ones that are down, and spreads calls over the rest.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable

import grpc

from protos.dcf.v1 import dcf_pb2_grpc
from server.config import FunctionConfig
from server.rpc.address import split
from server.rpc.server import message_options


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


# round_robin over every address, leaving out workers whose health check fails.
SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": "dcf.v1.Worker"},
    }
)


# The first and the longest pause between connection attempts to a worker that is down.
RECONNECT_BACKOFF_MS = (100, 1000)


class Routes:
    """One channel and Worker stub per function, made once and shared by all calls."""

    def __init__(
        self,
        functions: Iterable[FunctionConfig],
        max_message_bytes: int,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, dcf_pb2_grpc.WorkerStub] = {}
        self._targets: dict[str, str] = {}
        options = [
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
            if not fn.workers:
                continue
            target = channel_target(fn.workers)
            if credentials is None:
                channel = grpc.aio.insecure_channel(target, options=options)
            else:
                channel = grpc.aio.secure_channel(target, credentials, options=options)
            self._channels[fn.name] = channel
            self._stubs[fn.name] = dcf_pb2_grpc.WorkerStub(channel)
            self._targets[fn.name] = target

    def stub(self, name: str) -> dcf_pb2_grpc.WorkerStub | None:
        return self._stubs.get(name)

    def target(self, name: str) -> str:
        return self._targets.get(name, "")

    def channel(self, name: str) -> grpc.aio.Channel | None:
        return self._channels.get(name)

    async def watch(self, name: str, report: Callable[[str, bool], Awaitable[None]]) -> None:
        """Report whether ``name`` has a ready worker each time its channel changes state.

        The channel is kept connecting, so a restarted worker is seen as soon as it is
        up; runs until cancelled.
        """
        channel = self._channels.get(name)
        if channel is None:
            await report(name, False)
            return
        while True:
            state = channel.get_state(try_to_connect=True)
            await report(name, state == grpc.ChannelConnectivity.READY)
            await channel.wait_for_state_change(state)

    async def wait_ready(self, name: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``name`` to have a ready worker; True if it has."""
        channel = self._channels.get(name)
        if channel is None:
            return False

        async def connected() -> None:
            while (
                state := channel.get_state(try_to_connect=True)
            ) != grpc.ChannelConnectivity.READY:
                await channel.wait_for_state_change(state)

        try:
            await asyncio.wait_for(connected(), timeout)
        except TimeoutError:
            return False
        return True

    def ready(self, name: str) -> bool:
        channel = self._channels.get(name)
        return channel is not None and channel.get_state() == grpc.ChannelConnectivity.READY

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
