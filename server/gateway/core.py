"""The gateway: dcf.v1.Gateway, a pass-through from callers to each function's workers.

It knows functions only by their registry entries (name, aliases, limits, worker
addresses), never by what their bytes mean. For a streamed call it opens one
streaming call to a worker and relays both ways at once: the caller's chunks go up
as they arrive, the worker's answer comes down as it is produced. Nothing is
buffered beyond what gRPC's flow control holds, so a slow reader slows the writer
and a gigabyte passes in constant memory. A unary call small enough for one
message goes to the worker as one Worker.Invoke instead, its bytes passed on
undecoded where they can be. Deadlines travel to the worker; a caller that goes
away cancels the worker's call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import grpc

from handlers.base import Param
from handlers.errors import DeadlineExceeded, InvalidInput, Overloaded
from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from server.admission import Admission, ByteBudget
from server.config import FunctionConfig, Settings
from server.gateway.metrics import Metrics
from server.gateway.pace import paced
from server.gateway.replay import ReplayableInput
from server.gateway.routing import Route, Routes
from server.gateway.upstream import UpstreamReader
from server.memory import give_back_after
from server.rpc import framing as stream
from server.rpc import status as errors
from server.rpc import wire
from server.rpc.callinfo import REQUEST_ID, loggable, request_id_of
from server.telemetry import logs, tracing

log = logging.getLogger(__name__)

DEFAULT_REPLAY_BYTES = 1 << 20
# How often a call waiting for a starting worker checks that it is still starting.
STARTING_POLL_SECONDS = 0.25
# The fronts' names in traces (server/telemetry/tracing.py), rpc.service/rpc.method.
CALL_SPAN = "dcf.v1.Gateway/Call"
INVOKE_SPAN = "dcf.v1.Gateway/Invoke"
# What a whole call may carry beside its input to go as one Worker.Invoke: well within
# the room a worker takes beside a chunk in one message (server/run/main.py's slack).
HEADER_ROOM = 32 << 10


class Deadline:
    """When a call must end: the caller's deadline, or its function's ceiling if sooner.

    A caller that gives no deadline gets the ceiling (``max_call_seconds``); one that
    asks for longer is held to it, not refused.
    """

    def __init__(self, context: grpc.aio.ServicerContext, ceiling: float) -> None:
        remaining = context.time_remaining()
        self.seconds = ceiling if remaining is None else min(remaining, ceiling)
        self._end = time.monotonic() + self.seconds

    def left(self) -> float:
        return max(0.0, self._end - time.monotonic())


@dataclass(frozen=True)
class Whole:
    """A unary call's input, arrived whole: its bytes, and the caller's InvokeRequest
    as it came (``encoded``) when a worker may take that as it is, undecoded."""

    data: bytes | memoryview
    encoded: bytes | None = None


@dataclass(frozen=True)
class Encoded:
    """A worker's InvokeResponse as it came, passed on undecoded; ``size``: its output's."""

    raw: bytes
    size: int


@dataclass(frozen=True)
class EncodedChunk:
    """A worker's CallResponse holding a chunk of its answer, as it came (``raw``),
    passed on undecoded; ``chunk``: the chunk, a view of ``raw``."""

    raw: bytes
    chunk: memoryview


Response = dcf_pb2.CallResponse | Encoded | EncodedChunk


class Gateway:
    """Routing, admission, retries and accounting shared by every front.

    dcf.v1 Call and Invoke and Open Inference's ModelInfer all end in ``call``.
    ``starting(name)`` tells whether a worker of the function is on its way up (the
    embedded default's supervisor knows); a call for such a function waits for it,
    within ``startup_wait``, instead of failing while the model loads.

    ``update`` swaps in new settings (functions added, changed or removed while
    serving) in one step: a call resolves its function and leases its route at once,
    and keeps both to its end, so calls under way finish where they started.
    """

    def __init__(
        self,
        settings: Settings,
        routes: Routes,
        metrics: Metrics | None = None,
        replay_bytes: int = DEFAULT_REPLAY_BYTES,
        starting: Callable[[str], bool] = lambda name: False,
    ) -> None:
        self.settings = settings
        self.routes = routes
        self.metrics = metrics or Metrics()
        self.replay_bytes = replay_bytes
        self._starting = starting
        # What opens the workers' door: the internal token, never a caller's.
        self._door = (
            (("authorization", f"Bearer {settings.worker_token}"),) if settings.worker_token else ()
        )
        self._admissions: dict[str, Admission] = {}
        self._replaced: list[Admission] = []  # admissions of versions still finishing calls
        self._admissions = self._admissions_for(settings)
        self._unary = ByteBudget(settings.max_unary_bytes)

    def _admissions_for(self, settings: Settings) -> dict[str, Admission]:
        """Each function's admission: its own, kept while its limits stay the same."""
        admissions = {}
        for fn in settings.functions:
            # A function that receives uploads whole runs max_concurrency calls and has up
            # to max_uploads more on their way in (server/worker/received.py).
            limit = fn.max_concurrency and fn.max_concurrency + fn.max_uploads
            admission = self._admissions.get(fn.name)
            if admission is None or (admission.limit, admission.queue) != (limit, fn.queue_size):
                admission = Admission(fn.name, limit, fn.queue_size)
                self.metrics.queue_depth.labels(fn.name).set_function(_waiting_in(admission))
            admissions[fn.name] = admission
        for name in set(self._admissions) - set(admissions):
            with contextlib.suppress(KeyError):
                self.metrics.queue_depth.remove(name)
        return admissions

    def update(
        self, settings: Settings, opened: Mapping[str, Route] | None = None
    ) -> dict[str, Route]:
        """Serve ``settings``' functions from now on; returns the routes replaced, by name.

        Calls under way keep the function, admission and route they started with; new
        calls get the new ones (``opened``: routes made ready beforehand, by name). A
        replaced route's ``drained`` tells when its last call is done.
        """
        admissions = self._admissions_for(settings)
        retired = self.routes.update(settings.functions, opened)
        kept = set(map(id, admissions.values()))
        self._replaced += [a for a in self._admissions.values() if id(a) not in kept]
        self._admissions = admissions
        self.settings = settings
        return retired

    @property
    def in_flight(self) -> int:
        """Calls being served or waiting for a slot now, over all functions and versions."""
        self._replaced = [a for a in self._replaced if a.running + a.waiting]
        admissions = [*self._admissions.values(), *self._replaced]
        return sum(a.running + a.waiting for a in admissions)

    def resolve(self, name: str) -> FunctionConfig:
        return self.settings.resolve(name)

    @contextlib.asynccontextmanager
    async def admit(self, fn: FunctionConfig, deadline: Deadline) -> AsyncIterator[None]:
        """Hold a slot of the function for the block, waiting in its queue if need be."""
        async with self._admissions[fn.name].slot(deadline.left()) as waited:
            self.metrics.queue_wait.labels(fn.name).observe(waited)
            with self.metrics.running(fn.name):
                yield

    async def call(
        self,
        header: dcf_pb2.CallHeader,
        chunks: AsyncIterator[stream.Data] | Whole,
        context: grpc.aio.ServicerContext,
        front: str = CALL_SPAN,
    ) -> AsyncGenerator[Response, None]:
        """One call, whatever the front: resolve, admit, relay, and account for it.

        ``chunks``: the input as it arrives, or ``Whole`` (the unary fronts'); a whole
        input may be answered ``Encoded``, in one piece. The answer's chunks come as
        the worker encoded them (``EncodedChunk``).
        The caller gets a request id in its trailing metadata (its own
        ``x-request-id`` if it sent one), whatever the outcome; the worker gets the
        same id. Trailing, because forcing initial metadata out costs a round of its
        own per call (7% of the gateway's time at 32 calls at once). ``front``
        names the call's span in its trace.
        """
        request_id = request_id_of(context.invocation_metadata())
        context.set_trailing_metadata(((REQUEST_ID, request_id),))
        trace = tracing.server_span(front, context.invocation_metadata(), request_id)
        started = time.monotonic()
        label, code = "unknown", "OK"
        sizes = [0, 0]  # bytes in, bytes out
        try:
            if not header.function:
                raise InvalidInput("the request names no function")
            fn = self.resolve(header.function)
            label = fn.name
            trace.set(function=fn.name)
            deadline = Deadline(context, self.settings.call_seconds(fn))
            with self.routes.lease(fn.name) as route:
                async with self.admit(fn, deadline):
                    if isinstance(chunks, Whole):
                        stream.InputLimit(fn.name, fn.max_input_bytes).count(
                            memoryview(chunks.data)
                        )
                        sizes[0] = len(chunks.data)
                        counted: AsyncIterator[stream.Data] | Whole = chunks
                    else:
                        counted = self._counted(chunks, fn, sizes)
                    relayed = self.relay(fn, header, counted, deadline, request_id, route, trace)
                    async with contextlib.aclosing(relayed):
                        async for response in relayed:
                            sizes[1] += _size_of(response)
                            yield response
        except BaseException as exc:
            code = errors.code_of(exc).name
            raise
        finally:
            trace.end(code)
            name = header.function or "-"
            self._account(request_id, name, label, code, started, sizes, trace.trace_id)

    async def _counted(
        self, chunks: AsyncIterator[stream.Data], fn: FunctionConfig, sizes: list[int]
    ) -> AsyncIterator[stream.Data]:
        """The input, counted into ``sizes[0]``: TooLarge the moment it passes the limit,
        DeadlineExceeded when the caller idles or crawls (server/gateway/pace.py)."""
        settings = self.settings
        watched = paced(
            chunks, fn.name, settings.input_idle_seconds, settings.min_input_bytes_per_second
        )
        async for chunk in stream.limited(watched, fn.name, fn.max_input_bytes):
            sizes[0] += len(chunk)
            yield chunk

    def refused(self, name: str, exc: BaseException, context: grpc.aio.ServicerContext) -> None:
        """Account for a call a front refused before it reached ``call``.

        Open Inference decodes its tensors first; a malformed one still counts as a
        call of its function, with a request id, as a refusal inside ``call`` would.
        """
        request_id = request_id_of(context.invocation_metadata())
        context.set_trailing_metadata(((REQUEST_ID, request_id),))
        fn = self.settings.function(name) if name else None
        label = fn.name if fn is not None else "unknown"
        code = errors.code_of(exc).name
        self._account(request_id, name or "-", label, code, time.monotonic(), [0, 0])

    def _account(
        self,
        request_id: str,
        name: str,
        label: str,
        code: str,
        started: float,
        sizes: list[int],
        trace_id: str = "",
    ) -> None:
        """One call's metrics and its log line (``label``: the function, or "unknown")."""
        elapsed = time.monotonic() - started
        self.metrics.finished(label, code, elapsed)
        self.metrics.bytes_in.labels(label).inc(sizes[0])
        self.metrics.bytes_out.labels(label).inc(sizes[1])
        log.info(
            "call %s %s %s %.1f ms in=%d out=%d",
            request_id,
            loggable(name),
            code,
            elapsed * 1000,
            sizes[0],
            sizes[1],
            extra=logs.call_fields(
                request_id=request_id,
                function=loggable(name),
                status=code,
                seconds=elapsed,
                bytes_in=sizes[0],
                bytes_out=sizes[1],
                trace_id=trace_id,
            ),
        )

    async def invoke(
        self,
        name: str,
        data: bytes | memoryview,
        params: Mapping[str, str],
        context: grpc.aio.ServicerContext,
        front: str = INVOKE_SPAN,
    ) -> tuple[str, bytes]:
        """The whole answer of function ``name`` to ``data``: (content type, body).

        Functions with partial results answer one collected document, as the unary
        fronts (dcf.v1 Invoke, Open Inference's ModelInfer) need. ``front``: the
        call's span name.
        """
        answer = await self._answer(name, Whole(data), params, context, front)
        if isinstance(answer, Encoded):
            reply = dcf_pb2.InvokeResponse.FromString(answer.raw)
            return reply.content_type, reply.output
        return answer

    async def invoke_encoded(
        self, raw: bytes, context: grpc.aio.ServicerContext, front: str = INVOKE_SPAN
    ) -> bytes:
        """dcf.v1 Invoke's answer to the InvokeRequest ``raw``, encoded: its payload is
        never decoded here. A worker that takes the request as it came gets it so, and
        its answer comes back as it was sent (server/rpc/wire.py); otherwise the
        request is decoded and the answer encoded, as ``invoke`` does."""
        head, data = stream.split_invoke(raw)
        answer = await self._answer(head.function, Whole(data, raw), head.params, context, front)
        if isinstance(answer, Encoded):
            return answer.raw
        return stream.encode_answer(*answer)

    async def _answer(
        self,
        name: str,
        whole: Whole,
        params: Mapping[str, str],
        context: grpc.aio.ServicerContext,
        front: str,
    ) -> tuple[str, bytes] | Encoded:
        """The whole answer of ``name`` to ``whole``: (content type, body), or as the
        worker encoded it; held against the unary budget, and bounded."""
        header = dcf_pb2.CallHeader(function=name, collect=True)
        header.params.update(params)
        limit = self.settings.max_invoke_bytes
        content_type = ""
        body: list[stream.Data] = []
        encoded: Encoded | None = None
        held = 0
        try:
            # Read to its end, so that the call is accounted for (its status, its log
            # line) before its answer goes out; an answer over the limit is thrown
            # into it, so that it ends with that status rather than as cancelled.
            async with contextlib.aclosing(self.call(header, whole, context, front)) as answer:
                async for response in answer:
                    if held + _size_of(response) > limit:
                        await answer.athrow(stream.output_too_large(name, limit))
                    if isinstance(response, Encoded):
                        encoded = response
                        self._unary.grow(len(response.raw))
                        held += len(response.raw)
                        continue
                    if isinstance(response, EncodedChunk):
                        piece: stream.Data = response.chunk
                    elif (kind := response.WhichOneof("kind")) == "header":
                        content_type = response.header.content_type
                        continue
                    else:
                        piece = response.chunk if kind == "chunk" else response.result
                    self._unary.grow(len(piece))
                    held += len(piece)
                    body.append(piece)
            return encoded if encoded is not None else (content_type, b"".join(body))
        finally:
            self._unary.give(held)
            give_back_after(context, held)

    @contextlib.contextmanager
    def unary_request(self, raw: bytes, context: grpc.aio.ServicerContext) -> Iterator[None]:
        """Hold a unary request's bytes against the budget while it is served.

        Fronts call this with the message still undecoded, so one that would pass the
        budget is refused before its decoded copies exist.
        """
        try:
            self._unary.take(len(raw), "Invoke")
        except Overloaded as exc:
            self.refused("", exc, context)
            raise
        try:
            yield
        finally:
            self._unary.give(len(raw))
            give_back_after(context, len(raw))

    async def relay(
        self,
        fn: FunctionConfig,
        header: dcf_pb2.CallHeader,
        chunks: AsyncIterator[stream.Data] | Whole,
        deadline: Deadline,
        request_id: str = "",
        route: Route | None = None,
        trace: tracing.Span = tracing.NOOP,
    ) -> AsyncGenerator[Response, None]:
        """Send ``chunks`` (or the whole input) to a worker of ``fn``; yield its responses.

        A worker that is unavailable before it answers anything gets the call once
        more on another replica, if the input so far is small enough to send again
        (a whole input always is). Raises a FunctionError (or CallError with the
        worker's own status) on failure. ``route``: the one the call leased (default:
        the function's route now). Each attempt is a span inside ``trace``.
        """
        route = route or self.routes.route(fn.name)
        if route is None:
            raise errors.CallError(
                grpc.StatusCode.UNAVAILABLE, f"{fn.name}: no worker is configured"
            )
        whole, replay = None, None
        if isinstance(chunks, Whole) and self._fits_one_message(header, chunks):
            whole = chunks
        elif isinstance(chunks, Whole):
            pieces = _aiter(stream.split(chunks.data, self.settings.chunk_bytes))
            replay = ReplayableInput(pieces, self.replay_bytes)
        else:
            replay = ReplayableInput(chunks, self.replay_bytes)
        try:
            for attempt in (1, 2):
                answered = False
                await self._worker_up(fn, deadline, route)
                span = _attempt_span(trace, fn, route, attempt)
                if whole is not None:
                    tried = self._attempt_whole(
                        route, fn, header, whole, deadline, request_id, span.headers()
                    )
                else:
                    assert replay is not None
                    tried = self._attempt(
                        route, fn, header, replay, deadline, request_id, span.headers()
                    )
                try:
                    async for response in tried:
                        answered = True
                        yield response
                    span.end()
                    return
                except errors.CallError as exc:
                    span.end(exc.code.name)
                    retry = (
                        exc.code == grpc.StatusCode.UNAVAILABLE
                        and attempt == 1
                        and not answered
                        and (replay is None or replay.replayable)
                    )
                    if not retry:
                        raise
                    log.warning("call %s %s: %s; retrying once", request_id, fn.name, exc.message)
                    self.metrics.retries.labels(fn.name).inc()
                except BaseException as exc:
                    span.end(errors.code_of(exc).name)
                    raise
        finally:
            if replay is not None:
                replay.close()

    def _fits_one_message(self, header: dcf_pb2.CallHeader, whole: Whole) -> bool:
        """Whether a whole input goes to the worker as one Invoke: one that fits in the
        message a worker takes (a chunk, and its params in ``HEADER_ROOM``), for a call
        that wants its answer collected (what Invoke answers)."""
        return (
            header.collect
            and len(whole.data) <= self.settings.chunk_bytes
            and header.ByteSize() <= HEADER_ROOM
        )

    async def _attempt_whole(
        self,
        route: Route,
        fn: FunctionConfig,
        header: dcf_pb2.CallHeader,
        whole: Whole,
        deadline: Deadline,
        request_id: str,
        trace_headers: list[tuple[str, str]],
    ) -> AsyncIterator[Response]:
        """One Worker.Invoke; its answer is yielded ``Encoded``, as the worker sent it.

        A stream costs the worker a hand-off between its loop and the handler's thread
        per message, and both hops several rounds through gRPC's core; one message
        each way is what a small call needs. The caller's own InvokeRequest goes as it
        came, when there is one and it names the function by its name. A worker that
        predates Worker.Invoke
        (UNIMPLEMENTED, during a rolling upgrade) gets this call and the rest of its
        route's calls streamed.
        """
        if route.whole_calls:
            # The caller's bytes go as they came when they name the function as its
            # workers know it for certain: by its name, not an alias.
            request = whole.encoded if header.function == fn.name else None
            if request is None:
                request = dcf_pb2.InvokeRequest(
                    function=fn.name, input=bytes(whole.data), params=header.params
                ).SerializeToString()
            metadata = ((REQUEST_ID, request_id), *self._door, *trace_headers)
            call = route.invoke(request, timeout=deadline.left(), metadata=metadata)
            try:
                raw = await call
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise self._worker_error(fn, await errors.upstream_error(call, exc)) from None
                log.warning("%s: workers predate Worker.Invoke; streaming calls", fn.name)
                route.whole_calls = False
            else:
                yield Encoded(raw, wire.length_of(raw, stream.INVOKE_OUTPUT))
                return
        replay = ReplayableInput(_aiter([whole.data]), len(whole.data))
        try:
            async for response in self._attempt(
                route, fn, header, replay, deadline, request_id, trace_headers
            ):
                yield response
        finally:
            replay.close()

    async def _worker_up(self, fn: FunctionConfig, deadline: Deadline, route: Route) -> None:
        """Wait, within the deadline and ``startup_wait``, for a worker that is starting.

        A function with no worker up and none starting (or none any more: it died
        while we waited) is left to fail at once.
        """
        if route.ready() or not self._starting(fn.name):
            return
        loop = asyncio.get_running_loop()
        remaining = deadline.left()
        patience = self.settings.startup_wait
        deadline_first = remaining < patience
        give_up = loop.time() + (remaining if deadline_first else patience)
        while not await route.wait_ready(min(STARTING_POLL_SECONDS, give_up - loop.time())):
            if not self._starting(fn.name):
                return
            if loop.time() >= give_up:
                if deadline_first:
                    raise DeadlineExceeded(f"{fn.name}: deadline exceeded while its worker starts")
                raise errors.CallError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"{fn.name}: worker still starting after {patience:g} s",
                )

    async def _attempt(
        self,
        route: Route,
        fn: FunctionConfig,
        header: dcf_pb2.CallHeader,
        replay: ReplayableInput,
        deadline: Deadline,
        request_id: str,
        trace_headers: list[tuple[str, str]],
    ) -> AsyncIterator[dcf_pb2.CallResponse | EncodedChunk]:
        """One streaming call to one worker, relaying both ways at once.

        Its messages stay encoded both ways: the input's chunks go up encoded once
        (framing ``send_call``), the answer's chunks come down as the worker sent them;
        only the other responses (header, result, failure) are decoded."""
        metadata = ((REQUEST_ID, request_id), *self._door, *trace_headers)
        call = route.call(timeout=deadline.left(), metadata=metadata)
        upstream = asyncio.create_task(self._send(call, fn, header, replay.chunks()))
        answer: UpstreamReader[bytes] = UpstreamReader(call)
        try:
            while (raw := await answer.next()) is not None:
                response = stream.read_response(raw, fn.name, "worker")
                if isinstance(response, memoryview):
                    yield EncodedChunk(raw, response)
                    continue
                if response.WhichOneof("kind") == "failure":
                    raise errors.failure_error(response.failure)
                yield response
            if (broken := _input_error(upstream)) is not None:
                raise broken
        except asyncio.CancelledError:
            # The worker call is cancelled locally when the input broke a rule.
            broken = _input_error(upstream)
            current = asyncio.current_task()
            if broken is not None and (current is None or not current.cancelling()):
                raise broken from None
            raise
        except grpc.aio.AioRpcError as exc:
            if (broken := _input_error(upstream)) is not None:
                raise broken from None
            raise self._worker_error(fn, await errors.upstream_error(call, exc)) from None
        finally:
            upstream.cancel()
            answer.close()

    async def _send(
        self,
        call: grpc.aio.StreamStreamCall,
        fn: FunctionConfig,
        header: dcf_pb2.CallHeader,
        chunks: AsyncIterator[stream.Data],
    ) -> None:
        """Write the header and chunks to the worker; on a rule broken, cancel it and raise."""
        forwarded = dcf_pb2.CallHeader(function=fn.name, collect=header.collect)
        forwarded.params.update(header.params)
        try:
            await stream.send_call(call, forwarded, chunks, self.settings.chunk_bytes)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            # The worker ended the call; its own status arrives on the response side.
            return
        except Exception:
            call.cancel()
            raise

    def _worker_error(self, fn: FunctionConfig, error: errors.CallError) -> errors.CallError:
        """The worker's error as the caller sees it: its own, except where it would say
        more than a caller should know."""
        if error.code == grpc.StatusCode.UNAVAILABLE:
            # Where the workers are is for the log, not for callers.
            log.warning(
                "%s: worker unavailable at %s: %s",
                fn.name,
                self.routes.target(fn.name),
                error.message,
            )
            return errors.CallError(error.code, f"{fn.name}: worker unavailable")
        if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return errors.CallError(error.code, f"{fn.name}: deadline exceeded")
        return error


class GatewayServicer(dcf_pb2_grpc.GatewayServicer):
    """dcf.v1.Gateway: a thin adapter from messages to ``Gateway``."""

    RAW_REQUESTS = frozenset({"Invoke"})  # weighed against the unary budget before decoding

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._listed: tuple[Settings, dcf_pb2.ListFunctionsResponse] | None = None

    async def Call(
        self,
        request_iterator: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[dcf_pb2.CallResponse | bytes]:
        """Its requests come undecoded and its answer's chunks go as the worker
        encoded them (server/rpc/server.py): a chunk is never decoded here."""
        failure: BaseException | None = None
        chunks = None
        try:
            header = await stream.read_header(request_iterator)
            chunks = stream.read_chunks(request_iterator)
            async for response in self._gateway.call(header, chunks, context):
                if isinstance(response, EncodedChunk):
                    yield response.raw  # passed on as the worker encoded it
                else:
                    assert isinstance(response, dcf_pb2.CallResponse)  # a stream is never Encoded
                    yield response
        except Exception as exc:  # noqa: BLE001 - mapped to a status in one place
            failure = exc
        if failure is not None:
            # An async generator's frame is None once it has ended; typing's AsyncIterator
            # has no ag_frame, the generator read_chunks returns has.
            ended = chunks is not None and chunks.ag_frame is None  # type: ignore[attr-defined]
            input_pending = not ended
            async for response in errors.fail_stream(context, failure, input_pending):
                yield response

    async def Invoke(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Answers an encoded InvokeResponse (server/rpc/server.py sends bytes as they are)."""
        try:
            with self._gateway.unary_request(raw, context):
                return await self._gateway.invoke_encoded(raw, context)
        except Exception as exc:  # any error: mapped to a status in one place
            await errors.abort(context, exc)
            raise  # unreachable: abort raises

    async def ListFunctions(
        self, request: dcf_pb2.ListFunctionsRequest, context: grpc.aio.ServicerContext
    ) -> dcf_pb2.ListFunctionsResponse:
        # Built once per settings: reading a function's params imports its (light)
        # handler module. New settings (a function added while serving) build it anew.
        settings = self._gateway.settings
        if self._listed is None or self._listed[0] is not settings:
            listed = [function_info(fn) for fn in settings.functions]
            self._listed = (settings, dcf_pb2.ListFunctionsResponse(functions=listed))
        return self._listed[1]


def function_info(fn: FunctionConfig) -> dcf_pb2.FunctionInfo:
    """What ListFunctions says of ``fn``: its registry entry and its handler's params.

    A handler module this process cannot import (a gateway image without it) leaves
    the params unsaid rather than the gateway down; its workers still check them.
    """
    try:
        params = fn.declared_params()
    except ImportError as exc:
        log.warning("%s: params not listed, cannot import %s: %s", fn.name, fn.handler, exc)
        params = {}
    return dcf_pb2.FunctionInfo(
        name=fn.name,
        description=fn.description,
        input_content_type=fn.input_type,
        output_content_type=fn.output_type,
        aliases=list(fn.aliases),
        max_input_bytes=fn.max_input_bytes,
        params={name: param.describe() for name, param in params.items()},
        param_specs=[param_spec(param) for param in params.values()],
    )


def param_spec(param: Param) -> dcf_pb2.ParamSpec:
    return dcf_pb2.ParamSpec(
        name=param.name,
        type=param.type,
        description=param.describe(),
        default=param.wire_default,
        minimum=param.low,
        maximum=param.high,
        choices=list(param.choices),
    )


def _attempt_span(
    trace: tracing.Span, fn: FunctionConfig, route: Route, attempt: int
) -> tracing.Span:
    """The span of one attempt to relay a call to ``fn``'s workers (the second: a retry).

    A local worker reached over its Unix socket is named by the socket's path, as
    OpenTelemetry's ``server.address`` has it, with ``network.transport`` unix.
    """
    paths = [w.removeprefix("unix:") for w in route.workers if w.startswith("unix:")]
    where = (
        {"server.address": ",".join(paths), "network.transport": "unix"}
        if paths
        else {"server.address": ",".join(route.workers)}
    )
    return trace.child(f"relay {fn.name}", "client", attempt=attempt, retry=attempt > 1, **where)


def _size_of(response: Response) -> int:
    """The output bytes a response carries."""
    if isinstance(response, Encoded):
        return response.size
    if isinstance(response, EncodedChunk):
        return len(response.chunk)
    return len(response.chunk) + len(response.result)


def _waiting_in(admission: Admission) -> Callable[[], float]:
    """The queue-depth gauge's reading: the calls waiting in ``admission`` now."""
    return lambda: admission.waiting


def _input_error(upstream: asyncio.Task[None]) -> BaseException | None:
    """Why sending the input failed (too large, malformed), if it has."""
    if upstream.done() and not upstream.cancelled():
        return upstream.exception()
    return None


async def _aiter(items: Iterable[stream.Data]) -> AsyncIterator[stream.Data]:
    for item in items:
        yield item
