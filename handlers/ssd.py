"""The ``ssd`` function (alias ``ssd-test``): objects in one image, as JSON or a PNG.

Input: one image (JPEG, PNG, BMP, WebP, TIFF, GIF; or base64 text of one).
Output: ``{"width": W, "height": H, "detections": [...]}`` in compact JSON, boxes
in the image's pixels after EXIF rotation; or, with ``annotate=true``, the image
as a PNG with the boxes drawn. Params are checked before the input is read, so a
bad param fails fast without waiting for the upload.

This module imports nothing heavy: the detector (numpy, OpenCV, TensorFlow) is
imported and loaded by ``create``, once per worker.
"""

from __future__ import annotations

from typing import Any, Mapping

from handlers import detection_params
from handlers.base import Function, Reply, Request

PARAMS: Mapping[str, str] = {
    **detection_params.described("to return", "; the model itself proposes at most 20"),
    "annotate": "true: reply with the image as PNG, boxes drawn (default false)",
}


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
    ``interpreters`` (parallel inferences, default one per CPU), ``threads`` (per
    interpreter, default 1), ``max_pixels`` (largest image accepted, default 50
    megapixels), ``jpeg_draft`` (decode big JPEGs at reduced scale, default true).
    Raises detector.ModelMissing, whose message says to run ``make model``.
    """
    from handlers import detector, images  # heavy imports: load time only

    max_pixels = detector.positive_int_option(
        options, "max_pixels", images.DEFAULT_MAX_PIXELS, "ssd"
    )
    reduce_to = detector.INPUT_SIZE if _bool(options, "jpeg_draft", True) else None
    model = detector.Detector.from_options(options, "ssd")

    def handle(request: Request) -> Reply:
        params = request.params
        threshold, limit = detection_params.read(params)
        draw = params.get_bool("annotate", False)
        image = images.decode_image(
            request.read(),
            max_pixels=max_pixels or images.DEFAULT_MAX_PIXELS,
            reduce_to=None if draw else reduce_to,
        )
        found = model.detect(image.rgb, threshold, limit, size=(image.width, image.height))
        if draw:
            return Reply("image/png", [detector.annotate(image.rgb, found)])
        body = {"width": image.width, "height": image.height, "detections": found}
        return Reply("application/json", [detector.compact_json(body)])

    return Function(handle=handle, params=PARAMS, close=model.close)
