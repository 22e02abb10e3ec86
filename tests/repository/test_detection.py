"""A model by configuration: ssd's model served under a second name by a function.yaml
alone (handlers/tflite_detection.py), with another default threshold, and its answers
compared with ssd's at that threshold, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from handlers.model_fetch import LABELS_NAME, MODEL_FILES, MODEL_NAME
from protos.dcf.v1 import dcf_pb2
from server.repository.folder import read_folder
from server.repository.load import FolderRefused, load_folder_function
from tests.support import media

SPEC = f"""\
description: SSD MobileNet v2 (COCO) again, keeping fainter boxes.
input_type: image/*
output_type: application/json
params:
  - {{name: threshold, type: number, range: [0, 1], default: 0.3, help: minimum confidence}}
  - {{name: max_detections, type: integer, range: [1, 100], default: 20, help: most boxes}}
  - {{name: annotate, type: boolean, default: false, help: "true: the image as PNG, boxes drawn"}}
limits: {{max_input_bytes: 16MiB, max_concurrency: 2}}
options:
  model: {MODEL_NAME}
  sha256: "{MODEL_FILES[MODEL_NAME].sha256}"
  labels: {LABELS_NAME}
  input_size: 300
  interpreters: 1
handler: {{module: handlers.tflite_detection}}
"""


def detector_folder(parent: Path, name: str, spec: str = SPEC) -> Path:
    folder = parent / name
    folder.mkdir(parents=True)
    (folder / "function.yaml").write_text(spec)
    return folder


def test_a_second_detector_from_configuration_answers_as_ssd_does(serve, tmp_path: Path):
    fns = tmp_path / "fns"
    detector_folder(fns, "ssd-faint")
    assert not list((fns / "ssd-faint").glob("*.py")), "no handler code"
    served = serve(fns, registry=("ssd",))
    assert served.names() == ["ssd", "ssd-faint"]
    photo = media.photo()

    faint = served.call("ssd-faint", photo)
    assert faint == served.call("ssd", photo, {"threshold": "0.3"})
    assert faint[0] == "application/json"
    found = json.loads(faint[1])["detections"]
    assert "person" in [box["label"] for box in found]
    assert all(box["confidence"] >= 0.3 for box in found)
    default = json.loads(served.call("ssd", photo)[1])["detections"]
    assert default == [box for box in found if box["confidence"] >= 0.5]
    assert served.call("ssd-faint", photo, {"threshold": "0.5"}) == served.call("ssd", photo)
    drawn = served.call("ssd-faint", photo, {"annotate": "true", "max_detections": "3"})
    assert drawn[0] == "image/png"
    assert drawn == served.call(
        "ssd", photo, {"annotate": "true", "max_detections": "3", "threshold": "0.3"}
    )

    stub = served.service.gateway(served.channel)
    listed = stub.ListFunctions(dcf_pb2.ListFunctionsRequest(), timeout=60)
    (info,) = [fn for fn in listed.functions if fn.name == "ssd-faint"]
    specs = {spec.name: spec for spec in info.param_specs}
    assert (specs["threshold"].default, specs["threshold"].maximum) == ("0.3", 1.0)
    assert info.max_input_bytes == 16 << 20


def test_a_model_that_fails_its_checksum_is_refused(tmp_path: Path):
    digest = MODEL_FILES[MODEL_NAME].sha256
    wrong = SPEC.replace(digest, "0" * 64)
    config = read_folder(detector_folder(tmp_path, "ssd-wrong", wrong)).config
    with pytest.raises(FolderRefused, match=f"{MODEL_NAME} fails its checksum"):
        load_folder_function(config)
    other = SPEC.replace("input_size: 300", "input_size: 320")
    config = read_folder(detector_folder(tmp_path, "ssd-other", other)).config
    with pytest.raises(FolderRefused, match="input_size: only 300 is supported"):
        load_folder_function(config)
