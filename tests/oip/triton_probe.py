"""Drive a gateway with tritonclient's gRPC client; run as a script, in its own process.

    python tests/oip/triton_probe.py HOST:PORT < steps.json > results.json

tritonclient ships its own ``inference`` protos with the same message names as
ours (protos/inference/grpc_predict_v2.proto), and one Python process cannot hold
both in its descriptor pool. So the tests run tritonclient here, apart from the
pytest process, which imports ours. This script must never import ``protos``.

Steps are a JSON list; each is an object with "op" and its arguments:

    {"op": "live"} / {"op": "server_ready"} / {"op": "server_metadata"}
    {"op": "model_ready", "model": NAME}
    {"op": "metadata", "model": NAME, "version": V}
    {"op": "infer", "model": NAME, "data": BASE64, "params": {...}, "version": V,
     "elements": [BASE64, ...] (in place of data), "input": NAME, "output": NAME}
    {"op": "wait_model_ready", "model": NAME, "want": BOOL, "timeout": SECONDS}
    {"op": "descriptor", "messages": [FULL NAME, ...]}   (field numbers and types)

Each result is {"ok": true, "value": ...} or {"ok": false, "status": "NOT_FOUND",
"message": ...}. An infer's value is {"output": BASE64, "content_type", "shape",
"datatype", "name", "model_name", "model_version"}.
"""

from __future__ import annotations

import base64
import json
import sys
import time

import numpy as np
import tritonclient.grpc as triton
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

# Beside this script, found as it runs from its folder; imports no generated code.
from wire import field_shapes  # type: ignore[import-not-found]


def infer(client: triton.InferenceServerClient, step: dict) -> dict:
    elements = [base64.b64decode(e) for e in step.get("elements", [step.get("data", "")])]
    tensor = triton.InferInput(step.get("input", "INPUT"), [len(elements)], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_))
    result = client.infer(
        step["model"],
        [tensor],
        model_version=step.get("version", ""),
        outputs=[triton.InferRequestedOutput(step.get("output", "OUTPUT"))],
        parameters=step.get("params") or None,
        client_timeout=step.get("timeout", 120),
    )
    response = result.get_response()
    output = result.as_numpy("OUTPUT")
    return {
        "output": base64.b64encode(output[0]).decode(),
        "shape": list(output.shape),
        "content_type": response.parameters["content_type"].string_param,
        "datatype": response.outputs[0].datatype,
        "name": response.outputs[0].name,
        "model_name": response.model_name,
        "model_version": response.model_version,
        "raw": len(response.raw_output_contents) == 1,
    }


def wait_model_ready(client: triton.InferenceServerClient, step: dict) -> dict:
    deadline = time.monotonic() + step.get("timeout", 20)
    while True:
        ready = client.is_model_ready(step["model"])
        if ready == step["want"] or time.monotonic() > deadline:
            return {"ready": ready}
        time.sleep(0.1)


def descriptor(step: dict) -> dict:
    """tritonclient's messages: {field: [number, type, repeated, message type, oneof]}."""
    from tritonclient.grpc import service_pb2

    pool = service_pb2.DESCRIPTOR.pool
    out = {}
    for name in step["messages"]:
        message = pool.FindMessageTypeByName(name)
        out[name] = field_shapes(message)
    return out


def run(client: triton.InferenceServerClient, step: dict):
    op = step["op"]
    if op == "live":
        return client.is_server_live()
    if op == "server_ready":
        return client.is_server_ready()
    if op == "server_metadata":
        return json_format.MessageToDict(client.get_server_metadata())
    if op == "model_ready":
        return client.is_model_ready(step["model"], step.get("version", ""))
    if op == "metadata":
        reply = client.get_model_metadata(step["model"], step.get("version", ""))
        return json_format.MessageToDict(reply)
    if op == "infer":
        return infer(client, step)
    if op == "wait_model_ready":
        return wait_model_ready(client, step)
    if op == "descriptor":
        return descriptor(step)
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    address = sys.argv[1]
    steps = json.load(sys.stdin)
    results = []
    with triton.InferenceServerClient(address) as client:
        for step in steps:
            try:
                results.append({"ok": True, "value": run(client, step)})
            except InferenceServerException as exc:
                status = (exc.status() or "").removeprefix("StatusCode.")
                results.append({"ok": False, "status": status, "message": exc.message()})
    assert not any(name.startswith("protos") for name in sys.modules), "imported our protos"
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
