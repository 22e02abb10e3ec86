"""ssd through the whole service: gateway, worker process, real model, real photograph."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import matplotlib
import pytest
from PIL import Image

from protos.dcf.v1 import dcf_pb2
from tests.support import ROOT, call_requests, collect_call

PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def test_invoke_finds_the_person(stub):
    reply = stub.Invoke(dcf_pb2.InvokeRequest(function="ssd", input=PHOTO.read_bytes()))
    assert reply.content_type == "application/json"
    answer = json.loads(reply.output)
    assert (answer["width"], answer["height"]) == (512, 600)
    person = next(d for d in answer["detections"] if d["label"] == "person")
    assert person["class"] == 0
    assert 0.5 <= person["confidence"] <= 1
    # A box over most of the frame, in the photo's own pixels.
    assert person["xmax"] - person["xmin"] > 400 and person["ymax"] - person["ymin"] > 450
    confidences = [d["confidence"] for d in answer["detections"]]
    assert confidences == sorted(confidences, reverse=True)


def test_call_alias_base64_and_params_agree_with_invoke(stub):
    data = PHOTO.read_bytes()
    direct = stub.Invoke(
        dcf_pb2.InvokeRequest(function="ssd", input=data, params={"threshold": "0.3"})
    )
    chunks = [
        base64.b64encode(data)[i : i + 1000] for i in range(0, len(base64.b64encode(data)), 1000)
    ]
    content_type, body, _ = collect_call(
        stub.Call(call_requests("ssd-test", chunks, {"threshold": "0.3"}))
    )
    assert content_type == "application/json"
    assert json.loads(body) == json.loads(direct.output)
    assert all(d["confidence"] >= 0.3 for d in json.loads(body)["detections"])


def test_annotate_answers_a_png_of_the_same_size(stub):
    reply = stub.Invoke(
        dcf_pb2.InvokeRequest(function="ssd", input=PHOTO.read_bytes(), params={"annotate": "true"})
    )
    assert reply.content_type == "image/png"
    assert Image.open(io.BytesIO(reply.output)).size == (512, 600)


@pytest.mark.parametrize(
    ("data", "params"),
    [
        (b"", {}),
        (b"not an image at all", {}),
        (None, {}),
        (b"x", {"threshold": "2"}),
        (b"x", {"colour": "red"}),
    ],
    ids=["empty", "text", "truncated", "bad-threshold", "unknown-param"],
)
def test_bad_input_is_invalid_argument_and_the_worker_keeps_serving(stub, data, params):
    if data is None:
        data = PHOTO.read_bytes()[:2000]
    with pytest.raises(grpc.RpcError) as err:
        stub.Invoke(dcf_pb2.InvokeRequest(function="ssd", input=data, params=params))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "\n" not in err.value.details() and "Traceback" not in err.value.details()
    assert json.loads(
        stub.Invoke(dcf_pb2.InvokeRequest(function="ssd", input=PHOTO.read_bytes())).output
    )


def test_worker_without_model_refuses_to_start_and_says_how(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "server", "worker", "ssd", "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DCF_MODEL_DIR": str(tmp_path)},
    )
    assert done.returncode != 0
    assert "make model" in done.stderr
    # One line that says what and how, not a traceback.
    assert "Traceback" not in done.stderr
    assert f"worker ssd cannot start: model file {tmp_path}" in done.stderr


def test_a_decompression_bomb_is_refused_and_the_worker_keeps_serving(stub):
    bomb = io.BytesIO()
    Image.new("RGB", (16_383, 3000), (120, 130, 140)).save(bomb, "WEBP", lossless=True)
    assert len(bomb.getvalue()) < 4000
    for params in ({}, {"annotate": "true"}):
        with pytest.raises(grpc.RpcError) as err:
            stub.Invoke(dcf_pb2.InvokeRequest(function="ssd", input=bomb.getvalue(), params=params))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == (
            "image is 16383x3000 (49.1 megapixels); the limit is 16 megapixels"
        )
    reply = stub.Invoke(dcf_pb2.InvokeRequest(function="ssd", input=PHOTO.read_bytes()))
    assert json.loads(reply.output)["width"] == 512
