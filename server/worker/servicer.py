"""The worker host: serves one function's handler over dcf.v1.Worker.

The servicer is an adapter. For Call it reads the header, checks params, and starts
a ``HandlerRun`` on the worker's thread pool; then it feeds the run the input chunks
as they arrive and streams back what the handler yields. For Invoke (the whole
input in one message, as the gateway sends a call that fits in a chunk) it checks
the same things and runs the handler to its end in one hand-off to a thread.
Handlers never run on the event loop, so health checks answer while a model computes.

A worker runs at most ``concurrency`` calls at once (one thread each); more wait
their turn in a bounded queue (server/admission.py), and only a full queue refuses
with RESOURCE_EXHAUSTED. The gateway queues too; the worker's own queue serves
callers that reach it directly and absorbs the moment between a call's end at the
gateway and its end here.

A function with ``max_uploads`` receives each call's input whole first, under that
bound (server/worker/received.py), and only then takes a slot: slots go to calls whose
input is there, never to an upload still under way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass

import grpc

from handlers.base import Function, Params
from handlers.errors import InvalidInput
from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from server.admission import Admission
from server.config import FunctionConfig, Settings
from server.memory import give_back_after
from server.rpc import framing as stream
from server.rpc import status as errors
from server.rpc.callinfo import loggable, request_id_of
from server.telemetry import logs, tracing
from server.worker.bridge import HandlerRun, Header, answer_whole
from server.worker.metrics import CallWatch, WorkerMetrics
from server.worker.received import Received

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 16


def load_function(config: FunctionConfig) -> Function:
    """Import the handler module and let it load what it needs, once.

    A function folder's handler is imported by its file path, with the params its
    function.yaml declares (server/repository/load.py); a failure there is one line
    naming the file, which the worker logs as it exits.
    """
    if config.source:
        from server.repository.load import load_folder_function  # folders only

        return load_folder_function(config)
    module = importlib.import_module(config.handler)
    return module.create(config.options)


class WorkerServicer(dcf_pb2_grpc.WorkerServicer):
    RAW_REQUESTS = frozenset({"Invoke"})  # its payload is taken out undecoded

    def __init__(
        self,
        config: FunctionConfig,
        function: Function,
        chunk_bytes: int,
        concurrency: int,
        spool_dir: str = "",
        max_answer_bytes: int = 64 << 20,
    ) -> None:
        """``max_answer_bytes``: the most an Invoke's answer may hold (the gateway's
        ``max_invoke_bytes``); Call streams any size."""
        self._config = config
        self._max_answer_bytes = max_answer_bytes
        self._function = function
        self._chunk_bytes = chunk_bytes
        queue = config.queue_size or concurrency
        self._uploads = (
            Admission(config.name, config.max_uploads, queue) if config.max_uploads else None
        )
        # A call whose input has arrived may always wait for a slot: it is never refused.
        self._admission = Admission(config.name, concurrency, queue + config.max_uploads)
        self._spool_dir = spool_dir
        self.metrics = WorkerMetrics(config.name, self._counts())
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix=f"handler-{config.name}"
        )
        _start_threads(self._executor, concurrency)

    @property
    def in_flight(self) -> int:
        """Calls running, uploading, or waiting for either."""
        calls = self._admission.running + self._admission.waiting
        if self._uploads is not None:
            calls += self._uploads.running + self._uploads.waiting
        return calls

    def _counts(self) -> dict[str, Callable[[], float]]:
        """The worker metrics' gauges, read from the admissions at each scrape."""
        uploads = self._uploads
        return {
            "running": lambda: self._admission.running,
            "waiting": lambda: self._admission.waiting + (uploads.waiting if uploads else 0),
            "uploading": lambda: uploads.running if uploads else 0,
        }

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._function.close()

    async def Call(
        self,
        request_iterator: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[dcf_pb2.CallResponse | bytes]:
        """Its requests come undecoded (server/rpc/framing.py reads the chunks out of
        them) and its answer's chunks go encoded by hand: a chunk is copied once each
        way, where decoding and encoding messages copies it five times."""
        received: Received | None = None
        with self._watched(context) as (ended, watch):
            try:
                try:
                    header = await stream.read_header(request_iterator)
                    params = self._params(header.function, header.params)
                    if self._uploads is not None:
                        received = await self._receive(request_iterator, context, watch)
                        ended.bytes_in = received.size
                    watch.waited("slot", await self._admission.acquire(context.time_remaining()))
                except Exception as exc:  # noqa: BLE001 - mapped to a status in one place
                    ended.outcome, ended.error = errors.code_of(exc).name, exc
                    async for failure in errors.fail_stream(context, exc, received is None):
                        yield failure
                    return
                try:
                    async for response in self._run(
                        params, header.collect, request_iterator, context, received, ended, watch
                    ):
                        yield response
                finally:
                    self._admission.release()
            finally:
                if received is not None:
                    received.close()

    async def Invoke(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """A call whose whole input came in one message (the gateway sends one that fits
        in a chunk this way): one hand-off to a handler thread, one message back.

        The request comes undecoded and the answer goes encoded (server/rpc/framing.py
        ``split_invoke``, ``encode_answer``): a payload is copied once each way,
        where decoding and encoding messages copies it twice."""
        with self._watched(context) as (ended, watch):
            try:
                head, view = stream.split_invoke(raw)
                params = self._params(head.function, head.params)
                data = bytes(view)
                stream.InputLimit(self._config.name, self._config.max_input_bytes).count(data)
                ended.bytes_in = len(data)
                watch.waited("slot", await self._admission.acquire(context.time_remaining()))
                content_type, output = await self._answer(params, data, watch)
            except Exception as exc:
                ended.outcome, ended.error = errors.code_of(exc).name, exc
                await errors.abort(context, exc)
                raise  # unreachable: abort raises
            ended.outcome, ended.bytes_out = "OK", len(output)
            return stream.encode_answer(content_type, output)

    def _params(self, function: str, given: Mapping[str, str]) -> Params:
        """The call's params, once the call is known to be for this worker's function
        and its params are ones the function takes, with values it accepts."""
        name = self._config.name
        if not function:
            raise InvalidInput("the request names no function")
        if function not in (name, *self._config.aliases):
            raise errors.CallError(
                grpc.StatusCode.NOT_FOUND, f"this worker serves {name}, not {loggable(function)}"
            )
        params = stream.check_params(name, given, self._function.params)
        self._function.check(params)
        return params

    @contextlib.contextmanager
    def _watched(self, context: grpc.aio.ServicerContext) -> Iterator[tuple[_Ended, CallWatch]]:
        """One call's span, metrics and log line, whichever method serves it."""
        name = self._config.name
        started = time.monotonic()
        ended = _Ended()
        request_id = request_id_of(context.invocation_metadata())
        watch = self.metrics.call(
            tracing.server_span(f"worker {name}", context.invocation_metadata(), request_id)
        )
        try:
            yield ended, watch
        finally:
            give_back_after(context, ended.bytes_out)
            watch.ended(ended.outcome, ended.error)
            seconds = time.monotonic() - started
            log.info(
                "call %s %s %s %.1f ms",
                request_id,
                name,
                ended.outcome,
                seconds * 1000,
                extra=logs.call_fields(
                    request_id=request_id,
                    function=name,
                    status=ended.outcome,
                    seconds=seconds,
                    bytes_in=ended.bytes_in,
                    bytes_out=ended.bytes_out,
                    trace_id=watch.span.trace_id,
                ),
            )

    async def _answer(self, params: Params, data: bytes, watch: CallWatch) -> tuple[str, bytes]:
        """The handler's whole answer to ``data``, on a handler thread; the call holds a
        slot, which is given back when the thread is done with it, not before."""
        loop = asyncio.get_running_loop()
        stopped = threading.Event()
        work = self._executor.submit(
            watch.running(answer_whole),
            self._function,
            self._config.name,
            params,
            data,
            self._max_answer_bytes,
            stopped,
        )
        work.add_done_callback(lambda _: _call_soon(loop, self._admission.release))
        try:
            return await asyncio.wrap_future(work)
        finally:
            stopped.set()  # a call that ended early stops its handler at its next part

    async def _receive(
        self,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
        watch: CallWatch,
    ) -> Received:
        """The whole input, received under the uploads bound; raises what the input broke."""
        assert self._uploads is not None
        watch.waited("upload", await self._uploads.acquire(context.time_remaining()))
        start_ns = time.time_ns()
        received = Received(self._spool_dir)
        try:
            chunks = stream.read_chunks(requests)
            async for chunk in stream.limited(
                chunks, self._config.name, self._config.max_input_bytes
            ):
                received.write(chunk)
        except BaseException:
            received.close()
            raise
        finally:
            self._uploads.release()
        watch.uploaded(start_ns, received.size)
        return received

    async def _run(
        self,
        params: Params,
        collect: bool,
        request_iterator: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
        received: Received | None,
        ended: _Ended,
        watch: CallWatch,
    ) -> AsyncIterator[dcf_pb2.CallResponse | bytes]:
        """The call once it holds a thread: run the handler, relay its parts.

        Its input is ``received`` whole already, or fed to the handler as it arrives.
        """
        loop = asyncio.get_running_loop()
        run = HandlerRun(loop)
        chunks, path = None, None
        if received is not None:
            chunks, path = received.chunks(self._chunk_bytes), received.path()
        thread = loop.run_in_executor(
            self._executor, watch.running(run.run), self._function, params, collect, chunks, path
        )
        feeder = (
            asyncio.create_task(self._feed(run, request_iterator)) if received is None else None
        )
        failure: BaseException | None = None
        try:
            partial = False
            async for item in run.outputs():
                if isinstance(item, Header):
                    partial = item.partial_results
                    yield dcf_pb2.CallResponse(
                        header=dcf_pb2.ResponseHeader(
                            content_type=item.content_type, partial_results=partial
                        )
                    )
                elif partial:
                    ended.bytes_out += len(item)
                    yield dcf_pb2.CallResponse(result=bytes(item))
                else:
                    ended.bytes_out += len(item)
                    for piece in stream.split(item, self._chunk_bytes):
                        yield stream.encode_chunk(stream.RESPONSE_CHUNK, piece)
            ended.outcome = "OK"
        except Exception as exc:  # noqa: BLE001 - mapped to a status below
            failure = ended.error = exc
            ended.outcome = errors.code_of(exc).name
        finally:
            run.abort()
            input_pending = feeder is not None and not feeder.done()
            if feeder is not None:
                feeder.cancel()
            thread.add_done_callback(_log_thread_error)
        if failure is not None:
            async for response in errors.fail_stream(context, failure, input_pending):
                yield response

    async def _feed(self, run: HandlerRun, requests: AsyncIterator[bytes]) -> None:
        try:
            chunks = stream.read_chunks(requests)
            async for chunk in stream.limited(
                chunks, self._config.name, self._config.max_input_bytes
            ):
                await run.feed(bytes(chunk))  # handlers read bytes, not views of messages
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the handler's next read raises it
            await run.fail_input(exc)
            return
        await run.end_input()


def _start_threads(executor: concurrent.futures.ThreadPoolExecutor, count: int) -> None:
    """Start all of the pool's threads now, rather than one by one as calls first come.

    Calls never wait for a thread to be made, and the worker's thread count is the
    same from its start to its end, so a thread that leaks shows at once.
    """
    everyone = threading.Barrier(count)
    for _ in range(count):
        executor.submit(everyone.wait)


@dataclass
class _Ended:
    """How a call ended, for its log line: CANCELLED unless something else is known."""

    outcome: str = "CANCELLED"
    bytes_in: int | None = None  # known when the input was received whole
    bytes_out: int = 0
    error: BaseException | None = None


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """``callback`` on ``loop`` from any thread; nothing once the loop is closed (the
    worker is stopping, and nobody waits for a slot any more)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


def _log_thread_error(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("handler thread failed", exc_info=future.exception())


def worker_servicer(settings: Settings, name: str) -> tuple[WorkerServicer, FunctionConfig]:
    """Load the function called ``name`` and wrap it in a servicer."""
    config = settings.resolve(name)
    function = load_function(config)
    concurrency = config.max_concurrency or DEFAULT_CONCURRENCY
    servicer = WorkerServicer(
        config,
        function,
        settings.chunk_bytes,
        concurrency,
        settings.spool_dir,
        settings.max_invoke_bytes,
    )
    return servicer, config
