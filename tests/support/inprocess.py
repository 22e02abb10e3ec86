"""The gateway and its worker hosts inside the test's own event loop: no subprocess, no model.

``in_process()`` composes the servers as ``python -m server gateway`` and ``python
-m server worker`` do (server/run/main.py), out of the same parts: a real
GatewayServicer over a real Gateway and one real WorkerServicer per function, each
served by ``server.rpc.server.serve`` on a free port (port 0), the gateway's Routes
pointed at the workers' ports. The functions are the small handlers of
tests/support/inprocess_handlers.py, so nothing heavy is imported and a test starts in
milliseconds. What it leaves out are the processes: supervision, signals, metrics
over HTTP, TLS and tokens stay with the service tests.

It is an async context manager; a plain pytest test drives it with ``asyncio.run``::

    def test_echo():
        async def scenario():
            async with in_process() as dcf:
                ...
        asyncio.run(scenario())

On exit everything it started is stopped: blocked handlers released, servers
stopped, channels closed, worker threads joined; a task of its own left running is
an error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from server.config import FunctionConfig, Settings
from server.gateway.core import Gateway, GatewayServicer
from server.gateway.routing import Routes
from server.rpc.server import serve, servicer_adder
from server.run.main import GATEWAY_SERVICE, MESSAGE_SLACK, WORKER_SERVICE
from server.worker.servicer import DEFAULT_CONCURRENCY, WorkerServicer, load_function
from tests.support.inprocess_handlers import Probe

GATEWAY_DESCRIPTOR = dcf_pb2.DESCRIPTOR.services_by_name["Gateway"]
WORKER_DESCRIPTOR = dcf_pb2.DESCRIPTOR.services_by_name["Worker"]
HOST = "127.0.0.1"
HANDLERS = "tests.support.inprocess_handlers"
# Small chunks, so that cutting inputs and answers to size is exercised by small inputs.
CHUNK_BYTES = 64 * 1024
# How long a stopping server lets calls in flight finish: tests end their calls first.
GRACE_SECONDS = 1.0
# The longest a test waits for a state it expects (a handler blocked, a queue filled).
PATIENCE_SECONDS = 30.0


def registry_entry(
    name: str, behaviour: str, probe: Probe | None = None, **entry: Any
) -> FunctionConfig:
    """A registry entry for one of tests/support/inprocess_handlers.py's behaviours.

    ``entry`` gives the other fields (max_concurrency, max_queue, aliases...).
    """
    options = {"behaviour": behaviour, "probe": probe or Probe()}
    return FunctionConfig(name=name, handler=HANDLERS, options=options, **entry)


def default_functions() -> tuple[FunctionConfig, ...]:
    """One function per behaviour; ``blocking`` runs one call at a time with one waiting."""
    return (
        registry_entry(
            "echo",
            "echo",
            aliases=("echo-alias",),
            input_type="text/plain",
            output_type="text/plain",
            description="its input, as it arrives",
        ),
        registry_entry("raises", "raises", description="fails as its error param says"),
        registry_entry(
            "blocking",
            "blocking",
            max_concurrency=1,
            max_queue=1,
            description="holds its answer until the test releases it",
        ),
        registry_entry("parts", "parts", description="many partial results"),
    )


@dataclass
class WorkerHost:
    """One function's worker server."""

    config: FunctionConfig
    servicer: WorkerServicer
    port: int

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


@dataclass
class InProcess:
    """The running gateway and workers, and a channel to the gateway."""

    settings: Settings
    gateway: Gateway
    port: int
    channel: grpc.aio.Channel
    workers: dict[str, WorkerHost] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def stub(self) -> dcf_pb2_grpc.GatewayStub:
        return dcf_pb2_grpc.GatewayStub(self.channel)

    def probe(self, name: str) -> Probe:
        """What the handler threads of function ``name`` did."""
        function = self.settings.function(name)
        if function is None:
            raise KeyError(f"no function {name!r} in process")
        return function.options["probe"]

    def in_flight(self) -> int:
        """Calls in flight anywhere: at the gateway, or running, queued or uploading at a worker."""
        return self.gateway.in_flight + sum(w.servicer.in_flight for w in self.workers.values())


@contextlib.asynccontextmanager
async def worker_host(settings: Settings, config: FunctionConfig) -> AsyncIterator[WorkerHost]:
    """The worker of ``config`` on a free port, as ``python -m server worker`` serves it."""
    concurrency = config.max_concurrency or DEFAULT_CONCURRENCY
    servicer = WorkerServicer(
        config,
        load_function(config),
        settings.chunk_bytes,
        concurrency,
        settings.spool_dir,
        settings.max_invoke_bytes,
    )
    try:
        async with serve(
            [servicer_adder(servicer, WORKER_DESCRIPTOR)],
            [WORKER_SERVICE],
            HOST,
            0,
            settings.chunk_bytes + MESSAGE_SLACK,
            settings.grace_seconds,
            in_flight=lambda: servicer.in_flight,
            max_send_bytes=settings.max_invoke_bytes + MESSAGE_SLACK,
        ) as served:
            yield WorkerHost(config, servicer, served.port)
    finally:
        probe = config.options.get("probe")
        if probe is not None:
            probe.release()  # a handler thread still held would keep close() waiting
        # close() joins the handler threads: off the loop, which they may still need.
        await asyncio.to_thread(servicer.close)


@contextlib.asynccontextmanager
async def in_process(
    functions: Iterable[FunctionConfig] | None = None, **settings: Any
) -> AsyncIterator[InProcess]:
    """The gateway serving ``functions`` (default: ``default_functions()``), each with a
    worker of its own; ``settings`` are Settings fields to change (chunk_bytes...)."""
    base = Settings(
        host=HOST,
        port=0,
        chunk_bytes=CHUNK_BYTES,
        grace_seconds=GRACE_SECONDS,
        functions=tuple(functions if functions is not None else default_functions()),
    )
    base = replace(base, **settings)
    async with leaves_no_task(), contextlib.AsyncExitStack() as stack:
        workers = {
            fn.name: await stack.enter_async_context(worker_host(base, fn)) for fn in base.functions
        }
        routed = base.with_routes({name: (host.address,) for name, host in workers.items()})
        routes = Routes(routed.functions, routed.max_invoke_bytes + MESSAGE_SLACK)
        stack.push_async_callback(routes.close)
        gateway = Gateway(routed, routes)
        served = await stack.enter_async_context(
            serve(
                [servicer_adder(GatewayServicer(gateway), GATEWAY_DESCRIPTOR)],
                [GATEWAY_SERVICE],
                HOST,
                0,
                routed.max_invoke_bytes + MESSAGE_SLACK,
                routed.grace_seconds,
                in_flight=lambda: gateway.in_flight,
            )
        )
        channel = grpc.aio.insecure_channel(
            f"{HOST}:{served.port}",
            options=[("grpc.max_receive_message_length", routed.max_invoke_bytes + MESSAGE_SLACK)],
        )
        stack.push_async_callback(channel.close)
        yield InProcess(routed, gateway, served.port, channel, workers)


@contextlib.asynccontextmanager
async def leaves_no_task() -> AsyncIterator[None]:
    """Fail if a task started in the block is still running after it (given time to end)."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    await until(
        lambda: not [t for t in asyncio.all_tasks() - before if t is not current and not t.done()],
        "the tasks started in the block to end",
    )


async def until(
    condition: Callable[[], bool], what: str, timeout: float = PATIENCE_SECONDS
) -> None:
    """Wait for ``condition`` to hold, checking as the loop turns; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.005)
