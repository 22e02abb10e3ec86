"""MLServer runtimes for the peer benchmark; MLServer imports them from the checkout.

They run inside build/peers-venv (MLServer 1.7 with the same TensorFlow, OpenCV
and NumPy as dcf), never in the project's environment. Both take one BYTES input
and answer one BYTES output, as dcf's Open Inference front does:

* ``SsdRuntime``: ssd's JSON for one image, through bench.bare.PlainSsd (the same
  decode, resize, invoke and JSON as dcf's ssd). ``extra`` settings:
  ``interpreters`` (how many inferences at once in this process, default 1) and
  ``threads`` (each interpreter's, default every core). With one interpreter the
  call runs on the event loop, as a plain synchronous MLServer runtime does; with
  more, each call runs on a thread with an interpreter of its own.
* ``EchoRuntime``: the input back, byte for byte.
"""

from __future__ import annotations

import asyncio
import queue

from mlserver import MLModel  # type: ignore[import-not-found]  # build/peers-venv only
from mlserver.types import (  # type: ignore[import-not-found]
    InferenceRequest,
    InferenceResponse,
    ResponseOutput,
)

from bench.bare import PlainSsd, all_cores


def _only_input(payload: InferenceRequest) -> bytes:
    (tensor,) = payload.inputs
    (data,) = tensor.data
    return data if isinstance(data, bytes) else str(data).encode()


def _bytes_response(name: str, data: bytes) -> InferenceResponse:
    output = ResponseOutput(name="OUTPUT", shape=[1], datatype="BYTES", data=[data])
    return InferenceResponse(model_name=name, outputs=[output])


class SsdRuntime(MLModel):
    """ssd's per-call work on a pool of plain interpreters."""

    async def load(self) -> bool:
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        count = int(extra.get("interpreters", 1))
        threads = int(extra.get("threads", all_cores()))
        self._pool: queue.SimpleQueue[PlainSsd] = queue.SimpleQueue()
        for _ in range(count):
            self._pool.put(PlainSsd(threads))
        self._threaded = count > 1
        return True

    def _answer(self, data: bytes) -> bytes:
        model = self._pool.get()
        try:
            return model.answer(data)
        finally:
            self._pool.put(model)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        data = _only_input(payload)
        if self._threaded:
            answer = await asyncio.to_thread(self._answer, data)
        else:
            answer = self._answer(data)
        return _bytes_response(self.name, answer)


class EchoRuntime(MLModel):
    """The input back, as hello-dcf answers."""

    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        return _bytes_response(self.name, _only_input(payload))
