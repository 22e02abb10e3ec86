"""Any SSD-style TFLite detector as a function, configured by a function.yaml alone.

A function folder with no handler code: its function.yaml names this module and the
model, and declares the params (their defaults are the function's)::

    handler: {module: handlers.tflite_detection}
    input_type: image/*
    output_type: application/json
    params:
      - {name: threshold, type: number, range: [0, 1], default: 0.3, help: minimum confidence}
      - {name: max_detections, type: integer, range: [1, 100], default: 20, help: most boxes}
      - {name: annotate, type: boolean, default: false, help: "true: the image as PNG"}
    options:
      model: ./detect.tflite      # "./": in the function's folder; a bare name: in the
      labels: ./labels.txt        #   model folder ($DCF_MODEL_DIR or <repo>/models)
      sha256: 7046f31a...         # the model file's SHA-256, checked at every load
      input_size: 300             # the model's input: input_size x input_size RGB, uint8
      interpreters: 2             # as ssd's: inferences at once, threads each
      threads: 1

The model must be SSD-shaped as ssd's is (TFLite_Detection_PostProcess: boxes,
classes, scores, count); the labels file has one ``ID  name`` per line. It answers
what ssd answers (``{"width", "height", "detections"}``, or the annotated PNG) through
the same Detector (handlers/detector.py): the same model under another name answers
exactly what ssd answers at the same threshold. Nothing heavy is imported until
``create``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from handlers import detection_params, ssd
from handlers.base import Function, Param

OWNER = "tflite_detection"
DEFAULT_MAX_DETECTIONS = detection_params.max_detections("to return")
DEFAULT_ANNOTATE = Param(
    "annotate", "boolean", "true: reply with the image as PNG, boxes drawn", default=False
)


def _file(options: Mapping[str, Any], name: str) -> Path:
    """An option naming a file: as given when absolute, else in the model folder."""
    from handlers.model_fetch import default_model_dir

    value = options.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{OWNER} option {name}: expected a file name")
    path = Path(value)
    return path if path.is_absolute() else default_model_dir() / path


def create(options: Mapping[str, Any], params: Mapping[str, Param]) -> Function:
    """Check and load the model once; the function answers as ssd does."""
    from handlers import detector, images  # heavy imports: load time only
    from handlers.model_fetch import sha256_hex

    model_path, labels_path = _file(options, "model"), _file(options, "labels")
    expected = options.get("sha256")
    if not isinstance(expected, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", expected):
        raise ValueError(f"{OWNER} option sha256: expected the model's 64 hex digits, quoted")
    expected = expected.lower()
    input_size = detector.positive_int_option(options, "input_size", None, OWNER)
    if input_size != detector.INPUT_SIZE:
        # handlers/detector.py builds interpreters for its own model's input size.
        raise ValueError(f"{OWNER} option input_size: only {detector.INPUT_SIZE} is supported")
    try:
        model_bytes = model_path.read_bytes()
        labels = detector.parse_labels(labels_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise detector.ModelMissing(f"{exc.filename}: {exc.strerror}") from None
    digest = sha256_hex(model_bytes)
    if digest != expected:
        raise detector.ModelMissing(
            f"model file {model_path} fails its checksum (sha256 {digest}, expected {expected})"
        )
    model = detector.Detector.build(
        model_bytes,
        model_path,
        labels,
        interpreters=detector.positive_int_option(options, "interpreters", None, OWNER),
        threads=detector.positive_int_option(options, "threads", 1, OWNER) or 1,
        lone_threads=detector.positive_int_option(options, "lone_threads", None, OWNER),
    )
    read = (
        params.get("threshold", detection_params.THRESHOLD),
        params.get("max_detections", DEFAULT_MAX_DETECTIONS),
        params.get("annotate", DEFAULT_ANNOTATE),
    )
    max_pixels = images.DEFAULT_MAX_PIXELS
    return ssd.detection_function(
        model,
        params,
        read,
        max_pixels=max_pixels,
        budget=images.MemoryBudget(max_pixels * images.BYTES_PER_PIXEL_WEBP),
        reduce_to=detector.INPUT_SIZE,
    )
