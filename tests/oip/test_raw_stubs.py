"""Our own stubs from protos/inference/grpc_predict_v2.proto, typed and raw, in this process.

A second, independent client beside tritonclient: it sends the typed
``contents.bytes_contents`` form (and the raw form, built by hand), checks the
answer comes back in the same form, and checks every refusal is a clear status.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos.dcf.v1 import dcf_pb2
from protos.inference import grpc_predict_v2_pb2 as pb
from protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.support import ROOT, metric

SERVICE = "inference.GRPCInferenceService"


@pytest.fixture
def oip(dcf):
    with dcf.channel() as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def typed_request(model: str, data: bytes, **params) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="INPUT", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(data)
    for name, value in params.items():
        set_param(request.parameters[name], value)
    return request


def raw_request(model: str, *elements: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT", datatype="BYTES", shape=[len(elements)])
    request.raw_input_contents.append(b"".join(struct.pack("<I", len(e)) + e for e in elements))
    return request


def set_param(param: pb.InferParameter, value) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = value


def refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=60)
    return err.value


def test_typed_echo_answers_typed(oip):
    request = typed_request("hello-dcf", b"typed \x00 bytes")
    request.id = "req-7"
    request.outputs.add(name="OUTPUT")
    reply = oip.ModelInfer(request, timeout=60)
    assert list(reply.raw_output_contents) == []
    (output,) = reply.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("OUTPUT", "BYTES", [1])
    assert list(output.contents.bytes_contents) == [b"typed \x00 bytes"]
    assert reply.parameters["content_type"].string_param == "text/plain"
    assert (reply.model_name, reply.model_version, reply.id) == ("hello-dcf", "1", "req-7")


def test_raw_echo_answers_raw_with_length_prefix(oip):
    reply = oip.ModelInfer(raw_request("hello-dcf", b"raw input"), timeout=60)
    assert list(reply.raw_output_contents) == [struct.pack("<I", 9) + b"raw input"]
    assert not reply.outputs[0].HasField("contents")


def test_empty_element_echoes_empty(oip):
    reply = oip.ModelInfer(typed_request("hello-dcf", b""), timeout=60)
    assert list(reply.outputs[0].contents.bytes_contents) == [b""]


def test_typed_ssd_with_double_param_equals_invoke(dcf, stub, oip, photo):
    reply = oip.ModelInfer(typed_request("ssd", photo, threshold=0.4), timeout=120)
    reference = stub.Invoke(
        dcf_pb2.InvokeRequest(function="ssd", input=photo, params={"threshold": "0.4"})
    )
    assert reply.parameters["content_type"].string_param == "application/json"
    assert json.loads(reply.outputs[0].contents.bytes_contents[0]) == json.loads(reference.output)


def test_input_tensor_params_are_params_too(stub, oip, photo):
    request = typed_request("ssd", photo, threshold=0.9)
    set_param(request.inputs[0].parameters["threshold"], 0.2)  # the tensor's wins
    set_param(request.inputs[0].parameters["max_detections"], 2)
    reply = oip.ModelInfer(request, timeout=120)
    params = {"threshold": "0.2", "max_detections": "2"}
    reference = stub.Invoke(dcf_pb2.InvokeRequest(function="ssd", input=photo, params=params))
    assert json.loads(reply.outputs[0].contents.bytes_contents[0]) == json.loads(reference.output)
    assert len(json.loads(reference.output)["detections"]) == 2


def test_triton_scheduling_params_are_ignored(oip):
    request = typed_request("hello-dcf", b"x", priority=3, timeout=1000)
    assert oip.ModelInfer(request, timeout=60).outputs[0].contents.bytes_contents == [b"x"]


def test_versions(oip):
    for version in ("", "1"):
        request = typed_request("hello-dcf", b"v")
        request.model_version = version
        assert oip.ModelInfer(request, timeout=60).model_version == "1"
        assert oip.ModelReady(pb.ModelReadyRequest(name="hello-dcf", version=version)).ready
    request = typed_request("hello-dcf", b"v")
    request.model_version = "2"
    assert refused(oip.ModelInfer, request).code() == grpc.StatusCode.NOT_FOUND
    err = refused(oip.ModelReady, pb.ModelReadyRequest(name="hello-dcf", version="2"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_metadata_of_an_alias(oip):
    reply = oip.ModelMetadata(pb.ModelMetadataRequest(name="stft"))
    assert (reply.name, list(reply.versions), reply.platform) == ("stft", ["1"], "dcf")
    tensors = [(t.name, t.datatype, list(t.shape)) for t in (*reply.inputs, *reply.outputs)]
    assert tensors == [("INPUT", "BYTES", [1]), ("OUTPUT", "BYTES", [1])]


def test_server_calls(oip):
    assert oip.ServerLive(pb.ServerLiveRequest()).live
    assert oip.ServerReady(pb.ServerReadyRequest()).ready
    metadata = oip.ServerMetadata(pb.ServerMetadataRequest())
    assert metadata.name == "dcf" and metadata.version and list(metadata.extensions) == []


def _bad_requests():
    two_typed = typed_request("hello-dcf", b"a")
    two_typed.inputs[0].contents.bytes_contents.append(b"b")  # shape still says [1]
    shape_two = typed_request("hello-dcf", b"a")
    shape_two.inputs[0].shape[:] = [2]
    fp32 = typed_request("hello-dcf", b"a")
    fp32.inputs[0].datatype = "FP32"
    wrong_field = pb.ModelInferRequest(model_name="hello-dcf")
    wrong_field.inputs.add(name="INPUT", datatype="BYTES", shape=[1]).contents.int_contents[:] = [1]
    both = raw_request("hello-dcf", b"a")
    both.inputs[0].contents.bytes_contents.append(b"a")
    truncated = raw_request("hello-dcf", b"abc")
    truncated.raw_input_contents[0] = truncated.raw_input_contents[0][:-1]
    stray = raw_request("hello-dcf", b"abc")
    stray.raw_input_contents[0] += b"\x01\x00"
    two_inputs = typed_request("hello-dcf", b"a")
    second = two_inputs.inputs.add(name="INPUT2", datatype="BYTES", shape=[1])
    second.contents.bytes_contents.append(b"b")
    no_input = pb.ModelInferRequest(model_name="hello-dcf")
    no_data = pb.ModelInferRequest(model_name="hello-dcf")
    no_data.inputs.add(name="INPUT", datatype="BYTES", shape=[1])
    bad_output = typed_request("hello-dcf", b"a")
    bad_output.outputs.add(name="BOXES")
    output_param = typed_request("hello-dcf", b"a")
    output_param.outputs.add(name="OUTPUT").parameters["classification"].int64_param = 3
    shared = typed_request("hello-dcf", b"a")
    shared.inputs[0].parameters["shared_memory_region"].string_param = "r"
    empty_param = typed_request("hello-dcf", b"a")
    empty_param.parameters["threshold"].CopyFrom(pb.InferParameter())
    unnamed = typed_request("", b"a")
    return {
        "two elements, typed": (two_typed, "2 elements"),
        "shape [2]": (shape_two, "shape [2] (2 elements)"),
        "FP32": (fp32, "datatype"),
        "int_contents": (wrong_field, "int_contents"),
        "raw and typed": (both, "not both"),
        "truncated raw": (truncated, "says 3 bytes, 2 follow"),
        "stray raw bytes": (stray, "stray"),
        "two inputs": (two_inputs, "one input"),
        "no input": (no_input, "one input"),
        "no data": (no_data, "0 elements"),
        "unknown output": (bad_output, "BOXES"),
        "output parameter": (output_param, "classification"),
        "shared memory": (shared, "shared memory"),
        "param without value": (empty_param, "threshold"),
        "no model name": (unnamed, "names no model"),
    }


@pytest.mark.parametrize("case", list(_bad_requests()))
def test_bad_requests_are_invalid_argument(oip, case):
    request, words = _bad_requests()[case]
    err = refused(oip.ModelInfer, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.details()
    assert "\n" not in err.details() and "Traceback" not in err.details()


def test_limits_and_faults_match_invoke(stub, oip):
    big = b"x" * (2 << 20)  # echo-small takes at most 1 MiB
    err = refused(oip.ModelInfer, typed_request("echo-small", big))
    with pytest.raises(grpc.RpcError) as reference:
        stub.Invoke(dcf_pb2.InvokeRequest(function="echo-small", input=big))
    assert err.code() == reference.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == reference.value.details()

    err = refused(oip.ModelInfer, typed_request("faulty", b"boom"))
    with pytest.raises(grpc.RpcError) as reference:
        stub.Invoke(dcf_pb2.InvokeRequest(function="faulty", input=b"boom"))
    assert err.code() == reference.value.code() == grpc.StatusCode.INTERNAL
    assert err.details() == reference.value.details()
    assert "Traceback" not in err.details()


def test_health_and_reflection_cover_the_service(dcf):
    with dcf.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(
            reflection.ServerReflectionInfo(
                iter(
                    [
                        reflection_pb2.ServerReflectionRequest(list_services=""),
                        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
                    ]
                )
            )
        )
        names = [s.name for s in answers[0].list_services_response.service]
        assert SERVICE in names and "dcf.v1.Gateway" in names
        assert answers[1].file_descriptor_response.file_descriptor_proto


def test_no_process_holds_tritonclient_beside_our_protos():
    """tritonclient's protos clash with ours: neither the server nor this process imports it."""
    assert not any(name.startswith("tritonclient") for name in sys.modules)
    check = (
        "import sys, server.run.main, server.oip.servicer; "
        "assert 'protos.inference.grpc_predict_v2_pb2' in sys.modules; "
        "bad = [m for m in sys.modules if m.startswith('tritonclient')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", check], cwd=ROOT, check=True, timeout=60)


def test_refusals_before_the_gateway_call_are_accounted_as_calls(dcf, oip):
    """A malformed tensor never reaches a worker, yet it is a call of its function:
    counted in the metrics, logged, and answered with a request id, as Invoke's are."""
    fp32 = typed_request("ssd", b"a")
    fp32.inputs[0].datatype = "FP32"
    cases = [
        (fp32, "oip-refused-tensor", "ssd", grpc.StatusCode.INVALID_ARGUMENT),
        (
            typed_request("no-such-model", b"a"),
            "oip-refused-model",
            "unknown",
            grpc.StatusCode.NOT_FOUND,
        ),
    ]
    for request, request_id, label, code in cases:
        counted = {"function": label, "code": code.name}
        before = metric(dcf.metrics_text(), "dcf_requests_total", **counted)
        with pytest.raises(grpc.RpcError) as err:
            oip.ModelInfer(request, timeout=60, metadata=(("x-request-id", request_id),))
        assert err.value.code() == code
        assert ("x-request-id", request_id) in err.value.trailing_metadata()
        assert metric(dcf.metrics_text(), "dcf_requests_total", **counted) == before + 1
        assert f"call {request_id} {request.model_name} {code.name}" in dcf.log.read_text()
