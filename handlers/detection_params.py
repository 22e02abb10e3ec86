"""The params ssd and ssd-video share: which detections to keep.

Kept apart from handlers/detector.py so that the function modules can declare their
params without importing the model's libraries.
"""

from __future__ import annotations

from collections.abc import Mapping

from handlers.base import Params

DEFAULT_THRESHOLD = 0.5
DEFAULT_MAX_DETECTIONS = 20
MAX_DETECTIONS = 100


def described(per: str, note: str = "") -> Mapping[str, str]:
    """The shared params' descriptions; ``per`` says what max_detections counts in."""
    return {
        "threshold": f"minimum confidence, 0..1 (default {DEFAULT_THRESHOLD})",
        "max_detections": (
            f"most boxes {per}, 1..{MAX_DETECTIONS} (default {DEFAULT_MAX_DETECTIONS}{note})"
        ),
    }


def read(params: Params) -> tuple[float, int]:
    """(threshold, max_detections) from a call's params, checked."""
    threshold = params.get_float("threshold", DEFAULT_THRESHOLD, low=0.0, high=1.0)
    limit = params.get_int("max_detections", DEFAULT_MAX_DETECTIONS, low=1, high=MAX_DETECTIONS)
    return threshold, limit
