"""SSD MobileNet v2 (COCO, uint8-quantized TFLite): detect and draw.

Shared by the ``ssd`` and ``ssd-video`` functions. Image decoding lives in
``handlers.images`` (re-exported here). Nothing heavy happens at import:
TensorFlow is imported by ``Detector.load`` only, so the gateway and other
workers can import handler modules for free.

Choices, and why:

* Latency when idle, throughput when busy. Interpreters are not thread-safe and
  their thread count is fixed when they are built, so a ``Detector`` lends them
  from an ``InterpreterPool``: one per core of one thread each (``interpreters``,
  ``threads``) for calls in flight together, and one more with a thread per core
  (``lone_threads``) for a call alone. ``invoke`` releases the GIL, so they run in
  parallel. On the 2-core target the model takes about 11 ms on two threads and
  20 ms on one; under load, two 1-thread interpreters give more images per second
  than one 2-thread interpreter. The extra interpreter costs about 13 MiB and a
  thread.
* The model is checked against its pinned size and SHA-256 when a worker loads it
  (about 10 ms for its 6 MB), and the interpreters are built from those very bytes,
  so what was checked is what runs: a file replaced between check and load, or
  damaged on a disk or in an image layer after ``make model`` verified it, is
  refused with a log line saying so.
* Input is resized to 300x300 with ``cv2.resize(INTER_LINEAR)``, ignoring aspect
  ratio: the model was trained with a fixed-shape bilinear resize, so stretching
  is what it expects. Boxes come back normalized and are scaled to the original
  image (after EXIF rotation) in integer pixels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from handlers.errors import Unavailable
from handlers.model_fetch import (
    LABELS_NAME,
    MODEL_FILES,
    MODEL_NAME,
    default_model_dir,
    sha256_hex,
)

log = logging.getLogger(__name__)

INPUT_SIZE = 300


class ModelMissing(Unavailable):
    """The model files are absent or damaged; the worker refuses to start.

    A FunctionError, so the worker host logs its one-line message ("worker ssd
    cannot start: ...") instead of a traceback.
    """


def positive_int_option(
    options: Mapping[str, Any], name: str, default: int | None, owner: str
) -> int | None:
    """A whole-number registry option >= 1, or ``default`` when absent."""
    value = options.get(name, default)
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner} option {name}: expected a whole number, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{owner} option {name}: expected >= 1, got {number}")
    return number


def compact_json(value: Any) -> bytes:
    """One JSON document without spaces, as the ssd functions answer."""
    return json.dumps(value, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- model


def parse_labels(text: str) -> dict[int, str]:
    """Parse coco_labels.txt: one ``ID  name`` per line, ids 0-based with gaps."""
    labels: dict[int, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"labels line {lineno}: expected 'ID  name', got {line!r}")
        labels[int(parts[0])] = parts[1].strip()
    return labels


def check_model_dir(model_dir: Path) -> dict[str, bytes]:
    """The model files' contents, once each has its pinned size and SHA-256; else ModelMissing.

    Hashed at every load, not only when fetched: a file that went bad on a disk, in
    a volume or in an image layer since ``make model`` verified it has the right
    size and the wrong bytes. Hashing 6 MB costs about 10 ms, once per worker.
    """
    hint = f"run `make model` (python -m handlers.model_fetch --dest {model_dir})"
    contents: dict[str, bytes] = {}
    for name, spec in MODEL_FILES.items():
        path = model_dir / name
        if not path.is_file():
            raise ModelMissing(f"model file {path} is missing: {hint}")
        size = path.stat().st_size
        if size != spec.size:
            raise ModelMissing(f"model file {path} is {size} bytes, expected {spec.size}: {hint}")
        data = path.read_bytes()
        digest = sha256_hex(data)
        if len(data) != spec.size or digest != spec.sha256:
            raise ModelMissing(
                f"model file {path} fails its checksum (sha256 {digest}, expected "
                f"{spec.sha256}): it is damaged or was replaced; {hint}"
            )
        contents[name] = data
    return contents


# Start-up notices TensorFlow's C++ side prints straight to fd 2.
_TF_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] "
    r"|INFO: (Created TensorFlow Lite|Initialized TensorFlow Lite))"
)


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Drop TensorFlow's start-up notices from fd 2; pass everything else through.

    TF 2.21 prints absl/CUDA/XNNPACK notices from C++ before its own log settings
    apply, so TF_CPP_MIN_LOG_LEVEL alone cannot silence them. fd 2 goes to a temp
    file while TensorFlow loads (once, at worker start-up, before any request);
    afterwards the known notices go to the debug log and any other line, such as
    an error or another thread's log record, is written back to stderr as is.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = []
            for line in sink.read().splitlines(keepends=True):
                text = line.decode("utf-8", "replace").rstrip()
                if _TF_NOISE.match(text):
                    log.debug("tensorflow: %s", text)
                elif text:
                    kept.append(line)
            if kept:
                os.write(2, b"".join(kept))


def _interpreter_class() -> Any:
    """LiteRT's interpreter when it is installed, else tf.lite.Interpreter.

    LiteRT first for memory: two loaded interpreters take 70 MiB in a process of
    their own, where importing TensorFlow alone takes about 650 MiB of a worker's
    794 MiB baseline. Their outputs on this model are the same, bit for bit
    (checked on grace_hopper.jpg, LiteRT 2.3 against TensorFlow 2.21's tf.lite).
    TensorFlow reads its log settings when first imported, so they are set just
    before, unless the operator set them. oneDNN is off: TFLite does not use it,
    and its notice is noise.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter  # light: load time only

        return Interpreter
    except ImportError:
        pass
    for name, value in (("TF_CPP_MIN_LOG_LEVEL", "3"), ("TF_ENABLE_ONEDNN_OPTS", "0")):
        os.environ.setdefault(name, value)
    from tensorflow import lite  # heavy: load time only

    return lite.Interpreter


@dataclass(frozen=True)
class _Slot:
    """One interpreter, its thread count and the tensor indices it was found to use."""

    interpreter: Any
    threads: int
    input_index: int
    boxes: int
    classes: int
    scores: int
    count: int


def _make_slot(interpreter_class: Any, model: bytes, model_path: Path, threads: int) -> _Slot:
    """One interpreter built from ``model``, the checked bytes (``model_path`` names them)."""
    with warnings.catch_warnings():
        # tf.lite.Interpreter warns that it moved to LiteRT; it works, and the
        # LiteRT, preferred when installed, takes over at its eventual removal.
        warnings.simplefilter("ignore", UserWarning)
        interpreter = interpreter_class(model_content=model, num_threads=threads)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    if tuple(inp["shape"]) != (1, INPUT_SIZE, INPUT_SIZE, 3) or inp["dtype"] != np.uint8:
        raise ModelMissing(f"{model_path}: unexpected input {inp['shape']} {inp['dtype']}")
    outputs = _find_outputs(interpreter.get_output_details())
    return _check_roles(_Slot(interpreter, threads, int(inp["index"]), **outputs))


def _find_outputs(details: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Pick boxes/classes/scores/count by shape and name, not position.

    Boxes are the only [1,N,4] tensor and count the only one-element tensor.
    Classes and scores are both [1,N]; TFLite_Detection_PostProcess names them
    ``:1`` and ``:2``. Converters have reordered outputs between TF versions, so
    ``_check_roles`` confirms the pair by value after a first run.
    """
    boxes = [d for d in details if len(d["shape"]) == 3 and d["shape"][-1] == 4]
    count = [d for d in details if int(np.prod(d["shape"])) == 1]
    pair = [d for d in details if len(d["shape"]) == 2 and d["shape"][-1] > 1]
    if len(boxes) != 1 or len(count) != 1 or len(pair) != 2:
        shapes = [(d["name"], list(d["shape"])) for d in details]
        raise ModelMissing(f"unexpected SSD outputs {shapes}: run `make model`")
    classes, scores = sorted(pair, key=lambda d: str(d["name"]))
    return {
        "boxes": int(boxes[0]["index"]),
        "classes": int(classes["index"]),
        "scores": int(scores["index"]),
        "count": int(count[0]["index"]),
    }


def _check_roles(slot: _Slot) -> _Slot:
    """Run a grey image (also warms up XNNPACK); swap classes/scores if needed.

    Class ids are whole numbers and scores are fractions in [0, 1]; a grey frame
    gives low, non-integral scores, which tells the two apart.
    """
    grey = np.full((1, INPUT_SIZE, INPUT_SIZE, 3), 128, np.uint8)
    interpreter = slot.interpreter
    interpreter.set_tensor(slot.input_index, grey)
    interpreter.invoke()
    classes = interpreter.get_tensor(slot.classes)
    scores = interpreter.get_tensor(slot.scores)

    def integral(a: np.ndarray) -> bool:
        return bool(np.all(a == np.round(a)))

    if not integral(classes) and integral(scores):
        log.debug("SSD outputs: classes and scores are swapped by name; using values")
        return dataclasses.replace(slot, classes=slot.scores, scores=slot.classes)
    return slot


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's count.

    Affinity, not ``os.cpu_count()``: a container pinned to 2 of 64 cores would
    otherwise build 64-thread interpreters. A CFS quota (a Kubernetes CPU limit)
    is not visible here: the registry sets ``interpreters`` and ``lone_threads``
    to the pod's cores instead.
    """
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class InterpreterPool:
    """Interpreters lent one inference at a time: every core to a lone call, one each under load.

    An interpreter's thread count is fixed when it is built (tf.lite.Interpreter
    takes ``num_threads`` in its constructor only, and its XNNPACK delegate sizes
    its thread pool then), so threads cannot be sized per call. The pool holds
    instead ``narrow`` interpreters (one thread each, one per core, by default) and
    at most one ``wide`` interpreter (a thread per core):

    * A lone call gets the wide one: an inference finding no other call in flight
      (see ``call``) and no other inference running has every core.
    * Any other inference gets a narrow one, or waits for one. Under load only
      the narrow ones run, one per core: more images per second than one wide
      interpreter, whose threads wait for each other at every layer.
    * An inference never takes the wide one while another runs, even when every
      narrow one is lent: that would put more threads than cores to work. When a
      second call comes while the wide one is busy, it starts on a narrow one at
      once, and the cores are shared by one thread more until the wide one is done.

    Outputs are the same bit for bit whichever interpreter ran (the model is
    uint8-quantized; checked on photos and noise, tests/handlers/test_detector_pool.py),
    so an answer does not depend on the load.
    """

    def __init__(self, narrow: Sequence[_Slot], wide: _Slot | None = None) -> None:
        if not narrow:
            raise ValueError("an interpreter pool needs at least one narrow interpreter")
        self._changed = threading.Condition()
        self._narrow_free: list[_Slot] = list(narrow)
        self._wide_slot = wide
        self._wide: _Slot | None = wide  # None while lent (or when there is none)
        self._lent = 0
        self._calls = 0
        self._closed = False
        self.size = len(narrow)
        self.capacity = len(narrow) + (wide is not None)
        self.threads = narrow[0].threads
        self.lone_threads = wide.threads if wide is not None else self.threads

    @property
    def free(self) -> int:
        """How many interpreters are in the pool now, not lent (all of them when idle)."""
        with self._changed:
            return len(self._narrow_free) + (self._wide is not None)

    @property
    def calls(self) -> int:
        """How many calls are in flight (inside ``call`` blocks)."""
        with self._changed:
            return self._calls

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Count one call in flight for the block: from its decoding to its last inference.

        Calls decoding or waiting for an interpreter are load too: a call's own
        inference gets the wide interpreter only while it is the one call in flight.
        Inferences outside any block (a script using the detector directly) only
        look at the inferences running.
        """
        with self._changed:
            self._calls += 1
        try:
            yield
        finally:
            with self._changed:
                self._calls -= 1

    def in_flight_per_call(self) -> int:
        """How many inferences a call should keep running at once, now.

        One while it is the only call and there is a wide interpreter (the one
        inference then has every core; a second would share them with the wide
        one's threads); else one per narrow interpreter.
        """
        with self._changed:
            alone = self._calls <= 1 and self._wide_slot is not None
        return 1 if alone else self.size

    @contextlib.contextmanager
    def lend(self) -> Iterator[_Slot]:
        """An interpreter for one inference, given back when the block ends, however it ends.

        Blocks while every interpreter the policy allows is lent; raises RuntimeError
        once the pool is closed.
        """
        slot = self._take()
        try:
            yield slot
        finally:
            self._give_back(slot)

    def _take(self) -> _Slot:
        with self._changed:
            while True:
                if self._closed:
                    raise RuntimeError("the detector is closed")
                if self._wide is not None and self._lent == 0 and self._calls <= 1:
                    slot, self._wide = self._wide, None
                elif self._narrow_free:
                    slot = self._narrow_free.pop()
                else:
                    self._changed.wait()
                    continue
                self._lent += 1
                return slot

    def _give_back(self, slot: _Slot) -> None:
        with self._changed:
            self._lent -= 1
            if not self._closed:
                if slot is self._wide_slot:
                    self._wide = slot
                else:
                    self._narrow_free.append(slot)
            # Every waiter looks again: a narrow one came back, or the pool went idle
            # (the wide one is then the first waiter's).
            self._changed.notify_all()

    def close(self) -> None:
        """Drop the interpreters; one still lent is dropped when given back."""
        with self._changed:
            self._closed = True
            self._narrow_free.clear()
            self._wide = self._wide_slot = None
            self._changed.notify_all()


class Detector:
    """A pool of loaded interpreters plus labels; safe to share across threads."""

    def __init__(self, pool: InterpreterPool, labels: Mapping[int, str]) -> None:
        self.pool = pool
        self.labels: Mapping[int, str] = dict(labels)

    @classmethod
    def load(
        cls,
        model_dir: Path | str,
        *,
        interpreters: int | None = None,
        threads: int = 1,
        lone_threads: int | None = None,
    ) -> Detector:
        """Check the files, import TensorFlow quietly and build the pool.

        ``interpreters`` is how many inferences run at once under load (default one
        per core), each on ``threads`` threads; ``lone_threads`` (default one per
        core) is the thread count of the one more interpreter that an inference
        gets when it is the only one in flight. It is built only when it has more
        threads than the others (``lone_threads`` = ``threads``: none).
        """
        model_dir = Path(model_dir)
        files = check_model_dir(model_dir)
        return cls.build(
            files[MODEL_NAME],
            model_dir / MODEL_NAME,
            parse_labels(files[LABELS_NAME].decode("utf-8")),
            interpreters=interpreters,
            threads=threads,
            lone_threads=lone_threads,
        )

    @classmethod
    def build(
        cls,
        model: bytes,
        model_path: Path,
        labels: Mapping[int, str],
        *,
        interpreters: int | None = None,
        threads: int = 1,
        lone_threads: int | None = None,
    ) -> Detector:
        """The pool built from ``model``, bytes already checked (``model_path`` names them).

        The interpreters are built from those very bytes, so what was checked is
        what runs; TensorFlow is imported quietly. Counts as for ``load``.
        """
        count = interpreters if interpreters is not None else usable_cores()
        lone = lone_threads if lone_threads is not None else usable_cores()
        if count < 1 or threads < 1 or lone < 1:
            raise ValueError(
                f"interpreters, threads and lone_threads must be >= 1, got {count}, "
                f"{threads}, {lone}"
            )
        with _quiet_native_stderr():
            interpreter_class = _interpreter_class()
            narrow = [
                _make_slot(interpreter_class, model, model_path, threads) for _ in range(count)
            ]
            wide = None
            if lone > threads:
                wide = _make_slot(interpreter_class, model, model_path, lone)
        log.info(
            "SSD model loaded: %d interpreters x %d threads%s",
            count,
            threads,
            f", and one of {lone} threads for a lone call" if wide is not None else "",
        )
        return cls(InterpreterPool(narrow, wide), labels)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], owner: str) -> Detector:
        """``load`` configured by a function's registry options.

        ``model_dir`` (default $DCF_MODEL_DIR or <repo>/models), ``interpreters``
        (default one per core), ``threads`` (default 1) and ``lone_threads``
        (default one per core); ``owner`` names the function in error messages.
        """
        return cls.load(
            Path(options.get("model_dir") or default_model_dir()),
            interpreters=positive_int_option(options, "interpreters", None, owner),
            threads=positive_int_option(options, "threads", 1, owner) or 1,
            lone_threads=positive_int_option(options, "lone_threads", None, owner),
        )

    @property
    def size(self) -> int:
        """How many inferences run at once under load (the narrow interpreters)."""
        return self.pool.size

    def call(self) -> contextlib.AbstractContextManager[None]:
        """Count one call in flight for a block (InterpreterPool.call): wrap a call's work."""
        return self.pool.call()

    def infer(self, input_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Run one 300x300x3 uint8 image; return raw boxes, classes, scores, count.

        Blocks until the pool lends an interpreter (see InterpreterPool).
        """
        batch = np.ascontiguousarray(input_rgb, dtype=np.uint8)[None]
        with self.pool.lend() as slot:
            interpreter = slot.interpreter
            interpreter.set_tensor(slot.input_index, batch)
            interpreter.invoke()
            boxes = interpreter.get_tensor(slot.boxes)[0]
            classes = interpreter.get_tensor(slot.classes)[0]
            scores = interpreter.get_tensor(slot.scores)[0]
            count = int(interpreter.get_tensor(slot.count).reshape(-1)[0])
        return boxes, classes, scores, min(count, len(scores))

    def detect(
        self,
        rgb: np.ndarray,
        threshold: float,
        max_detections: int,
        *,
        size: tuple[int, int] | None = None,
    ) -> list[dict[str, Any]]:
        """Detections in pixels of an image ``size`` = (width, height).

        ``size`` defaults to ``rgb``'s own; pass the full size when ``rgb`` was
        decoded reduced (images.DecodedImage.width/height).
        """
        width, height = size if size is not None else (rgb.shape[1], rgb.shape[0])
        return self.detect_resized(resize_for_model(rgb), width, height, threshold, max_detections)

    def detect_resized(
        self,
        input_rgb: np.ndarray,
        width: int,
        height: int,
        threshold: float,
        max_detections: int,
    ) -> list[dict[str, Any]]:
        """Like ``detect`` for an input already resized to 300x300 (video frames)."""
        boxes, classes, scores, count = self.infer(input_rgb)
        return to_detections(
            boxes[:count],
            classes[:count],
            scores[:count],
            self.labels,
            width=width,
            height=height,
            threshold=threshold,
            max_detections=max_detections,
        )

    def close(self) -> None:
        """Drop the interpreters; a call still running drops its own when done."""
        self.pool.close()


def resize_for_model(rgb: np.ndarray) -> np.ndarray:
    """Stretch to the model's 300x300 with bilinear interpolation (cv2.INTER_LINEAR)."""
    if rgb.shape[:2] == (INPUT_SIZE, INPUT_SIZE):
        return rgb
    return cv2.resize(rgb, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)


def to_detections(
    boxes: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray,
    labels: Mapping[int, str],
    *,
    width: int,
    height: int,
    threshold: float,
    max_detections: int,
) -> list[dict[str, Any]]:
    """Raw SSD outputs to sorted, filtered, deduplicated pixel boxes.

    Boxes are [ymin, xmin, ymax, xmax] in [0, 1] (slightly outside, at times).
    Dropped: scores under ``threshold``, class ids the labels file leaves out
    (COCO's unused ids, never trained), boxes empty after rounding and clamping,
    and repeats of a class and box already reported with a higher score.
    """
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    seen: set[tuple[int, int, int, int, int]] = set()
    found: list[dict[str, Any]] = []
    for i in order:
        score = float(scores[i])
        if score < threshold or len(found) >= max_detections:
            break
        class_id = int(classes[i])
        label = labels.get(class_id)
        if label is None:
            continue
        ymin, xmin, ymax, xmax = (float(v) for v in np.clip(boxes[i], 0.0, 1.0))
        box = (round(xmin * width), round(ymin * height), round(xmax * width), round(ymax * height))
        if box[0] >= box[2] or box[1] >= box[3] or (class_id, *box) in seen:
            continue
        seen.add((class_id, *box))
        found.append(
            {
                "class": class_id,
                "label": label,
                "confidence": round(score, 4),
                "xmin": box[0],
                "ymin": box[1],
                "xmax": box[2],
                "ymax": box[3],
            }
        )
    return found


# --------------------------------------------------------------------------- draw

_PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)


def annotate(picture: Image.Image | np.ndarray, detections: Sequence[Mapping[str, Any]]) -> bytes:
    """PNG of ``picture`` with each detection's box and ``label confidence`` drawn.

    A Pillow image (RGB) is drawn on in place: a copy of a whole photo would cost 4
    bytes a pixel more (see handlers.images on memory); an array is copied first.
    Line width and font scale with the image so labels stay legible on both a
    thumbnail and a 12-megapixel photo. PNG compression is level 1: the pixels
    are a photo, so higher levels cost seconds and save little.
    """
    if isinstance(picture, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(picture, dtype=np.uint8)).copy()
    else:
        image = picture
    width, height = image.size
    short = min(width, height)
    line = max(1, round(short / 250))
    font = ImageFont.load_default(size=max(10, round(short / 35)))
    draw = ImageDraw.Draw(image)
    for det in detections:
        colour = _PALETTE[int(det["class"]) % len(_PALETTE)]
        x0, y0 = int(det["xmin"]), int(det["ymin"])
        x1, y1 = max(x0, int(det["xmax"]) - 1), max(y0, int(det["ymax"]) - 1)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
        text = f"{det['label']} {float(det['confidence']):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left + 2 * line, bottom - top + 2 * line
        ty = y0 - text_h if y0 - text_h >= 0 else y0  # above the box if it fits
        tx = min(x0, max(0, width - text_w))
        draw.rectangle((tx, ty, tx + text_w, ty + text_h), fill=colour)
        draw.text((tx + line - left, ty + line - top), text, fill=(0, 0, 0), font=font)
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()
