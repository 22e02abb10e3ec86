"""The Open Inference conversions on their own: params to strings, raw BYTES tensors."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.base import Params
from handlers.errors import InvalidInput
from protos.inference import grpc_predict_v2_pb2 as pb
from server.oip import codec


def param(**value) -> pb.InferParameter:
    return pb.InferParameter(**value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (param(string_param="log"), "log"),
        (param(string_param=""), ""),
        (param(bool_param=True), "true"),
        (param(bool_param=False), "false"),
        (param(int64_param=-3), "-3"),
        (param(uint64_param=2**64 - 1), str(2**64 - 1)),
        (param(double_param=0.4), "0.4"),
        (param(double_param=2.0), "2"),
        (param(double_param=1e-7), "1e-07"),
        (param(double_param=1e300), "1e+300"),
    ],
)
def test_param_text(value, text):
    assert codec.param_text("p", value) == text


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_doubles_read_back_exactly(number):
    text = codec.param_text("x", param(double_param=number))
    assert Params({"x": text}).get_float("x", 0.0) == number


@given(st.integers(min_value=-(2**53), max_value=2**53))
def test_whole_doubles_are_whole_numbers(number):
    text = codec.param_text("n", param(double_param=float(number)))
    assert Params({"n": text}).get_int("n", 0) == number


def test_non_finite_doubles_are_refused_by_the_parser():
    for number in (float("nan"), float("inf")):
        text = codec.param_text("threshold", param(double_param=number))
        with pytest.raises(InvalidInput, match="threshold"):
            Params({"threshold": text}).get_float("threshold", 0.5)


def test_a_param_without_value_is_invalid():
    with pytest.raises(InvalidInput, match="'p' has no value"):
        codec.param_text("p", pb.InferParameter())


@given(st.lists(st.binary(max_size=300), max_size=5))
def test_raw_bytes_round_trip(elements):
    packed = codec.pack_bytes(elements)
    assert len(packed) == sum(4 + len(e) for e in elements)
    assert [bytes(e) for e in codec.unpack_bytes(packed)] == elements


def test_raw_bytes_are_little_endian_length_prefixed():
    assert codec.pack_bytes([b"abc"]) == b"\x03\x00\x00\x00abc"
    assert codec.pack_bytes([b"x" * 258]) == struct.pack("<I", 258) + b"x" * 258


@given(st.binary(max_size=40))
def test_unpack_never_fails_unclearly(raw):
    try:
        elements = codec.unpack_bytes(raw)
    except InvalidInput as exc:  # either outcome is right; a refusal names the field
        assert exc.message.startswith("raw_input_contents: ")  # noqa: PT017
    else:
        assert codec.pack_bytes(bytes(e) for e in elements) == raw


def test_request_and_tensor_params_merge():
    request = pb.ModelInferRequest(model_name="ssd")
    request.parameters["threshold"].double_param = 0.9
    request.parameters["annotate"].bool_param = True
    request.parameters["priority"].uint64_param = 1  # Triton's scheduler hint: dropped
    request.parameters["triton_enable_empty_final_response"].bool_param = True  # dropped
    tensor = request.inputs.add(name="INPUT", datatype="BYTES", shape=[1])
    tensor.parameters["threshold"].double_param = 0.25
    assert codec.params_of(request) == {"threshold": "0.25", "annotate": "true"}


def test_metadata():
    reply = codec.model_metadata("ssd-test")
    assert (reply.name, list(reply.versions), reply.platform) == ("ssd-test", ["1"], "dcf")
    codec.check_version("ssd", "")
    codec.check_version("ssd", "1")
    with pytest.raises(Exception, match="no version '3'"):
        codec.check_version("ssd", "3")
