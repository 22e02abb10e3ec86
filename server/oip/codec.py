"""Open Inference Protocol messages to and from a dcf call: pure functions, no I/O.

A dcf function is a model with one BYTES input ``INPUT`` and one BYTES output
``OUTPUT``, each of shape [1]: the whole input is one element, the whole answer is
one element. A request carries that element either typed, in
``inputs[0].contents.bytes_contents``, or raw, in ``raw_input_contents[0]`` as a
4-byte little-endian length followed by the bytes (what Triton's clients send); the
answer uses the same form. Parameters (the request's and the input tensor's) become
the function's string params. Every rule broken raises InvalidInput with a one-line
reason, which server/rpc/status.py turns into INVALID_ARGUMENT. The HTTP front's
/v2 (server/http/v2_wire.py) shares the mapping and the conversions here: parameters
from JSON values and back, raw BYTES tensors, an answer's one element.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping

from handlers.errors import InvalidInput, NotFound
from protos.inference import grpc_predict_v2_pb2 as pb

INPUT = "INPUT"
OUTPUT = "OUTPUT"
DATATYPE = "BYTES"
SHAPE = (1,)
VERSION = "1"
PLATFORM = "dcf"
CONTENT_TYPE = "content_type"

# Request parameters Triton's clients set for their own server's scheduler; they
# mean nothing to a dcf function, so they are dropped rather than refused.
IGNORED_PARAMS = frozenset({"priority", "timeout", "binary_data_output", "headers"})
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")

_LENGTH = struct.Struct("<I")


def check_version(name: str, version: str) -> None:
    """Every model has the one version "1"; an empty version means it too."""
    if version not in ("", VERSION):
        raise NotFound(f"model {name!r} has no version {version!r} (versions: {VERSION})")


def model_metadata(name: str) -> pb.ModelMetadataResponse:
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=name,
        versions=[VERSION],
        platform=PLATFORM,
        inputs=[tensor(name=INPUT, datatype=DATATYPE, shape=SHAPE)],
        outputs=[tensor(name=OUTPUT, datatype=DATATYPE, shape=SHAPE)],
    )


def param_text(name: str, value: pb.InferParameter) -> str:
    """One parameter as the string a handler's Params getters parse.

    Booleans become "true"/"false"; whole numbers their digits; a double its
    shortest repr ("0.4"), or its digits when it is whole (2.0 -> "2", so that
    integer params accept it too).
    """
    kind = value.WhichOneof("parameter_choice")
    if kind == "string_param":
        return value.string_param
    if kind == "bool_param":
        return "true" if value.bool_param else "false"
    if kind in ("int64_param", "uint64_param"):
        return str(getattr(value, kind))
    if kind == "double_param":
        number = value.double_param
        if math.isfinite(number) and number.is_integer() and abs(number) <= 2**53:
            return str(int(number))
        return repr(number)
    raise InvalidInput(f"parameter {name!r} has no value")


def parameter_of(name: str, value: object) -> pb.InferParameter:
    """A parameter from a JSON value (Open Inference over HTTP): a boolean, a whole
    number, a number or a string; anything else raises InvalidInput."""
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InvalidInput(f"parameter {name!r}: {value} is out of the 64-bit range")
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    if isinstance(value, str):
        return pb.InferParameter(string_param=value)
    shown = "null" if value is None else type(value).__name__
    raise InvalidInput(f"parameter {name!r}: expected a string, number or boolean, got {shown}")


def parameter_value(value: pb.InferParameter) -> bool | int | float | str:
    """A parameter as its JSON value: the inverse of ``parameter_of``."""
    kind = value.WhichOneof("parameter_choice")
    if kind is None:
        return ""
    found: bool | int | float | str = getattr(value, kind)
    return found


def params_of(request: pb.ModelInferRequest) -> dict[str, str]:
    """The function's params: the request's parameters, then the input tensor's.

    A name given in both takes the input tensor's value.
    """
    params: dict[str, str] = {}
    sources: list[Mapping[str, pb.InferParameter]] = [request.parameters]
    sources += [tensor.parameters for tensor in request.inputs]
    for source in sources:
        for name in sorted(source):
            if name in _SHARED_MEMORY:
                raise InvalidInput("shared memory tensors are not supported; send the bytes")
            if name in IGNORED_PARAMS or name.startswith("triton_"):
                continue
            params[name] = param_text(name, source[name])
    return params


def unpack_bytes(
    raw: bytes | bytearray | memoryview, where: str = "raw_input_contents"
) -> list[memoryview]:
    """The elements of a raw BYTES tensor: each a 4-byte little-endian length, then the bytes.

    ``where`` names the tensor in a refusal: the gRPC field, or the HTTP body's part.
    """
    view = memoryview(raw)
    elements = []
    offset = 0
    while offset < len(view):
        if len(view) - offset < _LENGTH.size:
            stray = len(view) - offset
            raise InvalidInput(f"{where}: {stray} stray bytes where a length belongs")
        (size,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if size > len(view) - offset:
            remain = len(view) - offset
            raise InvalidInput(f"{where}: an element's length says {size} bytes, {remain} follow")
        elements.append(view[offset : offset + size])
        offset += size
    return elements


def pack_bytes(elements: Iterable[bytes | memoryview]) -> bytes:
    """A raw BYTES tensor of ``elements``, each prefixed by its 4-byte little-endian length."""
    parts: list[bytes | memoryview] = []
    for element in elements:
        parts.append(_LENGTH.pack(len(element)))
        parts.append(element)
    return b"".join(parts)


def input_of(request: pb.ModelInferRequest) -> tuple[memoryview | bytes, bool]:
    """The request's one input element, and whether it came raw (else typed)."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"expected one input tensor {INPUT!r}, got {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.name != INPUT:
        raise InvalidInput(f"unknown input {tensor.name!r}; the model's input is {INPUT!r}")
    if tensor.datatype != DATATYPE:
        raise InvalidInput(f"input {INPUT} has datatype {DATATYPE}, got {tensor.datatype!r}")
    count = math.prod(tensor.shape)
    if count != 1 or any(d < 1 for d in tensor.shape):
        raise InvalidInput(
            f"input {INPUT} has shape {list(tensor.shape)} ({max(count, 0)} elements); "
            "a dcf model takes one element, the whole input (shape [1])"
        )
    typed = tensor.HasField("contents") and tensor.contents.ByteSize() > 0
    raw = len(request.raw_input_contents) > 0
    if raw and typed:
        raise InvalidInput("give the input either in raw_input_contents or in contents, not both")
    elements: list[memoryview] | list[bytes]
    if raw:
        if len(request.raw_input_contents) != 1:
            raise InvalidInput(
                f"raw_input_contents has {len(request.raw_input_contents)} entries for 1 input"
            )
        elements = unpack_bytes(request.raw_input_contents[0])
    else:
        contents = tensor.contents
        other = [f.name for f, _ in contents.ListFields() if f.name != "bytes_contents"]
        if other:
            raise InvalidInput(f"input {INPUT} is BYTES: use bytes_contents, not {other[0]}")
        elements = list(contents.bytes_contents)
    if len(elements) != 1:
        raise InvalidInput(
            f"input {INPUT} holds {len(elements)} elements; a dcf model takes exactly one"
        )
    return elements[0], raw


def check_outputs(request: pb.ModelInferRequest) -> None:
    """Requested outputs may only name OUTPUT, without parameters."""
    for output in request.outputs:
        if output.name != OUTPUT:
            raise InvalidInput(f"unknown output {output.name!r}; the model's output is {OUTPUT!r}")
        if output.parameters:
            name = sorted(output.parameters)[0]
            raise InvalidInput(f"output parameter {name!r} is not supported")


def infer_response(
    request: pb.ModelInferRequest, content_type: str, body: bytes, raw: bool
) -> pb.ModelInferResponse:
    """The answer, in the form the request used (raw or typed)."""
    response = pb.ModelInferResponse(
        model_name=request.model_name, model_version=VERSION, id=request.id
    )
    response.parameters[CONTENT_TYPE].string_param = content_type
    output = response.outputs.add(name=OUTPUT, datatype=DATATYPE, shape=SHAPE)
    if raw:
        response.raw_output_contents.append(pack_bytes([body]))
    else:
        output.contents.bytes_contents.append(body)
    return response


def answer_of(response: pb.ModelInferResponse) -> tuple[str, bytes]:
    """(content type, the whole answer) of a ModelInferResponse, raw or typed: the inverse
    of ``infer_response``. Raises InvalidInput if it is not one BYTES element of OUTPUT."""
    # ``in`` first: indexing a message map adds the key.
    typed = CONTENT_TYPE in response.parameters
    content_type = response.parameters[CONTENT_TYPE].string_param if typed else ""
    if len(response.outputs) != 1 or response.outputs[0].name != OUTPUT:
        raise InvalidInput(f"expected one output {OUTPUT!r}, got {len(response.outputs)}")
    if response.raw_output_contents:
        elements: list[memoryview] | list[bytes] = unpack_bytes(
            response.raw_output_contents[0], "raw_output_contents"
        )
    else:
        elements = list(response.outputs[0].contents.bytes_contents)
    if len(elements) != 1:
        raise InvalidInput(f"output {OUTPUT} holds {len(elements)} elements, not one")
    return content_type, bytes(elements[0])
