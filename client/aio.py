"""``AsyncClient``: ``Client`` for asyncio programs: ``await``, ``async for``, ``async with``.

    from client import AsyncClient

    async with AsyncClient("127.0.0.1:50051") as dcf:
        boxes = (await dcf.call("ssd", Path("photo.jpg"))).json()
        async for frame in dcf.stream("ssd-video", Path("clip.mp4")):
            print(frame)

Each call sends its input from a task of its own while the caller reads the answer.
Files and plain iterables are read in a thread, so a slow disk or a blocking
generator never stalls the event loop; async iterables are read on the loop.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from types import TracebackType
from typing import Any, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.answer import Answer, UploadState
from client.exceptions import Cancelled
from client.inputs import AsyncData, ParamValue, async_chunks_of, wire_params
from client.result import AnswerHeader, FunctionInfo, Result
from client.wire import (
    CHANNEL_OPTIONS,
    DEFAULT_ADDRESS,
    REQUEST_ID,
    CertificateAuthority,
    call_metadata,
    channel_credentials,
    header_request,
    metadata_value,
    rpc_error,
    status_error,
)
from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc

CallStream = grpc.aio.StreamStreamCall  # [dcf_pb2.CallRequest, dcf_pb2.CallResponse]

# What grpcio's asyncio client reports in place of the server's status when a write
# loses the race with the end of the call; the real status follows a moment later.
_CORE_WRITE_ERROR = "Internal error from Core"
_SETTLE_SECONDS = 1.0


async def _send(
    call: CallStream,
    header: dcf_pb2.CallRequest,
    chunks: AsyncGenerator[bytes, None],
    state: UploadState,
    close_source: Callable[[], None],
) -> None:
    """Send the header and the input, then half-close; stop when the call has failed."""
    try:
        await call.write(header)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if state.stopped.is_set():
                    return
                await call.write(dcf_pb2.CallRequest(chunk=chunk))
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        return  # the call has ended: its status comes on the reading side
    except Exception as exc:  # noqa: BLE001 - the caller's input failed: theirs to see
        state.error = exc
        call.cancel()
    finally:
        close_source()


def _release(call: CallStream, upload: asyncio.Task[None]) -> None:
    """End a call that may still run: on close, or once its stream is unreachable."""
    with contextlib.suppress(RuntimeError):  # the event loop may be closed by now
        call.cancel()
        upload.cancel()


class AsyncStream(Answer):
    """A function's answer as it comes, from ``AsyncClient.stream``.

    ``async for`` it for the pieces (bytes, or one parsed object per partial
    result); ``raw()`` yields them all as bytes; ``await header()`` waits for the
    content type. Leaving an ``async with`` block, ``aclose()``, or dropping the
    stream before its end cancels the call.
    """

    def __init__(self, call: CallStream, upload: UploadState, sending: asyncio.Task[None]) -> None:
        super().__init__(upload)
        self._call = call
        self._sending = sending
        self._done = False
        self._finalizer = weakref.finalize(self, _release, call, sending)

    async def header(self) -> AnswerHeader:
        """The answer's content type and kind, waiting for them if need be."""
        while self._header is None:
            response = await self._message()
            if response is None:
                raise self._no_header()
            self._take(response)
        return self._header

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Any:
        piece = await self._piece()
        if piece is None:
            raise StopAsyncIteration
        return self._decode(piece)

    async def raw(self) -> AsyncIterator[bytes]:
        """The answer's pieces as bytes: chunks of the body, or each partial result."""
        while (piece := await self._piece()) is not None:
            yield piece

    def cancel(self) -> None:
        """Cancel the call; reading on raises ``Cancelled``."""
        self._call.cancel()

    async def aclose(self) -> None:
        """Cancel the call if it is still running, and wait until its input is let go."""
        self._finalizer()
        await asyncio.gather(self._sending, return_exceptions=True)

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _piece(self) -> bytes | None:
        while (response := await self._message()) is not None:
            piece = self._take(response)
            if piece is not None:
                return piece
        if self._header is None:
            raise self._no_header()
        return None

    async def _message(self) -> dcf_pb2.CallResponse | None:
        """The next response; None once the call has ended well; raises how it failed."""
        if self._done:
            return None
        try:
            response = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            self._done = True
            error = await self._error(exc)
            await self.aclose()
            raise error from None
        except (asyncio.CancelledError, asyncio.InvalidStateError):
            # grpcio raises CancelledError from a call cancelled here (cancel(), or the
            # input failing); only a cancellation of the reading task goes on as one.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            self._done = True
            await self.aclose()
            raise self._upload.error or Cancelled("CANCELLED", "the call was cancelled") from None
        if response is grpc.aio.EOF:
            self._done = True
            await self._finish()
            return None
        return cast(dcf_pb2.CallResponse, response)  # the stubs type EOF as any object

    async def _finish(self) -> None:
        trailing = await self._call.trailing_metadata()
        self.request_id = metadata_value(trailing, REQUEST_ID)
        await self.aclose()
        if self._upload.error is not None:
            raise self._upload.error
        if self._failure is not None:
            raise status_error(grpc.StatusCode.UNKNOWN, None, trailing, self._failure)

    async def _error(self, exc: grpc.aio.AioRpcError) -> BaseException:
        if self._upload.error is not None:
            return self._upload.error
        code, details, trailing = exc.code(), exc.details(), exc.trailing_metadata()
        if self._failure is None and code == grpc.StatusCode.INTERNAL:
            code, details = await self._settled(code, details)
        error = status_error(code, details, trailing, self._failure)
        self.request_id = error.request_id
        return error

    async def _settled(
        self, code: grpc.StatusCode, details: str | None
    ) -> tuple[grpc.StatusCode, str | None]:
        """The server's own status where grpcio stamped a racing write's INTERNAL on the call."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _SETTLE_SECONDS
        while details == _CORE_WRITE_ERROR and loop.time() < deadline:
            await asyncio.sleep(0.01)
            code, details = await self._call.code(), await self._call.details()
        return code, details


class AsyncClient:
    """``Client`` for asyncio: the same arguments, methods and errors, awaited.

    Its channel opens on first use, on the running event loop; use it with ``async
    with``, or ``await close()``. One client may serve many tasks at once.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        ca: CertificateAuthority | None = None,
        timeout: float | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._metadata = call_metadata(token)
        self._credentials = channel_credentials(ca)
        self._channel: grpc.aio.Channel | None = None

    async def call(self, name: str, data: AsyncData, /, **params: ParamValue) -> Result:
        """Function ``name``'s whole answer to ``data`` (see ``Client.call``).

        ``data`` may also be an async iterable of bytes chunks.
        """
        async with self._start(name, data, params, collect=True) as answer:
            header = await answer.header()
            body = b"".join([piece async for piece in answer.raw()])
        return Result(header.content_type, body, answer.request_id)

    def stream(self, name: str, data: AsyncData, /, **params: ParamValue) -> AsyncStream:
        """Function ``name``'s answer to ``data`` as it comes (see ``AsyncStream``).

        Call it in a coroutine: the call starts at once, on the running loop.
        """
        return self._start(name, data, params, collect=False)

    async def list(self) -> builtins.list[FunctionInfo]:
        """The functions the gateway serves, in its order."""
        gateway = dcf_pb2_grpc.GatewayStub(self._open())
        try:
            reply = await gateway.ListFunctions(
                dcf_pb2.ListFunctionsRequest(), timeout=self.timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc) from None
        return [FunctionInfo.from_message(fn) for fn in reply.functions]

    async def health(self, name: str | None = None) -> bool:
        """Whether function ``name`` (None: the whole gateway) is serving now."""
        health = health_pb2_grpc.HealthStub(self._open())
        try:
            reply = await health.Check(
                health_pb2.HealthCheckRequest(service=name or ""), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc) from None
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        """Close the channel; calls still running are cancelled."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> AsyncClient:
        self._open()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _open(self) -> grpc.aio.Channel:
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
            else:
                self._channel = grpc.aio.secure_channel(
                    self.address, self._credentials, options=CHANNEL_OPTIONS
                )
        return self._channel

    def _start(
        self, name: str, data: AsyncData, params: dict[str, ParamValue], collect: bool
    ) -> AsyncStream:
        wire = wire_params(params)
        source = contextlib.ExitStack()
        chunks = source.enter_context(async_chunks_of(data))
        try:
            gateway = dcf_pb2_grpc.GatewayStub(self._open())
            call = gateway.Call(timeout=self.timeout, metadata=self._metadata)
            state = UploadState()
            header = header_request(name, wire, collect)
            sending = asyncio.create_task(_send(call, header, chunks, state, source.close))
        except BaseException:
            source.close()
            raise
        return AsyncStream(call, state, sending)
