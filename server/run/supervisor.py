"""The embedded default's worker processes: start each, restart it if it dies, stop them all.

Workers are separate processes started with ``python -m server worker NAME`` before
the gateway creates any gRPC object (forking after gRPC has started is a known
trap), exactly as a deployment starts them elsewhere. A worker that exits is
started again after a growing pause, so one crash does not take a function down
for good and a broken one (say, a missing model) does not spin.

Function folders come and go while serving: ``add`` starts one more worker (a new
function, or a new version beside the one serving), ``retire`` stops keeping one and
lets it finish its calls before it exits (server/run/reload.py decides when).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, field

from server.rpc.address import split

log = logging.getLogger(__name__)

# A worker whose restart comes within this many seconds counts as starting: calls wait
# for it. One that crashed again and again waits longer, and its calls fail at once.
RESTART_SOON_SECONDS = 5.0

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0"}


@dataclass
class WorkerProcess:
    name: str
    port: int
    argv: list[str]
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    restart_at: float | None = None  # loop time of the restart it waits for, if it exited
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    retired: bool = False  # no longer kept: it finishes its calls and exits
    # A new version not yet seen to answer: if it exits, it is not started again (its
    # load failed; server/run/reload.py refuses it and keeps the version before).
    on_trial: bool = False


def local_port(address: str) -> int | None:
    """The port of a worker address this machine should serve, or None if it is remote."""
    host, port = split(address)
    if host in LOCAL_HOSTS and port.isdigit():
        return int(port)
    return None


class Supervisor:
    """Keeps one process per local worker running until ``stop``."""

    def __init__(
        self,
        workers: list[WorkerProcess],
        environment: dict[str, str] | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        self._workers = workers
        self._environment = environment
        self._max_backoff = max_backoff
        self._stopping = False

    @staticmethod
    def command(name: str, port: int, config_args: list[str], socket: str = "") -> list[str]:
        """The worker's command line; ``socket``: a Unix socket it listens on as well."""
        return [
            sys.executable,
            "-m",
            "server",
            "worker",
            name,
            "--port",
            str(port),
            *(("--socket", socket) if socket else ()),
            "--exit-with-parent",
            *config_args,
        ]

    @property
    def names(self) -> set[str]:
        """The functions that have a worker here."""
        return {worker.name for worker in self._workers}

    def starting(self, name: str) -> bool:
        """True while a worker of ``name`` runs, or will be restarted shortly.

        Whether it is ready yet is the gateway's to see (its channel); this says
        whether waiting for it makes sense.
        """
        now = asyncio.get_running_loop().time()
        for worker in self._workers:
            if worker.name != name or self._stopping or worker.retired:
                continue
            if worker.process is not None and worker.process.returncode is None:
                return True
            if worker.process is not None and worker.restart_at is None and not worker.on_trial:
                # It has just exited, and its restart is not scheduled yet: a gateway that
                # saw its calls fail may ask in the same moment. It is being restarted.
                return True
            if worker.restart_at is not None and worker.restart_at - now <= RESTART_SOON_SECONDS:
                return True
        return False

    async def start(self) -> None:
        for worker in list(self._workers):
            await self._begin(worker)

    async def add(self, worker: WorkerProcess) -> None:
        """Start ``worker`` now and keep it running; its ``process`` is set on return."""
        self._workers.append(worker)
        await self._begin(worker)

    async def _begin(self, worker: WorkerProcess) -> None:
        await self._spawn(worker)
        worker.task = asyncio.create_task(self._keep(worker), name=f"supervise-{worker.name}")

    async def _spawn(self, worker: WorkerProcess) -> None:
        worker.process = await asyncio.create_subprocess_exec(*worker.argv, env=self._environment)
        worker.restart_at = None
        log.info(
            "worker %s started (pid %d, port %d)", worker.name, worker.process.pid, worker.port
        )

    async def _keep(self, worker: WorkerProcess) -> None:
        backoff = 0.5
        loop = asyncio.get_running_loop()
        while True:
            assert worker.process is not None
            started = loop.time()
            code = await worker.process.wait()
            if self._stopping or worker.retired or worker.on_trial:
                return
            if loop.time() - started > 60:
                backoff = 0.5
            log.warning(
                "worker %s exited with %s; restarting in %.1f s", worker.name, code, backoff
            )
            worker.restarts += 1
            worker.restart_at = loop.time() + backoff
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)
            if self._stopping or worker.retired:
                return
            await self._spawn(worker)

    async def retire(self, worker: WorkerProcess, grace_seconds: float) -> None:
        """Stop keeping ``worker``: SIGTERM, let it finish its calls, kill it if it lingers."""
        worker.retired = True
        if worker in self._workers:
            self._workers.remove(worker)
        process = worker.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)  # before any wait: told, whatever comes next
        else:
            process = None
        if worker.task is not None:
            worker.task.cancel()
            await asyncio.gather(worker.task, return_exceptions=True)
        if process is not None:
            await _reap(worker.name, process, grace_seconds)

    async def stop(self, grace_seconds: float) -> None:
        """SIGTERM every worker, wait for them to finish their calls, then kill stragglers."""
        self._stopping = True
        running = [
            (worker.name, worker.process)
            for worker in self._workers
            if worker.process is not None and worker.process.returncode is None
        ]
        for _, process in running:
            process.send_signal(signal.SIGTERM)
        for name, process in running:
            await _reap(name, process, grace_seconds)
        for worker in self._workers:
            if worker.task:
                worker.task.cancel()
                await asyncio.gather(worker.task, return_exceptions=True)


async def _reap(name: str, process: asyncio.subprocess.Process, grace_seconds: float) -> None:
    """Wait for a worker told to stop; kill it once it has had its grace and more."""
    try:
        await asyncio.wait_for(process.wait(), grace_seconds + 5)
    except TimeoutError:
        log.warning("worker %s did not stop in time; killing it", name)
        process.kill()
        await process.wait()
