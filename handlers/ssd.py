"""The ``ssd`` function (alias ``ssd-test``): objects in one image, as JSON or a PNG.

Input: one image (JPEG, PNG, BMP, WebP, TIFF, GIF; or base64 text of one).
Output: ``{"width": W, "height": H, "detections": [...]}`` in compact JSON, boxes
in the image's pixels after EXIF rotation; or, with ``annotate=true``, the image
as a PNG with the boxes drawn. Params are checked before the input is read, so a
bad param fails fast without waiting for the upload.

Memory budget (the arithmetic behind the defaults; handlers.images has each step):

* **Per call:** at most ``max_pixels`` decoded pixels (16 megapixels by default),
  whatever the format: a JPEG is decoded at 1/2, 1/4 or 1/8 scale when that brings
  it under the cap (for JSON, always as far as the model's 300x300 input allows;
  ``annotate`` draws and answers a big JPEG at the scale that fits), anything else
  over the cap is refused before a pixel is decoded. Such a call holds at most 8
  bytes a pixel (128 MB), 10 for annotate (160 MB), 16 for a WebP (256 MB, 244
  MiB). On top: its input, up to 3.125 x ``max_input_bytes`` (a WebP with a large
  XMP chunk), and annotate's PNG until it is read, up to 52 MiB.
* **Per process:** all calls hold at most ``decode_memory_mib`` of pixels at once
  (default: the costliest single call, 244 MiB at 16 megapixels: one WebP, or two
  other pictures at the cap, at a time; the others wait their turn), however many
  the registry lets in. The worker's peak is then at most

      baseline (TensorFlow, three interpreters: 794 MiB measured with two, + 13)
      + decode_memory_mib                                     244 MiB
      + max_concurrency x (3.125 x max_input_bytes + 54 MiB)  inputs, PNG answers

  Measured (tests/security/test_budgets_ssd.py): 16 of the costliest pictures at
  once, from the 49-megapixel WebP bomb to 16-megapixel noise drawn as 46 MB PNGs,
  peak at 1382 MiB. The last term is the registry's to bound: for the 1536 Mi of
  docker/k8s/41-ssd.yaml with 10% kept free it must stay under 344 MiB, which
  ``max_concurrency`` 16 with 64 MiB inputs is far from (see docs/deploying.md).

This module imports nothing heavy: the detector (numpy, OpenCV, TensorFlow) is
imported and loaded by ``create``, once per worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from handlers import detection_params, memory, steps
from handlers.base import Function, Param, Reply, Request, declare

if TYPE_CHECKING:
    from handlers.detector import Detector
    from handlers.images import MemoryBudget

MAX_DETECTIONS = detection_params.max_detections(
    "to return", "the model itself proposes at most 20"
)
ANNOTATE = Param(
    "annotate", "boolean", "true: reply with the image as PNG, boxes drawn", default=False
)
PARAMS = declare(detection_params.THRESHOLD, MAX_DETECTIONS, ANNOTATE)


def _bool(options: Mapping[str, Any], name: str, default: bool) -> bool:
    value = options.get(name, default)
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"ssd option {name}: expected true or false, got {value!r}")


def create(options: Mapping[str, Any]) -> Function:
    """Load the model once and return the ready function.

    Options (all optional): ``model_dir`` (default $DCF_MODEL_DIR or <repo>/models),
    ``interpreters`` (inferences at once under load, default one per core),
    ``threads`` (of each of those, default 1), ``lone_threads`` (of one more
    interpreter, which a call gets while it is the only one in flight; default one
    per core; equal to ``threads``: no such interpreter), ``max_pixels`` (most
    pixels one call decodes, default 16 megapixels), ``decode_memory_mib`` (MiB of
    pixels all calls may hold at once, default and minimum: what the costliest call
    at ``max_pixels`` holds), ``jpeg_draft`` (decode big JPEGs at reduced scale for
    the model, default true).
    Raises detector.ModelMissing, whose message says to run ``make model``.
    """
    from handlers import detector, images  # heavy imports: load time only

    max_pixels = (
        detector.positive_int_option(options, "max_pixels", images.DEFAULT_MAX_PIXELS, "ssd")
        or images.DEFAULT_MAX_PIXELS
    )
    costliest = max_pixels * images.BYTES_PER_PIXEL_WEBP
    memory_mib = (
        detector.positive_int_option(
            options, "decode_memory_mib", -(-costliest // images.MIB), "ssd"
        )
        or 0
    )
    if memory_mib * images.MIB < costliest:
        raise ValueError(
            f"ssd option decode_memory_mib ({memory_mib}) must be at least "
            f"{-(-costliest // images.MIB)}: one call at max_pixels ({max_pixels}) may hold that"
        )
    budget = images.MemoryBudget(memory_mib * images.MIB)
    reduce_to = detector.INPUT_SIZE if _bool(options, "jpeg_draft", True) else None
    model = detector.Detector.from_options(options, "ssd")
    return detection_function(
        model,
        PARAMS,
        (detection_params.THRESHOLD, MAX_DETECTIONS, ANNOTATE),
        max_pixels=max_pixels,
        budget=budget,
        reduce_to=reduce_to,
    )


def detection_function(
    model: Detector,
    params: Mapping[str, Param],
    read: tuple[Param, Param, Param],
    *,
    max_pixels: int,
    budget: MemoryBudget,
    reduce_to: int | None,
) -> Function:
    """ssd's way of answering, around a loaded ``model``: decode within ``budget``,
    resize, detect, answer JSON or the annotated PNG. Shared with any detector a
    function folder configures (handlers/tflite_detection.py). ``params`` are the
    params the function takes; ``read`` the threshold, max_detections and annotate
    params its calls are read with (a folder may leave some undeclared: their
    defaults then hold)."""
    from handlers import detector, images

    threshold_param, limit_param, annotate_param = read
    memory.map_large_blocks()  # pictures and frames mapped and unmapped: handlers/memory.py

    def handle(request: Request) -> Reply:
        threshold = threshold_param.number(request.params)
        limit = limit_param.integer(request.params)
        draw = annotate_param.flag(request.params)
        # In flight from here (the worker has the whole input by now): a call that
        # decodes is load too, so a lone call's inference gets every core and
        # concurrent ones one each (detector.InterpreterPool).
        with model.call():
            with steps.entered(
                "decode",
                lambda: images.decoding(
                    images.read_input(request.chunks),
                    max_pixels=max_pixels,
                    reduce_to=reduce_to,
                    picture=draw,
                    budget=budget,
                ),
            ) as decoded:
                # The 300x300 input is all the model needs: the JSON path lets go of the
                # rest (and of its share of the budget) before waiting for an interpreter.
                with steps.step("resize"):
                    model_input = detector.resize_for_model(decoded.rgb)
                width, height, picture = decoded.width, decoded.height, decoded.picture
                del decoded
                if picture is not None:  # drawn at the size it was decoded at
                    with steps.step("inference"):
                        found = model.detect_resized(model_input, *picture.size, threshold, limit)
                    with steps.step("encode"):
                        return Reply("image/png", [detector.annotate(picture, found)])
            with steps.step("inference"):
                found = model.detect_resized(model_input, width, height, threshold, limit)
        with steps.step("encode"):
            body = {"width": width, "height": height, "detections": found}
            return Reply("application/json", [detector.compact_json(body)])

    return Function(handle=handle, params=params, close=model.close)
