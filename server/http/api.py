"""The HTTP API's handlers: one POST becomes one ``dcf.v1.Gateway/Call``.

The request body goes up in chunks as it arrives and the answer comes down as it
is produced, so neither is ever held whole. A function with partial results
(ssd-video) answers ``application/x-ndjson``, one line per result, sent the moment
it arrives.

The HTTP status is decided before the response starts: the front waits for the
gateway's header and the answer's first piece (or the end, or an error), so a
call that fails early gets a real status and a JSON body
``{"code": "NOT_FOUND", "reason": "NOT_FOUND", "message": "..."}``, its status from
the error's reason by the one table of handlers/errors.py. A failure after the
answer has begun ends an NDJSON answer with one line
``{"error": {"code": ..., "reason": ..., "message": ...}}``; any other answer is cut
off without its final chunk, so no client can take a truncated body for a whole one.
A client that goes away cancels the call.

``Authorization`` and ``X-Request-Id`` are passed to the gateway as gRPC metadata
(a request id is made when the client sends none, and returned either way); gRPC
metadata is printable ASCII, so any other value is refused with 400 here rather
than failing inside grpcio. ``X-Dcf-Timeout: SECONDS`` sets the call's deadline; a
value past ``TIMEOUT_CEILING_SECONDS`` is taken as the ceiling (the gateway may
lower it further), and one that is not a positive number is 400.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections.abc import Mapping
from typing import Any, cast

import grpc
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from handlers.errors import RETRY_AFTER_SECONDS, http_status, reason_for
from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from server.rpc import status as errors
from server.rpc.callinfo import loggable
from server.rpc.framing import read_response, send_call
from server.telemetry import tracing

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
TIMEOUT_HEADER = "x-dcf-timeout"
REQUEST_ID = "x-request-id"
CALL_ROUTE = "POST /v1/functions/{name}"  # the call's span name in its trace

# The longest deadline a caller may ask for with X-Dcf-Timeout; more is taken as this.
TIMEOUT_CEILING_SECONDS = 3600.0
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    reason: str = "",
) -> JSONResponse:
    """``{"code", "reason", "message"}`` with ``status``; the front's own refusals and
    the gateway's alike."""
    if not reason:  # the front's own refusals: a gRPC status's reason, else the code itself
        reason = reason_for(code) if code in grpc.StatusCode.__members__ else code
    body = {"code": code, "reason": reason, "message": message}
    return JSONResponse(body, status, headers=dict(headers or {}))


def _error_json(exc: errors.CallError) -> dict[str, str]:
    return {"code": exc.code.name, "reason": exc.reason, "message": exc.message}


def call_error_response(
    exc: errors.CallError, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The answer for a call that failed before its answer began: the status from the
    one table (handlers/errors.py), by the error's reason."""
    status = http_status(exc.reason)
    extra = dict(headers or {})
    if status == 429:
        extra["retry-after"] = str(RETRY_AFTER_SECONDS)
    return error_response(status, exc.code.name, exc.message, extra, exc.reason)


def _ascii_header(request: Request, name: str, shown: str) -> str | None:
    """Header ``name``, which becomes gRPC metadata: printable ASCII, or INVALID_ARGUMENT."""
    value = request.headers.get(name)
    if value is not None and not all(" " <= char <= "~" for char in value):
        raise errors.CallError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"header {shown}: only printable ASCII is allowed",
        )
    return value


def auth_metadata(request: Request) -> list[tuple[str, str]]:
    auth = _ascii_header(request, "authorization", "Authorization")
    return [("authorization", auth)] if auth else []


def call_metadata(request: Request) -> tuple[list[tuple[str, str]], str]:
    """The call's metadata, with a request id: the client's own, else a new one."""
    given = _ascii_header(request, REQUEST_ID, "X-Request-Id")
    request_id = (given or uuid.uuid4().hex[:16])[:64]
    return [*auth_metadata(request), (REQUEST_ID, request_id)], request_id


def timeout_of(request: Request) -> float | None:
    """The call's deadline in seconds, at most the ceiling; None: the caller gave none."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if math.isnan(seconds) or seconds <= 0:
        raise errors.CallError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"header X-Dcf-Timeout: expected a number of seconds > 0, got {raw[:40]!r}",
        )
    return min(seconds, TIMEOUT_CEILING_SECONDS)


def _params(request: Request) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key in params:
            raise errors.CallError(
                grpc.StatusCode.INVALID_ARGUMENT, f"param {key} is given more than once"
            )
        params[key] = value
    return params


class Relay:
    """One HTTP request relayed as one gRPC Call: the body goes up, responses come down."""

    def __init__(
        self,
        call: grpc.aio.StreamStreamCall[bytes, dcf_pb2.CallResponse],
        request: Request,
        name: str,
        trace: tracing.Span = tracing.NOOP,
    ) -> None:
        self.call = call
        self.name = name
        self.trace = trace  # the call's span here, ended with the relay
        self.client_gone = False
        self._request = request
        self._upload: asyncio.Task[None] | None = None

    def start(self, header: dcf_pb2.CallHeader) -> None:
        self._upload = asyncio.create_task(self._send(header))

    async def _send(self, header: dcf_pb2.CallHeader) -> None:
        """Stream the body up as it arrives; then watch for the client going away."""
        call = self.call
        try:
            await send_call(call, header, self._request.stream())
        except ClientDisconnect:
            self._gone()
            return
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            # The call has ended; its status arrives on the response side.
            return
        # The whole body is in; the next message is the client's disconnect, either
        # when it goes away early or once the response is complete.
        while (await self._request.receive())["type"] != "http.disconnect":
            pass
        self._gone()

    def _gone(self) -> None:
        if not self.call.done():
            self.client_gone = True
            log.info("HTTP client went away: cancelling its call to %s", self.name)
            self.call.cancel()

    async def next(self) -> dcf_pb2.CallResponse | memoryview | None:
        """The next response, None at the end; raises CallError with the call's status.

        A chunk of the answer comes as a view of its message, undecoded, as the gateway
        passes the worker's on (framing ``read_response``); anything else decoded."""
        try:
            response = await self.call.read()
        except grpc.aio.AioRpcError as exc:
            raise await errors.upstream_error(self.call, exc) from None
        except (asyncio.CancelledError, asyncio.InvalidStateError):
            # grpcio raises CancelledError from a call cancelled locally (the client
            # went away); only a cancellation of this task itself goes on as one.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise errors.CallError(grpc.StatusCode.CANCELLED, "the call was cancelled") from None
        if response is grpc.aio.EOF:
            return None
        message = read_response(cast(bytes, response), self.name, "gateway")
        if isinstance(message, memoryview):
            return message
        if message.WhichOneof("kind") == "failure":
            raise errors.failure_error(message.failure)
        return message

    async def close(self) -> None:
        self.call.cancel()
        if self._upload is not None:
            self._upload.cancel()
            await asyncio.gather(self._upload, return_exceptions=True)
        self.trace.end()


class RelayResponse(Response):
    """The answer of a call whose header (and first piece) have arrived, streamed as it comes."""

    def __init__(
        self,
        relay: Relay,
        header: dcf_pb2.ResponseHeader,
        first: dcf_pb2.CallResponse | memoryview | None,
        headers: Mapping[str, str],
    ) -> None:
        self.relay = relay
        self.partial = header.partial_results
        self.first = first
        self.status_code = 200
        self.media_type = (
            NDJSON if self.partial else header.content_type or "application/octet-stream"
        )
        self.background = None
        self.init_headers(
            {"cache-control": "no-store", "x-content-type-options": "nosniff", **headers}
        )
        if self.partial:
            self.headers["x-accel-buffering"] = "no"  # proxies: pass each line on at once

    def _piece(self, response: dcf_pb2.CallResponse | memoryview) -> bytes:
        if isinstance(response, memoryview):
            return bytes(response)
        if self.partial:
            return response.result.rstrip(b"\r\n") + b"\n"
        return response.chunk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette's StreamingResponse would read ``receive`` to watch for a
        # disconnect while the body may still be coming in; Relay does that instead.
        try:
            whole = await self._stream(send)
        finally:
            await self.relay.close()
        if whole and not self.relay.client_gone:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream(self, send: Send) -> bool:
        """Send the answer as it comes; False if it must be cut off instead of ended."""
        relay = self.relay
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            response = self.first
            while response is not None:
                if not relay.client_gone:
                    body = self._piece(response)
                    if body:
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                response = await relay.next()
        except errors.CallError as exc:
            if relay.client_gone:
                return False
            log.warning(
                "call to %s failed after its answer began: %s: %s",
                relay.name,
                exc.code.name,
                exc.message,
            )
            if not self.partial:
                return False  # the client sees an incomplete body, never a short one
            line = {"error": _error_json(exc)}
            await send(
                {
                    "type": "http.response.body",
                    "body": json.dumps(line).encode() + b"\n",
                    "more_body": True,
                }
            )
        return True


async def call_function(request: Request) -> Response:
    name = request.path_params["name"]
    if request.method != "POST":
        return error_response(
            405,
            "METHOD_NOT_ALLOWED",
            f"call a function with POST /v1/functions/{name}; GET /v1/functions lists them",
            {"allow": "POST"},
        )
    try:
        params = _params(request)
        timeout = timeout_of(request)
        metadata, request_id = call_metadata(request)
    except errors.CallError as exc:
        return call_error_response(exc)
    trace = tracing.server_span(CALL_ROUTE, request.headers, request_id, function=loggable(name))
    call = request.app.state.gateway_call(timeout=timeout, metadata=[*metadata, *trace.headers()])
    relay = Relay(call, request, name, trace)
    header = dcf_pb2.CallHeader(function=name)
    header.params.update(params)
    relay.start(header)
    try:
        # Decide the status: wait for the header and the first piece of the answer.
        first = await relay.next()
        if not isinstance(first, dcf_pb2.CallResponse) or first.WhichOneof("kind") != "header":
            raise errors.CallError(
                grpc.StatusCode.INTERNAL, f"{name}: the gateway answered without a header"
            )
        head = first.header
        first = await relay.next()
    except errors.CallError as exc:
        trace.end(exc.code.name)
        await relay.close()
        return call_error_response(exc, {REQUEST_ID: request_id})
    except BaseException:
        await relay.close()
        raise
    return RelayResponse(relay, head, first, {REQUEST_ID: request_id})


def _function_json(fn: dcf_pb2.FunctionInfo) -> dict[str, Any]:
    return {
        "name": fn.name,
        "description": fn.description,
        "input_content_type": fn.input_content_type,
        "output_content_type": fn.output_content_type,
        "aliases": list(fn.aliases),
        "params": dict(fn.params),
        "param_specs": [_param_json(spec) for spec in fn.param_specs],
        "max_input_bytes": fn.max_input_bytes,
    }


def _param_json(spec: dcf_pb2.ParamSpec) -> dict[str, Any]:
    """A param as JSON: its bounds only where it has them, its default only if it has one."""
    shown: dict[str, Any] = {"name": spec.name, "type": spec.type, "description": spec.description}
    if spec.default:
        shown["default"] = spec.default
    if spec.HasField("minimum"):
        shown["minimum"] = spec.minimum
    if spec.HasField("maximum"):
        shown["maximum"] = spec.maximum
    if spec.choices:
        shown["choices"] = list(spec.choices)
    return shown


async def list_functions(request: Request) -> Response:
    stub: dcf_pb2_grpc.GatewayStub = request.app.state.gateway
    try:
        metadata = auth_metadata(request)
    except errors.CallError as exc:
        return call_error_response(exc)
    try:
        reply = await stub.ListFunctions(
            dcf_pb2.ListFunctionsRequest(), metadata=metadata, timeout=30
        )
    except grpc.aio.AioRpcError as exc:
        reason = errors.reason_in(exc.trailing_metadata())
        return call_error_response(
            errors.CallError(exc.code(), exc.details() or exc.code().name, reason)
        )
    return JSONResponse(
        [_function_json(fn) for fn in reply.functions], headers={"cache-control": "no-store"}
    )


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        code = "METHOD_NOT_ALLOWED"
        message = f"{request.method} is not allowed on {request.url.path}"
    elif exc.status_code == 404:
        code, message = "NOT_FOUND", f"no such path {request.url.path} (try GET /v1/functions)"
    else:
        code, message = "INVALID_ARGUMENT" if exc.status_code < 500 else "INTERNAL", str(exc.detail)
    return error_response(exc.status_code, code, message, exc.headers)
