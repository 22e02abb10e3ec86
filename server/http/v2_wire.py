"""Open Inference over HTTP: the REST bodies, to and from the gRPC messages. Pure, no I/O.

The front answers /v2 by calling the gateway's inference.GRPCInferenceService, so an
infer body becomes a ModelInferRequest and the ModelInferResponse becomes the answer.
What a model is (one BYTES input ``INPUT``, one BYTES output ``OUTPUT``, shape [1],
params from the parameters) is the gRPC adapter's, checked by the gateway with
server/oip/codec.py; here is only what HTTP adds. A body comes in one of the forms
Triton documents:

- JSON: the request object alone. A BYTES element is a string, taken as its UTF-8
  bytes, or as base64 when the tensor's parameters say ``"content_type": "base64"``
  (MLServer's convention).
- Binary tensor data: ``Inference-Header-Content-Length: N`` says the body's first N
  bytes are the JSON object; each input whose parameters give ``binary_data_size: S``
  takes the next S bytes, a BYTES tensor's elements each a 4-byte little-endian
  length and the bytes (what ``tritonclient.http`` sends). N = 0 is Triton's raw
  binary request: no JSON at all, the whole body is the one input's element.

The answer takes the form asked for: binary for an output requested with
``"binary_data": true``, or for all outputs when the request's parameters say
``"binary_data_output": true`` (and always for a raw binary request); JSON
otherwise, each element a string when it is UTF-8 text, else base64 with
``"content_type": "base64"`` in the output's parameters (or always base64, when the
requested output's parameters ask for that). Whatever breaks these rules raises
InvalidInput with a one-line reason.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from handlers.errors import InvalidInput
from protos.inference import grpc_predict_v2_pb2 as pb
from server.oip import codec

HEADER_LENGTH = "inference-header-content-length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
BASE64 = "base64"
# Parameters this module reads from a tensor or the request; the rest go to the function.
BINARY_SIZE = "binary_data_size"
BINARY_OUTPUT = "binary_data_output"
BINARY = "binary_data"
ENCODING = "content_type"


@dataclass(frozen=True)
class OutputForm:
    """How one output is answered: as binary tensor data, or in the JSON (base64 forced or not)."""

    binary: bool = False
    base64: bool = False


@dataclass(frozen=True)
class AnswerForm:
    """The form of each output the request named, and of the others."""

    default: OutputForm = OutputForm()
    named: Mapping[str, OutputForm] = field(default_factory=dict)

    def of(self, name: str) -> OutputForm:
        return self.named.get(name, self.default)


# ---------------------------------------------------------------- the request


def header_length(value: str | None) -> int | None:
    """Inference-Header-Content-Length as a number of bytes; None when absent."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or len(text) > 12:
        raise InvalidInput(
            "header Inference-Header-Content-Length: expected a number of bytes, "
            f"got {value[:40]!r}"
        )
    return int(text)


def infer_request(
    model: str, version: str, body: bytearray | bytes, json_bytes: int | None
) -> tuple[pb.ModelInferRequest, AnswerForm]:
    """The ModelInferRequest a body stands for, and the form its answer takes.

    ``json_bytes``: the Inference-Header-Content-Length (None: the body is all JSON).
    """
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    if json_bytes == 0:
        # Triton's raw binary request: the body is the one input's one element.
        tensor = request.inputs.add(name=codec.INPUT, datatype=codec.DATATYPE, shape=codec.SHAPE)
        tensor.contents.bytes_contents.append(bytes(body))
        return request, AnswerForm(OutputForm(binary=True))
    if json_bytes is not None and json_bytes > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length is {json_bytes}, but the body has {len(body)} bytes"
        )
    view = memoryview(body)
    document = _json_object(body if json_bytes is None else view[:json_bytes])
    binary = view[len(body) :] if json_bytes is None else view[json_bytes:]
    request.id = _text(document, "id", "the request", "")
    parameters = dict(_object(document.get("parameters"), "parameters"))
    binary_output = _flag(parameters.pop(BINARY_OUTPUT, None), f"parameters.{BINARY_OUTPUT}")
    _set_parameters(request.parameters, parameters, "parameters")
    _add_inputs(request, document.get("inputs"), binary, json_bytes is not None)
    named = _add_outputs(request, document.get("outputs"), binary_output)
    return request, AnswerForm(OutputForm(binary=bool(binary_output)), named)


def _json_object(raw: bytes | bytearray | memoryview) -> dict[str, Any]:
    try:
        document = json.loads(bytes(raw) if isinstance(raw, memoryview) else raw)
    except UnicodeDecodeError:
        raise InvalidInput("the request's JSON is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"the request is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except ValueError as exc:  # a number past Python's digit limit, and the like
        raise InvalidInput(f"the request's JSON cannot be read: {str(exc)[:100]}") from None
    except RecursionError:
        raise InvalidInput("the request's JSON is nested too deeply") from None
    if not isinstance(document, dict):
        raise InvalidInput("the request must be a JSON object with its inputs")
    return document


def _add_inputs(
    request: pb.ModelInferRequest, inputs: object, binary: memoryview, has_binary: bool
) -> None:
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inputs: expected a list of input tensors")
    offset = 0
    parts: list[memoryview] = []
    for index, tensor in enumerate(inputs):
        where = f"inputs[{index}]"
        if not isinstance(tensor, dict):
            raise InvalidInput(f"{where}: expected an object")
        entry = request.inputs.add(
            name=_text(tensor, "name", where),
            datatype=_text(tensor, "datatype", where),
            shape=_shape(tensor.get("shape"), where),
        )
        parameters = dict(_object(tensor.get("parameters"), f"{where}.parameters"))
        size = parameters.pop(BINARY_SIZE, None)
        base64_data = _encoding(parameters.pop(ENCODING, None), f"{where}.parameters")
        _set_parameters(entry.parameters, parameters, f"{where}.parameters")
        if size is None:
            if "data" not in tensor:
                raise InvalidInput(f"{where}: no data, and no {BINARY_SIZE} in its parameters")
            for element in _elements(tensor["data"], f"{where}.data"):
                entry.contents.bytes_contents.append(_element(element, base64_data, where))
            continue
        if "data" in tensor:
            raise InvalidInput(f"{where}: give its data or {BINARY_SIZE}, not both")
        if not has_binary:
            raise InvalidInput(
                f"{where}: {BINARY_SIZE} needs the header Inference-Header-Content-Length"
            )
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"{where}.parameters.{BINARY_SIZE}: expected a number of bytes")
        if size > len(binary) - offset:
            left = len(binary) - offset
            raise InvalidInput(
                f"{where}: {BINARY_SIZE} is {size}, {left} bytes of binary data left"
            )
        part = binary[offset : offset + size]
        if entry.datatype == codec.DATATYPE:
            codec.unpack_bytes(part, f"{where}'s binary data")  # its framing, named here
        parts.append(part)
        offset += size
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes follow the inputs' binary data")
    if parts and len(parts) != len(inputs):
        # gRPC's raw_input_contents holds every input or none.
        raise InvalidInput("give every input as binary data, or none")
    for part in parts:
        request.raw_input_contents.append(bytes(part))


def _add_outputs(
    request: pb.ModelInferRequest, outputs: object, binary_output: bool | None
) -> dict[str, OutputForm]:
    if outputs is None:
        return {}
    if not isinstance(outputs, list):
        raise InvalidInput("outputs: expected a list of requested outputs")
    named = {}
    for index, output in enumerate(outputs):
        where = f"outputs[{index}]"
        if not isinstance(output, dict):
            raise InvalidInput(f"{where}: expected an object")
        name = _text(output, "name", where)
        parameters = dict(_object(output.get("parameters"), f"{where}.parameters"))
        binary = _flag(parameters.pop(BINARY, None), f"{where}.parameters.{BINARY}")
        base64_data = _encoding(parameters.pop(ENCODING, None), f"{where}.parameters")
        entry = request.outputs.add(name=name)
        _set_parameters(entry.parameters, parameters, f"{where}.parameters")
        chosen = binary if binary is not None else binary_output
        named[name] = OutputForm(binary=bool(chosen), base64=base64_data)
    return named


def _set_parameters(
    target: Any, parameters: Mapping[str, object], where: str
) -> None:  # target: a protobuf map of InferParameter
    for name, value in parameters.items():
        try:
            target[name].CopyFrom(codec.parameter_of(name, value))
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc.message}") from None


def _object(value: object, where: str) -> Mapping[str, object]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: expected an object")
    return value


def _text(document: Mapping[str, object], key: str, where: str, default: str | None = None) -> str:
    value = document.get(key, default)
    if value is None:
        raise InvalidInput(f"{where}: no {key!r}")
    if not isinstance(value, str):
        raise InvalidInput(f"{where}: {key!r} must be a string")
    return value


def _flag(value: object, where: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise InvalidInput(f"{where}: expected true or false")
    return value


def _encoding(value: object, where: str) -> bool:
    """Whether a tensor's parameters say its BYTES elements are base64."""
    if value is None:
        return False
    if value != BASE64:
        raise InvalidInput(f"{where}.{ENCODING}: only {BASE64!r} is understood, got {value!r}")
    return True


def _shape(value: object, where: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise InvalidInput(f"{where}: 'shape' must be a list of whole numbers")
    if any(not -(2**63) <= d < 2**63 for d in value):
        raise InvalidInput(f"{where}: a dimension of 'shape' is out of the 64-bit range")
    return value


def _elements(data: object, where: str) -> Iterator[object]:
    """A tensor's data in row-major order: nested lists flattened."""
    if not isinstance(data, list):
        yield data
        return
    stack = [iter(data)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            yield item


_END = object()


def _element(value: object, base64_data: bool, where: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"{where}: a BYTES element must be a string")
    if not base64_data:
        try:
            return value.encode()
        except UnicodeEncodeError:
            raise InvalidInput(f"{where}: an element is not valid UTF-8 text") from None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where}: an element is not valid base64") from None


# ---------------------------------------------------------------- the answer


def infer_answer(response: pb.ModelInferResponse, form: AnswerForm) -> tuple[bytes, dict[str, str]]:
    """The answer's body and its headers (content type, and the JSON's length when
    binary data follows it)."""
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = _parameters_json(response.parameters)
    outputs = []
    binaries: list[bytes] = []
    raw = len(response.raw_output_contents) > 0
    for index, output in enumerate(response.outputs):
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        parameters = _parameters_json(output.parameters)
        chosen = form.of(output.name)
        if chosen.binary:
            data = (
                response.raw_output_contents[index]
                if raw
                else codec.pack_bytes(output.contents.bytes_contents)
            )
            parameters[BINARY_SIZE] = len(data)
            binaries.append(data)
        else:
            elements = (
                codec.unpack_bytes(response.raw_output_contents[index], "raw_output_contents")
                if raw
                else output.contents.bytes_contents
            )
            entry["data"], encoded = _json_elements(elements, chosen.base64)
            if encoded:
                parameters[ENCODING] = BASE64
        if parameters:
            entry["parameters"] = parameters
        outputs.append(entry)
    document["outputs"] = outputs
    head = json.dumps(document, separators=(",", ":")).encode()
    if not binaries:
        return head, {"content-type": JSON_TYPE}
    headers = {"content-type": BINARY_TYPE, HEADER_LENGTH: str(len(head))}
    return b"".join([head, *binaries]), headers


def _json_elements(elements: Any, force_base64: bool) -> tuple[list[str], bool]:
    """BYTES elements as JSON strings: UTF-8 text as it is, else (or if forced) base64."""
    if not force_base64:
        try:
            return [bytes(element).decode() for element in elements], False
        except UnicodeDecodeError:
            pass
    return [base64.b64encode(element).decode() for element in elements], True


def _parameters_json(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {name: codec.parameter_value(value) for name, value in sorted(parameters.items())}


# ---------------------------------------------------------------- metadata


def model_metadata(reply: pb.ModelMetadataResponse) -> dict[str, Any]:
    """A model's metadata as the v2 REST API gives it (shapes as numbers, not strings)."""

    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": reply.name,
        "versions": list(reply.versions),
        "platform": reply.platform,
        "inputs": tensors(reply.inputs),
        "outputs": tensors(reply.outputs),
    }


def server_metadata(reply: pb.ServerMetadataResponse, extensions: list[str]) -> dict[str, Any]:
    """The server's metadata, with the extensions the HTTP front adds."""
    return {
        "name": reply.name,
        "version": reply.version,
        "extensions": sorted({*reply.extensions, *extensions}),
    }
