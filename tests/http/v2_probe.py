"""Drive the HTTP front's /v2 with tritonclient's HTTP client; run as a script, in its own process.

    python tests/http/v2_probe.py HOST:PORT < steps.json > results.json

tritonclient.http brings gevent along, which has no business in the pytest process
that runs grpcio; so, as tests/oip/triton_probe.py does for tritonclient.grpc, the
tests run it here. This script imports no project code.

Steps are a JSON list; each is an object with "op" and its arguments:

    {"op": "live"} / {"op": "server_ready"} / {"op": "server_metadata"}
    {"op": "model_ready", "model": NAME, "version": V}
    {"op": "metadata", "model": NAME, "version": V}
    {"op": "infer", "model": NAME, "data": BASE64, "params": {...}, "version": V,
     "binary_input": BOOL (true), "outputs": "binary" | "json" | "none" ("binary"),
     "request_id": ID, "headers": {...}}
    {"op": "wait_model_ready", "model": NAME, "want": BOOL, "timeout": SECONDS}

Each result is {"ok": true, "value": ...} or {"ok": false, "status": "404",
"message": ...}. An infer's value is {"output": BASE64, "response": the answer's JSON}.
"""

from __future__ import annotations

import base64
import json
import sys
import time

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException


def infer(client: triton.InferenceServerClient, step: dict) -> dict:
    data = base64.b64decode(step.get("data", ""))
    tensor = triton.InferInput("INPUT", [1], "BYTES")
    tensor.set_data_from_numpy(
        np.array([data], dtype=np.object_), binary_data=step.get("binary_input", True)
    )
    form = step.get("outputs", "binary")
    outputs = None
    if form != "none":
        outputs = [triton.InferRequestedOutput("OUTPUT", binary_data=form == "binary")]
    result = client.infer(
        step["model"],
        [tensor],
        model_version=step.get("version", ""),
        outputs=outputs,
        request_id=step.get("request_id", ""),
        parameters=step.get("params") or None,
        headers=step.get("headers"),
    )
    element = result.as_numpy("OUTPUT")[0]
    if isinstance(element, str):  # an answer in the JSON: text, or base64 when it says so
        parameters = result.get_output("OUTPUT").get("parameters", {})
        base64_text = parameters.get("content_type") == "base64"
        element = base64.b64decode(element) if base64_text else element.encode()
    return {"output": base64.b64encode(element).decode(), "response": result.get_response()}


def wait_model_ready(client: triton.InferenceServerClient, step: dict) -> dict:
    deadline = time.monotonic() + step.get("timeout", 20)
    while True:
        ready = client.is_model_ready(step["model"])
        if ready == step["want"] or time.monotonic() > deadline:
            return {"ready": ready}
        time.sleep(0.1)


def run(client: triton.InferenceServerClient, step: dict):
    op = step["op"]
    if op == "live":
        return client.is_server_live()
    if op == "server_ready":
        return client.is_server_ready()
    if op == "server_metadata":
        return client.get_server_metadata()
    if op == "model_ready":
        return client.is_model_ready(step["model"], step.get("version", ""))
    if op == "metadata":
        return client.get_model_metadata(step["model"], step.get("version", ""))
    if op == "infer":
        return infer(client, step)
    if op == "wait_model_ready":
        return wait_model_ready(client, step)
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    address = sys.argv[1]
    steps = json.load(sys.stdin)
    results = []
    client = triton.InferenceServerClient(address, network_timeout=120.0, connection_timeout=30.0)
    try:
        for step in steps:
            try:
                results.append({"ok": True, "value": run(client, step)})
            except InferenceServerException as exc:
                results.append({"ok": False, "status": exc.status(), "message": exc.message()})
    finally:
        client.close()
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
