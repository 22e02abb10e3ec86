"""What the library hands back: a whole answer, a function's description, an answer's head."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protos.dcf.v1 import dcf_pb2


@dataclass(frozen=True)
class Result:
    """A function's whole answer, as ``Client.call`` returns it.

    ``body`` is the answer's bytes exactly as the function produced them; a function
    with partial results (ssd-video) answers one collected JSON document here, the
    same bytes dcf.v1 Invoke answers. ``request_id`` is the id the gateway logged the
    call under, to quote when asking about it.
    """

    content_type: str
    body: bytes
    request_id: str | None = None

    @property
    def text(self) -> str:
        """The body as text (UTF-8, which every text answer of dcf is in)."""
        return self.body.decode("utf-8")

    def json(self) -> Any:
        """The body parsed as JSON (ssd's boxes, ssd-video's document)."""
        return json.loads(self.body)


@dataclass(frozen=True)
class AnswerHeader:
    """What a streamed answer is, known before its first piece arrives.

    ``partial_results`` is true when each piece is one complete result (ssd-video's
    frames, one JSON document each) rather than the next piece of one body.
    """

    content_type: str
    partial_results: bool


@dataclass(frozen=True)
class ParamInfo:
    """One param a function takes, as it declares it.

    Params travel as strings; ``type`` ("number", "integer", "boolean" or "string"),
    ``minimum``/``maximum`` and ``choices`` say which strings it accepts, ``default``
    what it takes when the call gives none ("" when it declares none).
    """

    name: str
    type: str
    description: str
    default: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    @classmethod
    def from_message(cls, message: dcf_pb2.ParamSpec) -> ParamInfo:
        return cls(
            name=message.name,
            type=message.type,
            description=message.description,
            default=message.default,
            minimum=message.minimum if message.HasField("minimum") else None,
            maximum=message.maximum if message.HasField("maximum") else None,
            choices=tuple(message.choices),
        )


@dataclass(frozen=True)
class FunctionInfo:
    """One function a gateway serves, as ``Client.list`` describes it.

    ``params`` maps each param the function takes to what it does, in words, and
    ``param_specs`` describes the same params typed, in the function's order; a call
    with any other param is refused (``InvalidInput``). ``max_input_bytes`` is the
    largest input it takes (0: no limit); ``aliases`` are other names it answers to.
    """

    name: str
    description: str
    input_content_type: str
    output_content_type: str
    aliases: tuple[str, ...] = ()
    max_input_bytes: int = 0
    params: Mapping[str, str] = field(default_factory=dict)
    param_specs: tuple[ParamInfo, ...] = ()

    @classmethod
    def from_message(cls, message: dcf_pb2.FunctionInfo) -> FunctionInfo:
        return cls(
            name=message.name,
            description=message.description,
            input_content_type=message.input_content_type,
            output_content_type=message.output_content_type,
            aliases=tuple(message.aliases),
            max_input_bytes=message.max_input_bytes,
            params=dict(message.params),
            param_specs=tuple(ParamInfo.from_message(spec) for spec in message.param_specs),
        )
