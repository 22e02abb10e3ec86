"""tritonclient's gRPC client against a real ``python -m server``, run in its own process.

The reference answers come from dcf.v1 Invoke on the same service: ModelInfer must
take the same path and give the same results and statuses.
"""

from __future__ import annotations

import base64
import importlib.metadata
import io
import json

import cv2
import grpc
import pytest
from PIL import Image

from protos.dcf.v1 import dcf_pb2
from protos.inference import grpc_predict_v2_pb2 as pb
from tests.oip.wire import field_shapes
from tests.support.oip import PHOTO, b64, make_wav, triton, value

PNG = b"\x89PNG\r\n\x1a\n"


def invoke(stub, function: str, data: bytes, params: dict | None = None) -> dcf_pb2.InvokeResponse:
    return stub.Invoke(dcf_pb2.InvokeRequest(function=function, input=data, params=params or {}))


def invoke_error(stub, function: str, data: bytes, params: dict | None = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        invoke(stub, function, data, params)
    return err.value


def output(result: dict) -> bytes:
    return base64.b64decode(value(result)["output"])


def test_server_live_ready_and_metadata(dcf):
    live, ready, metadata, hello = triton(
        dcf.address,
        [
            {"op": "live"},
            {"op": "server_ready"},
            {"op": "server_metadata"},
            {"op": "model_ready", "model": "hello-dcf"},
        ],
    )
    assert value(live) is True
    assert value(ready) is True
    assert value(metadata)["name"] == "dcf"
    assert value(metadata)["version"] == importlib.metadata.version("dcf")
    assert value(hello) is True


def test_hello_echo_goes_raw_both_ways(dcf):
    text = b"Hello, DCF!\n\x00\xff binary too"
    (result,) = triton(dcf.address, [{"op": "infer", "model": "hello-dcf", "data": b64(text)}])
    answer = value(result)
    assert output(result) == text
    assert answer["content_type"] == "text/plain"
    assert answer["raw"] is True  # tritonclient sent raw_input_contents; the answer is raw too
    assert (answer["name"], answer["datatype"], answer["shape"]) == ("OUTPUT", "BYTES", [1])
    assert (answer["model_name"], answer["model_version"]) == ("hello-dcf", "1")


def test_ssd_ready_metadata_and_infer_equal_invoke(dcf, stub, photo):
    ready, metadata, result, alias, as_text = triton(
        dcf.address,
        [
            {"op": "model_ready", "model": "ssd"},
            {"op": "metadata", "model": "ssd"},
            {"op": "infer", "model": "ssd", "data": b64(photo), "params": {"threshold": 0.4}},
            {"op": "infer", "model": "ssd-test", "data": b64(photo), "params": {"threshold": 0.4}},
            {"op": "infer", "model": "ssd", "data": b64(photo), "params": {"threshold": "0.4"}},
        ],
    )
    assert value(ready) is True
    assert value(metadata) == {
        "name": "ssd",
        "versions": ["1"],
        "platform": "dcf",
        "inputs": [{"name": "INPUT", "datatype": "BYTES", "shape": ["1"]}],
        "outputs": [{"name": "OUTPUT", "datatype": "BYTES", "shape": ["1"]}],
    }
    reference = invoke(stub, "ssd", photo, {"threshold": "0.4"})
    assert reference.content_type == "application/json"
    expected = json.loads(reference.output)
    assert value(result)["content_type"] == "application/json"
    assert json.loads(output(result)) == expected
    assert json.loads(output(alias)) == expected
    assert json.loads(output(as_text)) == expected
    assert expected["detections"] and all(d["confidence"] >= 0.4 for d in expected["detections"])


def test_ssd_params_of_every_type(dcf, stub, photo):
    """int64 (max_detections), bool (annotate) and double (threshold) params reach the handler."""
    one, annotated, strict = triton(
        dcf.address,
        [
            {
                "op": "infer",
                "model": "ssd",
                "data": b64(photo),
                "params": {"max_detections": 1, "threshold": 0.1},
            },
            {"op": "infer", "model": "ssd", "data": b64(photo), "params": {"annotate": True}},
            {"op": "infer", "model": "ssd", "data": b64(photo), "params": {"threshold": 1.0}},
        ],
    )
    detections = json.loads(output(one))["detections"]
    assert len(detections) == 1
    assert json.loads(output(one)) == json.loads(
        invoke(stub, "ssd", photo, {"max_detections": "1", "threshold": "0.1"}).output
    )
    assert value(annotated)["content_type"] == "image/png"
    assert Image.open(io.BytesIO(output(annotated))).size == (512, 600)
    reference = invoke(stub, "ssd", photo, {"threshold": "1"})
    assert json.loads(output(strict)) == json.loads(reference.output)


def test_send_wav_answers_a_png_equal_to_invoke(dcf, stub):
    audio = make_wav()
    (result,) = triton(
        dcf.address,
        [
            {
                "op": "infer",
                "model": "send-wav",
                "data": b64(audio),
                "params": {"width": 400, "height": 200, "colorbar": False, "scale": "log"},
            }
        ],
    )
    png = output(result)
    assert value(result)["content_type"] == "image/png"
    assert png.startswith(PNG)
    assert Image.open(io.BytesIO(png)).size == (400, 200)
    params = {"width": "400", "height": "200", "colorbar": "false", "scale": "log"}
    reference = invoke(stub, "send-wav", audio, params)
    assert png == reference.output


def test_unknown_model_is_not_found(dcf, stub):
    infer, ready, metadata, version = triton(
        dcf.address,
        [
            {"op": "infer", "model": "no-such", "data": b64(b"x")},
            {"op": "model_ready", "model": "no-such"},
            {"op": "metadata", "model": "no-such"},
            {"op": "metadata", "model": "hello-dcf", "version": "2"},
        ],
    )
    reference = invoke_error(stub, "no-such", b"x")
    assert reference.code() == grpc.StatusCode.NOT_FOUND
    for result in (infer, ready, metadata):
        assert (result["ok"], result["status"]) == (False, "NOT_FOUND")
    assert infer["message"] == reference.details()
    assert version["status"] == "NOT_FOUND" and "version" in version["message"]


def test_bad_input_is_invalid_argument_as_in_invoke(dcf, stub):
    results = triton(
        dcf.address,
        [
            {"op": "infer", "model": "ssd", "data": b64(b"not an image at all")},
            {"op": "infer", "model": "ssd", "data": b64(b"x"), "params": {"threshold": 2.5}},
            {"op": "infer", "model": "hello-dcf", "elements": [b64(b"a"), b64(b"b")]},
            {"op": "infer", "model": "hello-dcf", "data": b64(b"a"), "input": "IMAGE"},
            {"op": "infer", "model": "hello-dcf", "data": b64(b"a"), "output": "BOXES"},
            {"op": "infer", "model": "hello-dcf", "data": b64(b"a"), "params": {"colour": "red"}},
        ],
    )
    for result in results:
        assert (result["ok"], result["status"]) == (False, "INVALID_ARGUMENT"), result
    not_image, bad_threshold, two, name, out, unknown = (r["message"] for r in results)
    assert not_image == invoke_error(stub, "ssd", b"not an image at all").details()
    assert bad_threshold == invoke_error(stub, "ssd", b"x", {"threshold": "2.5"}).details()
    assert unknown == invoke_error(stub, "hello-dcf", b"a", {"colour": "red"}).details()
    assert "2 elements" in two
    assert "IMAGE" in name and "INPUT" in name
    assert "BOXES" in out and "OUTPUT" in out


def test_our_proto_matches_tritonclients_on_the_wire(dcf):
    """Every message of ours has the same fields, numbers and types as tritonclient's."""
    ours = {}

    def walk(message):
        ours[message.full_name] = field_shapes(message)
        for nested in message.nested_types:
            walk(nested)

    for message in pb.DESCRIPTOR.message_types_by_name.values():
        walk(message)
    (theirs,) = triton(dcf.address, [{"op": "descriptor", "messages": sorted(ours)}])
    assert value(theirs) == ours
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert [m.name for m in service.methods] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    ]


def test_partial_results_answer_the_whole_document_as_invoke(dcf, stub, tmp_path):
    """ssd-video's per-frame results come back as Invoke's one collected document."""
    frame = cv2.imread(str(PHOTO))
    assert frame is not None, f"matplotlib sample photo missing: {PHOTO}"
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, frame.shape[1::-1])
    for _ in range(3):
        writer.write(frame)
    writer.release()
    video = path.read_bytes()
    (result,) = triton(dcf.address, [{"op": "infer", "model": "ssd-video", "data": b64(video)}])
    reference = invoke(stub, "ssd-video", video)
    assert value(result)["content_type"] == reference.content_type
    document = json.loads(output(result))
    assert document == json.loads(reference.output)
    assert len(document["frames"]) == 3
