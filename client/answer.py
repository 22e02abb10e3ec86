"""Reading a Call's answer, sync or async alike: a header, then pieces, then the status.

The answer of ``Gateway.Call`` is a header (content type, whether partial results
follow), then either chunks of one body or one result per partial result, and its
status with trailing metadata (the request id, and the reason of a failure). A
failure record may come first, while the caller is still sending; it says how the
call ends, and the caller stops sending at once.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from client.exceptions import DcfError, InternalError
from client.result import AnswerHeader
from protos.dcf.v1 import dcf_pb2

_JSON_TYPES = ("application/json", "application/x-ndjson")


def is_json(content_type: str) -> bool:
    bare = content_type.split(";", 1)[0].strip()
    return bare in _JSON_TYPES or bare.endswith("+json")


class UploadState:
    """What the reading side and the sending side of one call tell each other.

    ``error`` is an exception the caller's input raised while being sent: the call is
    cancelled and the reading side raises that exception rather than CANCELLED.
    ``stopped`` is set once the answer says the call failed: nothing more is sent.
    """

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.stopped = threading.Event()


class Answer:
    """The bookkeeping of one answer; subclasses read its messages (sync or async)."""

    def __init__(self, upload: UploadState) -> None:
        self._upload = upload
        self._header: AnswerHeader | None = None
        self._failure: dcf_pb2.CallFailure | None = None
        self.request_id: str | None = None
        """The id the gateway logged the call under; known once the answer has ended."""

    @property
    def content_type(self) -> str | None:
        """The answer's content type; None until its header has arrived."""
        return self._header.content_type if self._header else None

    @property
    def partial_results(self) -> bool | None:
        """Whether each piece is one whole result; None until the header has arrived."""
        return self._header.partial_results if self._header else None

    def _take(self, response: dcf_pb2.CallResponse) -> bytes | None:
        """A response's piece of the answer, or None for a header or a failure record."""
        kind = response.WhichOneof("kind")
        if kind == "header":
            self._header = AnswerHeader(
                response.header.content_type, response.header.partial_results
            )
            return None
        if kind == "failure":
            self._failure = response.failure
            self._upload.stopped.set()
            return None
        if self._header is None:
            raise self._protocol_error(f"a {kind} came before the answer's header")
        return response.chunk if kind == "chunk" else response.result

    def _decode(self, piece: bytes) -> Any:
        """A piece as ``stream`` yields it: bytes, or a partial result parsed from JSON."""
        header = self._header
        if header is not None and header.partial_results and is_json(header.content_type):
            return json.loads(piece)
        return piece

    def _no_header(self) -> DcfError:
        return self._protocol_error("the call ended without an answer header")

    def _protocol_error(self, what: str) -> DcfError:
        return InternalError("INTERNAL", f"malformed answer from the gateway: {what}")
