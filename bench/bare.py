"""The bare path: ssd as a plain in-process script would run it, the baseline of every ssd figure.

One TFLite interpreter built straight from the model file that ``make model``
fetched, with ``num_threads`` = every core by default (``os.cpu_count()``), as a
user's own script would build it; no pool, no queue, no service. Per call it does
what dcf's ``ssd`` does for JSON: decode (``handlers.images.decode_image``, the
same decoder, JPEG draft mode included, so decoding costs the same on both sides),
stretch to 300x300 with ``cv2.INTER_LINEAR``, invoke, and the same compact JSON
(``handlers.detector.to_detections``). Building the interpreter here, rather than
through ``handlers.detector.Detector``, keeps the baseline fixed while the served
path's interpreter policy changes.

The MLServer and PyTriton runtimes (bench/peers/) import this module too, so the
peers do exactly this work per call.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from handlers.detector import compact_json, parse_labels, resize_for_model, to_detections
from handlers.model_fetch import LABELS_NAME, MODEL_NAME, default_model_dir

THRESHOLD = 0.5
MAX_DETECTIONS = 20


def all_cores() -> int:
    """The interpreter threads of the bare script: one per core, as ``num_threads`` is set."""
    return os.cpu_count() or 1


def interpreter_class() -> Any:
    """LiteRT's interpreter when installed, else tf.lite's: the class dcf's workers use."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    for name, value in (("TF_CPP_MIN_LOG_LEVEL", "3"), ("TF_ENABLE_ONEDNN_OPTS", "0")):
        os.environ.setdefault(name, value)
    from tensorflow import lite

    return lite.Interpreter


class PlainSsd:
    """One interpreter of ``threads`` threads and the labels; one call at a time.

    A lock keeps it correct if callers share it across threads (an interpreter is
    not thread-safe); the bare script itself is sequential and never waits on it.
    """

    def __init__(self, threads: int | None = None, model_dir: Path | None = None) -> None:
        folder = Path(model_dir or default_model_dir())
        self.threads = threads or all_cores()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # tf.lite's "moved to LiteRT"
            self.interpreter = interpreter_class()(
                model_path=str(folder / MODEL_NAME), num_threads=self.threads
            )
        self.interpreter.allocate_tensors()
        self.input_index = int(self.interpreter.get_input_details()[0]["index"])
        # TFLite_Detection_PostProcess names its outputs <name>, :1, :2, :3: boxes,
        # classes, scores, count, whatever order the converter listed them in.
        by_name = sorted(self.interpreter.get_output_details(), key=lambda d: str(d["name"]))
        self.outputs = [int(d["index"]) for d in by_name]
        self.labels = parse_labels((folder / LABELS_NAME).read_text())
        self._lock = threading.Lock()
        self.infer(np.full((300, 300, 3), 128, np.uint8))  # first invoke builds XNNPACK's plan

    def infer(self, model_input: np.ndarray) -> tuple[np.ndarray, ...]:
        """Raw boxes, classes, scores and count for one 300x300 RGB image."""
        with self._lock:
            self.interpreter.set_tensor(self.input_index, model_input[None])
            self.interpreter.invoke()
            boxes, classes, scores, count = (self.interpreter.get_tensor(i) for i in self.outputs)
        return boxes[0], classes[0], scores[0], count.reshape(-1)[:1]

    def detections(self, rgb: np.ndarray, width: int, height: int) -> list[dict[str, Any]]:
        """ssd's detections of an RGB picture of the given full size."""
        boxes, classes, scores, count = self.infer(resize_for_model(rgb))
        n = min(int(count[0]), len(scores))
        return to_detections(
            boxes[:n],
            classes[:n],
            scores[:n],
            self.labels,
            width=width,
            height=height,
            threshold=THRESHOLD,
            max_detections=MAX_DETECTIONS,
        )

    def answer(self, data: bytes) -> bytes:
        """Image bytes to ssd's JSON answer: decode, resize, invoke, JSON."""
        from handlers import images
        from handlers.detector import INPUT_SIZE

        image = images.decode_image(data, reduce_to=INPUT_SIZE)
        found = self.detections(image.rgb, image.width, image.height)
        return compact_json({"width": image.width, "height": image.height, "detections": found})
