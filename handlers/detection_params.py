"""The params ssd and ssd-video share: which detections to keep.

Kept apart from handlers/detector.py so that the function modules can declare their
params without importing the model's libraries.
"""

from __future__ import annotations

from handlers.base import Param, Params

MAX_DETECTIONS = 100

THRESHOLD = Param("threshold", "number", "minimum confidence", default=0.5, low=0.0, high=1.0)


def max_detections(per: str, note: str = "") -> Param:
    """The max_detections param; ``per`` says what it counts in ("to return", "per frame")."""
    return Param(
        "max_detections",
        "integer",
        f"most boxes {per}",
        default=20,
        low=1,
        high=MAX_DETECTIONS,
        note=note,
    )


def read(params: Params, limit: Param) -> tuple[float, int]:
    """(threshold, max_detections) from a call's params, checked."""
    return THRESHOLD.number(params), limit.integer(params)
