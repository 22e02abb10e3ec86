"""``Client``: call dcf functions from a Python program, over one gRPC channel.

    from client import Client

    with Client("127.0.0.1:50051") as dcf:
        boxes = dcf.call("ssd", Path("photo.jpg"), threshold=0.4).json()
        for frame in dcf.stream("ssd-video", Path("clip.mp4")):
            print(frame)

Every call is a ``dcf.v1.Gateway/Call``: the input goes up in chunks while the answer
comes down, so neither is ever held whole by the library (``call`` keeps the answer,
which is what it returns; ``stream`` keeps nothing). The sending runs on gRPC's own
thread, the reading on the caller's.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.answer import Answer, UploadState
from client.inputs import Data, ParamValue, chunks_of, wire_params
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


class _Upload:
    """The request stream of one call, which gRPC's own thread reads and sends.

    An exception from the caller's input is kept in ``state.error`` and the call is
    cancelled, so that the caller's thread raises it rather than gRPC logging it; a
    call whose answer announced its failure stops taking input.
    """

    def __init__(self, header: dcf_pb2.CallRequest, chunks: Iterator[bytes]) -> None:
        self.state = UploadState()
        self._header = header
        self._chunks = chunks
        self._call: grpc.Future | None = None
        self._attached = threading.Event()

    def attach(self, call: grpc.Future) -> None:
        self._call = call
        self._attached.set()

    def requests(self) -> Iterator[dcf_pb2.CallRequest]:
        yield self._header
        try:
            for chunk in self._chunks:
                if self.state.stopped.is_set():
                    return
                yield dcf_pb2.CallRequest(chunk=chunk)
        except Exception as exc:  # noqa: BLE001 - the caller's input failed: theirs to see
            self.state.error = exc
            self._attached.wait()
            if self._call is not None:
                self._call.cancel()


def _release(call: grpc.Future, close_source: Callable[[], None]) -> None:
    """End a call that may still run and close its input: on close, or once unreachable."""
    call.cancel()
    close_source()


class Stream(Answer):
    """A function's answer as it comes, from ``Client.stream``.

    Iterate it for the pieces: bytes as they arrive, or, for a function with partial
    results (ssd-video), one object per result, parsed from its JSON. ``raw()``
    yields every piece as bytes, exactly as sent. ``header()`` waits for the
    answer's content type. Leaving a ``with`` block, ``close()``, or dropping the
    stream before its end cancels the call, up to the function's worker.
    """

    def __init__(
        self,
        responses: Any,  # grpc's response iterator, a grpc.Call and grpc.Future too
        upload: UploadState,
        close_source: Callable[[], None],
    ) -> None:
        super().__init__(upload)
        self._responses = responses
        self._done = False
        self._finalizer = weakref.finalize(self, _release, responses, close_source)

    def header(self) -> AnswerHeader:
        """The answer's content type and kind, waiting for them if need be."""
        while self._header is None:
            response = self._message()
            if response is None:
                raise self._no_header()
            self._take(response)
        return self._header

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        piece = self._piece()
        if piece is None:
            raise StopIteration
        return self._decode(piece)

    def raw(self) -> Iterator[bytes]:
        """The answer's pieces as bytes: chunks of the body, or each partial result."""
        while (piece := self._piece()) is not None:
            yield piece

    def cancel(self) -> None:
        """Cancel the call; reading on raises ``Cancelled``."""
        self._responses.cancel()

    def close(self) -> None:
        """Cancel the call if it is still running, and close the input file it reads."""
        self._finalizer()

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _piece(self) -> bytes | None:
        while (response := self._message()) is not None:
            piece = self._take(response)
            if piece is not None:
                return piece
        if self._header is None:
            raise self._no_header()
        return None

    def _message(self) -> dcf_pb2.CallResponse | None:
        """The next response; None once the call has ended well; raises how it failed."""
        if self._done:
            return None
        try:
            return next(self._responses)
        except StopIteration:
            self._done = True
            self._finish()
            return None
        except grpc.RpcError:
            self._done = True
            error = self._error()
            self.close()
            raise error from None

    def _finish(self) -> None:
        trailing = self._responses.trailing_metadata()
        self.request_id = metadata_value(trailing, REQUEST_ID)
        self.close()
        if self._upload.error is not None:
            raise self._upload.error
        if self._failure is not None:
            raise status_error(grpc.StatusCode.UNKNOWN, None, trailing, self._failure)

    def _error(self) -> BaseException:
        if self._upload.error is not None:
            return self._upload.error
        call = self._responses
        error = status_error(call.code(), call.details(), call.trailing_metadata(), self._failure)
        self.request_id = error.request_id
        return error


class Client:
    """A connection to a dcf gateway: call its functions, list them, check their health.

    ``address`` is the gateway's ``HOST:PORT``. ``token`` is sent as a bearer token to
    a gateway that requires one. ``ca`` (a PEM file's path, or PEM bytes) turns on TLS,
    trusting that certificate authority. ``timeout`` is every call's deadline in
    seconds (None: the function's own ceiling, ``max_call_seconds``).

    One client keeps one channel, reconnecting as needed, and may be used from many
    threads at once; use it as a context manager, or ``close()`` it. Failures raise
    ``DcfError`` subclasses (client/exceptions.py); a missing input file raises
    OSError before any call.
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
        credentials = channel_credentials(ca)
        if credentials is None:
            self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        else:
            self._channel = grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
        self._gateway = dcf_pb2_grpc.GatewayStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def call(self, name: str, data: Data, /, **params: ParamValue) -> Result:
        """Function ``name``'s whole answer to ``data``, with ``params``.

        ``data`` is bytes, a str (sent as UTF-8), a ``pathlib.Path`` (the file), a binary
        file object or an iterable of bytes chunks; files and iterables are streamed in
        1 MiB chunks, never read whole. Params may be str, bool, int or float:
        ``annotate=True`` is sent as ``annotate=true``. A function with partial results
        answers them collected into one JSON document, as dcf.v1 Invoke does.
        """
        with self._start(name, data, params, collect=True) as answer:
            header = answer.header()
            body = b"".join(answer.raw())
        return Result(header.content_type, body, answer.request_id)

    def stream(self, name: str, data: Data, /, **params: ParamValue) -> Stream:
        """Function ``name``'s answer to ``data`` as it comes (see ``Stream``).

        ``data`` and ``params`` are as for ``call``. The call starts at once; iterate
        the stream for bytes pieces, or one parsed object per partial result.
        """
        return self._start(name, data, params, collect=False)

    def list(self) -> builtins.list[FunctionInfo]:
        """The functions the gateway serves, in its order."""
        try:
            reply = self._gateway.ListFunctions(
                dcf_pb2.ListFunctionsRequest(), timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None
        return [FunctionInfo.from_message(fn) for fn in reply.functions]

    def health(self, name: str | None = None) -> bool:
        """Whether function ``name`` (None: the whole gateway) is serving now.

        A function is serving while one of its workers is up; the gateway once every
        local worker answers. ``name`` is a function's own name (its aliases are not
        health services): one the gateway does not know raises ``NotFound``.
        """
        try:
            reply = self._health.Check(
                health_pb2.HealthCheckRequest(service=name or ""), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def close(self) -> None:
        """Close the channel; calls still running are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self, name: str, data: Data, params: dict[str, ParamValue], collect: bool) -> Stream:
        wire = wire_params(params)
        source = contextlib.ExitStack()
        chunks = source.enter_context(chunks_of(data))
        upload = _Upload(header_request(name, wire, collect), chunks)
        try:
            responses = self._gateway.Call(
                upload.requests(), timeout=self.timeout, metadata=self._metadata
            )
        except BaseException:
            source.close()
            raise
        upload.attach(responses)
        return Stream(responses, upload.state, source.close)
