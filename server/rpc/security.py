"""TLS credentials and bearer tokens.

TLS: a server speaks TLS when it has a certificate and key (DCF_TLS_CERT,
DCF_TLS_KEY) and asks callers for a certificate too when it has a client CA
(DCF_TLS_CLIENT_CA): mutual TLS, as between the gateway and its workers. The
gateway reaches its workers over TLS when it knows the CA they are signed by
(DCF_WORKER_CA), presenting its own certificate.

Tokens: when the gateway has tokens (DCF_TOKENS or DCF_TOKENS_FILE), every RPC but
health checks must carry ``authorization: Bearer <token>`` with one of them.

One door: workers never see the callers' tokens. They take calls only with the
internal worker token (DCF_WORKER_TOKEN), which the gateway sends, or over mutual
TLS; so a worker's port cannot be used to skip the gateway's checks. Refused
tokens are counted, and logged at a bounded rate, so that a guessing caller is
seen without flooding the log.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import grpc

from server.config import ConfigError, Settings
from server.rpc.status import CallError, fail_stream

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
# Streaming calls whose callers may still be writing when refused (see errors.fail_stream).
CALL_METHODS = ("/dcf.v1.Gateway/Call", "/dcf.v1.Worker/Call")
# At most one log line about refused tokens per this many seconds.
REFUSAL_LOG_SECONDS = 10.0


class RefusalLog:
    """Counts refused tokens and says so in the log at most once per ``interval``."""

    def __init__(
        self,
        role: str,
        counted: Callable[[str], None] | None = None,
        interval: float = REFUSAL_LOG_SECONDS,
    ) -> None:
        self._role = role
        self._counted = counted
        self._interval = interval
        self._unlogged = 0
        self._last_logged = -interval

    def __call__(self, reason: str) -> None:
        if self._counted is not None:
            self._counted(reason)
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_logged >= self._interval:
            log.warning(
                "%s refused %d call(s) for their token since the last such line (latest: %s)",
                self._role,
                self._unlogged,
                reason,
            )
            self._unlogged = 0
            self._last_logged = now


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS for a server, or None for plaintext."""
    if not (settings.tls_cert or settings.tls_key):
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ConfigError("TLS needs both DCF_TLS_CERT and DCF_TLS_KEY")
    pair = (_read(settings.tls_key, "TLS key"), _read(settings.tls_cert, "TLS certificate"))
    client_ca = _read(settings.tls_client_ca, "client CA") if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def worker_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """TLS from the gateway to its workers, or None for plaintext."""
    if not settings.worker_ca:
        return None
    key = _read(settings.tls_key, "TLS key") if settings.tls_key else None
    cert = _read(settings.tls_cert, "TLS certificate") if settings.tls_cert else None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.worker_ca, "worker CA"),
        private_key=key,
        certificate_chain=cert,
    )


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a known bearer token: UNAUTHENTICATED when missing,
    PERMISSION_DENIED when wrong. Health checks stay open for probes."""

    def __init__(self, tokens: Iterable[str], refused: Callable[[str], None] | None = None) -> None:
        self._tokens = [t.encode() for t in tokens]
        self._refused = refused

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        refusal = self._refusal(details.invocation_metadata or ())
        if refusal is None:
            return handler
        if self._refused is not None:
            self._refused(refusal[0].name)
        return _refusing(handler, *refusal, announce=details.method in CALL_METHODS)

    def _refusal(self, metadata) -> tuple[grpc.StatusCode, str] | None:
        given = next((value for key, value in metadata if key == "authorization"), None)
        if not given:
            return grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required"
        if not isinstance(given, str):
            return grpc.StatusCode.UNAUTHENTICATED, "expected 'authorization: Bearer <token>'"
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return grpc.StatusCode.UNAUTHENTICATED, "expected 'authorization: Bearer <token>'"
        candidate = token.strip().encode("utf-8", "surrogateescape")
        if not any(hmac.compare_digest(candidate, known) for known in self._tokens):
            return grpc.StatusCode.PERMISSION_DENIED, "the token is not valid"
        return None


def _refusing(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str, announce: bool
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that ends the call with ``code``.

    ``announce``: a dcf.v1 Call stream, whose caller may still be writing, gets the
    failure record first (see errors.fail_stream).
    """

    async def unary(request, context):
        await context.abort(code, message)

    async def streaming(request, context):
        if announce:
            async for response in fail_stream(
                context, CallError(code, message), input_pending=True
            ):
                yield response
        await context.abort(code, message)

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    behaviour = streaming if handler.response_streaming else unary
    return make(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
