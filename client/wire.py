"""What the sync and async clients share about the wire: channels, metadata, statuses.

The one contract is dcf.v1 (protos/dcf/v1/dcf.proto): ``Gateway.Call`` for calls, so
that inputs of any size stream; ``ListFunctions``; grpc.health.v1 for health. The
request id and the machine-readable reason of a failure travel in the trailing
metadata, where the gateway puts them whatever the outcome.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc

from client.exceptions import DcfError, error_for
from protos.dcf.v1 import dcf_pb2

DEFAULT_ADDRESS = "127.0.0.1:50051"
REQUEST_ID = "x-request-id"
REASON = "dcf-reason"
# Answers come in chunks of the server's chunk_bytes (1 MiB by default) and results of
# a frame's size: this only keeps a server configured with bigger chunks readable.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 1 << 28)]

Metadata = tuple[tuple[str, str], ...]
CertificateAuthority = str | bytes | os.PathLike[str]


def channel_credentials(ca: CertificateAuthority | None) -> grpc.ChannelCredentials | None:
    """TLS credentials trusting ``ca`` (PEM bytes, or a PEM file's path); None: plaintext.

    Raises OSError when the file cannot be read.
    """
    if ca is None:
        return None
    pem = ca if isinstance(ca, bytes) else Path(ca).read_bytes()
    return grpc.ssl_channel_credentials(root_certificates=pem)


def call_metadata(token: str | None) -> Metadata:
    return (("authorization", f"Bearer {token}"),) if token else ()


def header_request(name: str, params: Mapping[str, str], collect: bool) -> dcf_pb2.CallRequest:
    header = dcf_pb2.CallHeader(function=name, collect=collect)
    header.params.update(params)
    return dcf_pb2.CallRequest(header=header)


def metadata_value(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str | None:
    """The first value of ``key`` in ``metadata`` (None when it has none)."""
    for name, value in metadata or ():
        if name == key:
            return value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return None


def status_error(
    code: grpc.StatusCode,
    details: str | None,
    trailing: Iterable[tuple[str, str | bytes]] | None,
    failure: dcf_pb2.CallFailure | None = None,
) -> DcfError:
    """The exception for a call that ended with ``code``.

    A failure record, when the call sent one, is the server's own word on the outcome
    and is preferred to the status (which, for a caller still writing, grpcio may
    have replaced with one of its own).
    """
    request_id = metadata_value(trailing, REQUEST_ID)
    reason = metadata_value(trailing, REASON)
    if failure is not None:
        reason = failure.reason or reason
        return error_for(failure.code, failure.message, request_id, reason)
    return error_for(code.name, details or code.name, request_id, reason)


def rpc_error(exc: grpc.RpcError) -> DcfError:
    """The exception for a unary call that failed with ``exc``."""
    if isinstance(exc, grpc.Call | grpc.aio.AioRpcError):
        return status_error(exc.code(), exc.details(), exc.trailing_metadata())
    return error_for("UNKNOWN", str(exc) or "the call failed")
