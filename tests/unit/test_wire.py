"""server/rpc/wire.py: the payload taken out of an encoded message exactly as protobuf
reads it, and the rest still the same message; broken framing is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protos.dcf.v1 import dcf_pb2
from server.rpc import wire
from server.rpc.framing import encode_answer

names = st.text(max_size=20)
params = st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4)


@given(function=names, data=st.binary(max_size=5000), params=params)
def test_the_input_comes_out_uncopied_and_the_rest_decodes_alike(function, data, params):
    request = dcf_pb2.InvokeRequest(function=function, input=data, params=params)
    raw = request.SerializeToString()
    value, rest = wire.without(raw, 2)
    assert isinstance(value, memoryview) and bytes(value) == data
    head = dcf_pb2.InvokeRequest.FromString(rest)
    assert (head.function, dict(head.params), head.input) == (function, params, b"")
    assert wire.length_of(raw, 2) == len(data)


@given(first=st.binary(max_size=300), last=st.binary(max_size=300), extra=st.binary(max_size=50))
def test_the_last_occurrence_wins_and_unknown_fields_stay(first, last, extra):
    """Protobuf keeps the last of a repeated scalar field; fields it does not know stay
    in the message, so a newer caller's fields still reach a newer worker."""
    unknown = b"\xaa\x06" + bytes([len(extra)]) + extra  # field 101, length-delimited
    raw = (
        dcf_pb2.InvokeRequest(input=first).SerializeToString()
        + unknown
        + dcf_pb2.InvokeRequest(function="f", input=last).SerializeToString()
    )
    parsed = dcf_pb2.InvokeRequest.FromString(raw)
    value, rest = wire.without(raw, 2)
    assert bytes(value) == parsed.input == (last or first)  # proto3 leaves an empty one out
    assert wire.length_of(raw, 2) == len(parsed.input)
    assert unknown in rest and dcf_pb2.InvokeRequest.FromString(rest).function == "f"


def test_varints_and_fixed_fields_are_stepped_over():
    # field 1 varint 150, field 3 fixed64, field 4 fixed32, then field 2
    raw = b"\x08\x96\x01" + b"\x19" + b"\x00" * 8 + b"\x25" + b"\x00" * 4 + b"\x12\x03abc"
    value, rest = wire.without(raw, 2)
    assert bytes(value) == b"abc"
    assert rest == raw[: -len(b"\x12\x03abc")]


@pytest.mark.parametrize(
    "raw",
    [
        b"\x12\x05ab",  # a length past the end
        b"\x12",  # a length missing
        b"\x08" + b"\xff" * 11,  # a varint over ten bytes
        b"\x00\x00",  # field number 0
        b"\x13",  # a group (wire type 3)
        b"\x10\x01",  # the input field as a varint
    ],
    ids=["past the end", "no length", "endless varint", "field 0", "group", "wrong type"],
)
def test_broken_framing_is_refused(raw):
    with pytest.raises(wire.WireError):
        wire.without(raw, 2)


def test_an_empty_message_has_an_empty_payload():
    value, rest = wire.without(b"", 2)
    assert (bytes(value), rest, wire.length_of(b"", 1)) == (b"", b"", 0)


@given(content_type=names, output=st.binary(max_size=70000))
def test_an_answer_encoded_with_one_copy_decodes_as_protobuf_encodes_it(content_type, output):
    raw = encode_answer(content_type, output)
    reply = dcf_pb2.InvokeResponse.FromString(raw)
    assert (reply.content_type, reply.output) == (content_type, output)
    assert wire.length_of(raw, 1) == len(output)


@given(data=st.binary(max_size=70000))
def test_a_message_of_one_field_gives_it_uncopied(data):
    raw = dcf_pb2.CallRequest(chunk=data).SerializeToString()
    value = wire.sole(raw, 2)
    assert isinstance(value, memoryview) and value.obj is raw and bytes(value) == data


@pytest.mark.parametrize(
    "raw",
    [
        dcf_pb2.CallRequest(chunk=b"a").SerializeToString() * 2,  # the field twice
        dcf_pb2.CallRequest(chunk=b"a").SerializeToString() + b"\x18\x01",  # and another
        dcf_pb2.CallRequest(header=dcf_pb2.CallHeader(function="f")).SerializeToString(),
        b"\x10\x01",  # the field as a varint
        b"\x12\x05ab",  # broken framing
        b"",  # no field at all
    ],
    ids=["twice", "another field", "another field only", "wrong type", "broken", "empty"],
)
def test_any_other_message_gives_none(raw):
    assert wire.sole(raw, 2) is None
