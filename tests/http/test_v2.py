"""Open Inference over HTTP (/v2) on the HTTP front of a real ``python -m server``.

tritonclient's HTTP client runs in a process of its own (tests/http/v2_probe.py); raw
httpx requests show the JSON forms; the reference answers are the gateway's own over
gRPC (ModelInfer and Invoke), compared byte for byte.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import re
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import h11
import httpx
import pytest
import yaml

from handlers.errors import TABLE, InvalidInput, http_status
from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from protos.inference import grpc_predict_v2_pb2 as pb
from protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from server.oip import codec
from tests.support import (
    ROOT,
    Service,
    free_port,
    media,
    metric,
    wait_listening,
    wait_serving,
    write_registry,
)
from tests.support.http import paused, small_service, v2_probe, wait_for, worker_pid

PNG = b"\x89PNG\r\n\x1a\n"
TEXT = "Hello, DCF! \u00e9\u4e16"
BINARY_TEXT = b"Hello\x00\xff\xfe not UTF-8"


@pytest.fixture(scope="module")
def api(dcf: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dcf.http_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def channel(dcf: Service) -> Iterator[grpc.Channel]:
    with dcf.channel() as opened:
        yield opened


@pytest.fixture(scope="module")
def photo() -> bytes:
    return media.photo()


@pytest.fixture(scope="module")
def wav() -> bytes:
    return media.chirp_wav(seconds=1.0)


def http_address(service: Service) -> str:
    return f"127.0.0.1:{service.http_port}"


def model_infer(
    channel: grpc.Channel, model: str, data: bytes, params: dict | None = None
) -> tuple[str, bytes]:
    """The gateway's own ModelInfer answer: (content type, bytes)."""
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="INPUT", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(data)
    for name, value in (params or {}).items():
        request.parameters[name].CopyFrom(codec.parameter_of(name, value))
    reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=120)
    return codec.answer_of(reply)


def invoke(channel: grpc.Channel, function: str, data: bytes, params: dict | None = None) -> bytes:
    text = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in (params or {}).items()}
    request = dcf_pb2.InvokeRequest(function=function, input=data, params=text)
    return dcf_pb2_grpc.GatewayStub(channel).Invoke(request, timeout=120).output


def probed(result: dict) -> dict:
    """The value of a probe step that must have succeeded."""
    assert result["ok"], f"{result['status']}: {result['message']}"
    return result["value"]


def output_of(result: dict) -> bytes:
    return base64.b64decode(probed(result)["output"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tensor(data: list, **parameters: object) -> dict:
    entry: dict = {"name": "INPUT", "datatype": "BYTES", "shape": [1], "data": data}
    if parameters:
        entry["parameters"] = parameters
    return entry


def binary_answer(reply: httpx.Response) -> tuple[dict, bytes]:
    """A binary-form answer: its JSON, and its one BYTES element."""
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/octet-stream"
    length = int(reply.headers["inference-header-content-length"])
    head, rest = json.loads(reply.content[:length]), reply.content[length:]
    (output,) = head["outputs"]
    assert output["parameters"]["binary_data_size"] == len(rest)
    (size,) = struct.unpack_from("<I", rest)
    assert size == len(rest) - 4
    return head, rest[4:]


def json_answer(reply: httpx.Response) -> tuple[dict, bytes]:
    """A JSON-form answer: its JSON, and its one BYTES element (base64 when it says so)."""
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in reply.headers
    head = reply.json()
    (output,) = head["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("OUTPUT", "BYTES", [1])
    (element,) = output["data"]
    if output.get("parameters", {}).get("content_type") == "base64":
        return head, base64.b64decode(element)
    return head, element.encode()


def assert_v2_error(reply: httpx.Response, status: int, reason: str, *words: str) -> str:
    """The v2 error shape, its status the table's for its reason, one line naming ``words``."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert set(body) == {"error", "reason"} and body["reason"] == reason, body
    if reason in TABLE:
        assert http_status(reason) == status
    message = body["error"]
    assert message and "\n" not in message and "Traceback" not in message, body
    for word in words:
        assert word in message, body
    return message


# ---------------------------------------------------------------- tritonclient.http


def test_health_and_metadata_through_tritonclient(dcf):
    steps = [
        {"op": "live"},
        {"op": "server_ready"},
        {"op": "server_metadata"},
        {"op": "model_ready", "model": "hello-dcf"},
        {"op": "model_ready", "model": "ssd-test", "version": "1"},
        {"op": "metadata", "model": "ssd"},
        {"op": "metadata", "model": "stft", "version": "1"},
        {"op": "metadata", "model": "no-such-model"},
        {"op": "model_ready", "model": "no-such-model"},
        {"op": "metadata", "model": "ssd", "version": "2"},
    ]
    live, ready, server, hello, alias, ssd, stft, unknown, unknown_ready, version = v2_probe(
        http_address(dcf), steps
    )
    assert probed(live) is True and probed(ready) is True
    assert probed(server) == {
        "name": "dcf",
        "version": importlib.metadata.version("dcf"),
        "extensions": ["binary_tensor_data"],
    }
    assert probed(hello) is True and probed(alias) is True
    tensor = {"datatype": "BYTES", "shape": [1]}
    assert probed(ssd) == {
        "name": "ssd",
        "versions": ["1"],
        "platform": "dcf",
        "inputs": [{"name": "INPUT", **tensor}],
        "outputs": [{"name": "OUTPUT", **tensor}],
    }
    assert probed(stft)["name"] == "stft"
    assert (unknown["ok"], unknown["status"]) == (False, "404")
    assert "no-such-model" in unknown["message"] and "ssd" in unknown["message"]
    assert probed(unknown_ready) is False  # tritonclient reads any status but 200 as "no"
    assert (version["ok"], version["status"]) == (False, "404")
    assert "version '2'" in version["message"]


def test_infer_through_tritonclient_equals_the_grpc_answers(dcf, channel, photo, wav):
    steps: list[dict] = [
        {"op": "infer", "model": "ssd", "data": b64(photo), "params": {"threshold": 0.4}},
        {"op": "infer", "model": "ssd-test", "data": b64(photo), "version": "1"},
        {"op": "infer", "model": "send-wav", "data": b64(wav), "params": {"width": 320}},
        {"op": "infer", "model": "hello-dcf", "data": b64(BINARY_TEXT), "request_id": "r-1"},
        # The answer in the JSON: text as text, the rest in base64.
        {"op": "infer", "model": "hello-dcf", "data": b64(TEXT.encode()), "outputs": "json"},
        {"op": "infer", "model": "hello-dcf", "data": b64(BINARY_TEXT), "outputs": "json"},
        # No outputs named: tritonclient asks for all of them as binary data.
        {"op": "infer", "model": "ssd", "data": b64(photo), "outputs": "none"},
        # The input in the JSON (text only, as tritonclient allows).
        {"op": "infer", "model": "hello-dcf", "data": b64(TEXT.encode()), "binary_input": False},
    ]
    ssd, alias, spectrogram, echo, text, binary_in_json, all_binary, json_in = v2_probe(
        http_address(dcf), steps
    )

    content_type, expected = model_infer(channel, "ssd", photo, {"threshold": 0.4})
    assert content_type == "application/json"
    assert output_of(ssd) == expected == invoke(channel, "ssd", photo, {"threshold": "0.4"})
    assert "person" in [found["label"] for found in json.loads(expected)["detections"]]
    answer = probed(ssd)["response"]
    assert (answer["model_name"], answer["model_version"]) == ("ssd", "1")
    assert answer["parameters"] == {"content_type": "application/json"}
    assert answer["outputs"][0]["parameters"] == {"binary_data_size": 4 + len(expected)}

    default = model_infer(channel, "ssd", photo)[1]
    assert output_of(alias) == default == output_of(all_binary)
    assert probed(alias)["response"]["model_name"] == "ssd-test"

    content_type, png = model_infer(channel, "send-wav", wav, {"width": 320})
    assert (content_type, png[:8]) == ("image/png", PNG)
    assert output_of(spectrogram) == png
    assert probed(spectrogram)["response"]["parameters"] == {"content_type": "image/png"}

    assert output_of(echo) == BINARY_TEXT
    assert probed(echo)["response"]["id"] == "r-1"
    assert output_of(text) == TEXT.encode()
    assert probed(text)["response"]["outputs"][0]["data"] == [TEXT]
    assert output_of(binary_in_json) == BINARY_TEXT
    assert probed(binary_in_json)["response"]["outputs"][0]["parameters"] == {
        "content_type": "base64"
    }
    assert output_of(json_in) == TEXT.encode()


# ---------------------------------------------------------------- the JSON forms, by hand


def test_json_text_in_json_text_out(api):
    reply = api.post(
        "/v2/models/hello-dcf/infer",
        json={"id": "call-7", "inputs": [tensor([TEXT])]},
        headers={"x-request-id": "req-42"},
    )
    head, element = json_answer(reply)
    assert element == TEXT.encode()
    assert head == {
        "model_name": "hello-dcf",
        "model_version": "1",
        "id": "call-7",
        "parameters": {"content_type": "text/plain"},
        "outputs": [{"name": "OUTPUT", "datatype": "BYTES", "shape": [1], "data": [TEXT]}],
    }
    assert reply.headers["x-request-id"] == "req-42"


def test_base64_in_json_and_params_from_the_tensor(api, channel, photo):
    body = {"inputs": [tensor([b64(photo)], content_type="base64", threshold=0.3)]}
    head, element = json_answer(api.post("/v2/models/ssd/infer", json=body))
    assert element == model_infer(channel, "ssd", photo, {"threshold": 0.3})[1]
    assert head["parameters"] == {"content_type": "application/json"}


def test_png_answer_in_json_is_base64(api, channel, wav):
    body = {"inputs": [tensor([b64(wav)], content_type="base64")], "parameters": {"height": 64}}
    head, element = json_answer(api.post("/v2/models/stft/infer", json=body))
    assert head["outputs"][0]["parameters"] == {"content_type": "base64"}
    assert element == model_infer(channel, "send-wav", wav, {"height": 64})[1]
    assert element.startswith(PNG)


def test_binary_answer_asked_for_by_output_or_by_request(api):
    by_output = {
        "inputs": [tensor([TEXT])],
        "outputs": [{"name": "OUTPUT", "parameters": {"binary_data": True}}],
    }
    by_request = {"inputs": [tensor([TEXT])], "parameters": {"binary_data_output": True}}
    for body in (by_output, by_request):
        head, element = binary_answer(api.post("/v2/models/hello-dcf/infer", json=body))
        assert element == TEXT.encode()
        assert head["parameters"] == {"content_type": "text/plain"}
    # An output's own choice wins over the request's.
    overruled = {
        **by_request,
        "outputs": [{"name": "OUTPUT", "parameters": {"binary_data": False}}],
    }
    assert json_answer(api.post("/v2/models/hello-dcf/infer", json=overruled))[1] == TEXT.encode()
    # And an output may ask for base64 even when the answer is text.
    forced = {
        "inputs": [tensor([TEXT])],
        "outputs": [{"name": "OUTPUT", "parameters": {"content_type": "base64"}}],
    }
    head, element = json_answer(api.post("/v2/models/hello-dcf/infer", json=forced))
    assert element == TEXT.encode()
    assert head["outputs"][0]["data"] == [b64(TEXT.encode())]


def test_binary_tensor_data_by_hand(api, channel, photo):
    """The binary extension as tritonclient.http writes it: the JSON, then each input's
    elements, each a 4-byte little-endian length and the bytes."""
    data = struct.pack("<I", len(photo)) + photo
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "parameters": {"max_detections": 1},
        }
    ).encode()
    reply = api.post(
        "/v2/models/ssd/infer",
        content=head + data,
        headers={"inference-header-content-length": str(len(head))},
    )
    # Binary in, no output named, no binary_data_output: the answer is JSON.
    assert json_answer(reply)[1] == model_infer(channel, "ssd", photo, {"max_detections": 1})[1]


def test_raw_binary_request_is_the_input_itself(api, channel, photo):
    """Inference-Header-Content-Length: 0: no JSON, the body is the element, the answer binary."""
    reply = api.post(
        "/v2/models/ssd/versions/1/infer",
        content=photo,
        headers={"inference-header-content-length": "0"},
    )
    head, element = binary_answer(reply)
    assert element == model_infer(channel, "ssd", photo)[1]
    assert head["model_version"] == "1"


# ---------------------------------------------------------------- errors


def inputs(*tensors: dict, **rest: object) -> dict:
    return {"inputs": list(tensors), **rest}


@pytest.mark.parametrize(
    ("path", "request_args", "status", "reason", "words"),
    [
        ("hello-dcf", {"content": b"{nope"}, 400, "INVALID_INPUT", ["not JSON", "line 1"]),
        ("hello-dcf", {"json": [1]}, 400, "INVALID_INPUT", ["JSON object"]),
        ("hello-dcf", {"json": {"inputs": []}}, 400, "INVALID_INPUT", ["inputs"]),
        (
            "hello-dcf",
            {"json": inputs({**tensor(["a", "b"]), "shape": [2]})},
            400,
            "INVALID_INPUT",
            ["shape [2]"],
        ),
        (
            "hello-dcf",
            {"json": inputs({**tensor(["a"]), "datatype": "FP32"})},
            400,
            "INVALID_INPUT",
            ["datatype"],
        ),
        (
            "hello-dcf",
            {"json": inputs({**tensor(["a"]), "name": "IMAGE"})},
            400,
            "INVALID_INPUT",
            ["'IMAGE'"],
        ),
        (
            "hello-dcf",
            {"json": inputs(tensor(["a"]), outputs=[{"name": "BOXES"}])},
            400,
            "INVALID_INPUT",
            ["'BOXES'"],
        ),
        (
            "hello-dcf",
            {"json": inputs(tensor(["a"]), parameters={"x": None})},
            400,
            "INVALID_INPUT",
            ["parameters", "'x'", "null"],
        ),
        (
            "hello-dcf",
            {"json": inputs(tensor(["a"]), parameters={"colour": "red"})},
            400,
            "INVALID_INPUT",
            ["colour"],
        ),
        (
            "hello-dcf",
            {"json": inputs(tensor(["%%%"], content_type="base64"))},
            400,
            "INVALID_INPUT",
            ["base64"],
        ),
        (
            "hello-dcf",
            {"json": inputs({**tensor([]), "parameters": {"binary_data_size": 5}})},
            400,
            "INVALID_INPUT",
            ["data or binary_data_size"],
        ),
        (
            "hello-dcf",
            {"content": b'{"inputs": []}', "headers": {"inference-header-content-length": "99"}},
            400,
            "INVALID_INPUT",
            ["99"],
        ),
        (
            "hello-dcf",
            {"content": b"{}", "headers": {"inference-header-content-length": "two"}},
            400,
            "INVALID_INPUT",
            ["Inference-Header-Content-Length"],
        ),
        (
            "hello-dcf",
            {"json": inputs(tensor(["a"])), "headers": {"content-encoding": "gzip"}},
            400,
            "INVALID_INPUT",
            ["gzip"],
        ),
        (
            "hello-dcf",
            {"json": inputs(tensor(["a"])), "headers": {"x-dcf-timeout": "soon"}},
            400,
            "INVALID_INPUT",
            ["X-Dcf-Timeout"],
        ),
        ("no-such-model", {"json": inputs(tensor(["a"]))}, 404, "NOT_FOUND", ["no-such-model"]),
        (
            "hello-dcf/versions/7",
            {"json": inputs(tensor(["a"]))},
            404,
            "NOT_FOUND",
            ["version '7'"],
        ),
        (
            "echo-small",
            {"json": inputs(tensor(["x" * (2 << 20)]))},
            413,
            "TOO_LARGE",
            ["echo-small"],
        ),
        ("faulty", {"json": inputs(tensor(["a"]))}, 500, "INTERNAL", ["internal error"]),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_infer_errors(api, path, request_args, status, reason, words):
    reply = api.post(f"/v2/models/{path}/infer", **request_args)
    assert_v2_error(reply, status, reason, *words)


def test_binary_data_framing_errors_name_the_input(api):
    framed = struct.pack("<I", 50) + b"short"
    entry = {"name": "INPUT", "datatype": "BYTES", "shape": [1]}
    head = json.dumps(
        {"inputs": [{**entry, "parameters": {"binary_data_size": len(framed)}}]}
    ).encode()
    headers = {"inference-header-content-length": str(len(head))}
    reply = api.post("/v2/models/hello-dcf/infer", content=head + framed, headers=headers)
    assert_v2_error(reply, 400, "INVALID_INPUT", "inputs[0]", "says 50 bytes, 5 follow")
    whole = struct.pack("<I", 5) + b"short"  # the same size, rightly framed, then two bytes more
    reply = api.post("/v2/models/hello-dcf/infer", content=head + whole + b"xy", headers=headers)
    assert_v2_error(reply, 400, "INVALID_INPUT", "2 bytes follow")
    reply = api.post("/v2/models/hello-dcf/infer", content=head + whole, headers=headers)
    assert json_answer(reply)[1] == b"short"


def test_deadline_is_504(api, photo):
    reply = api.post(
        "/v2/models/ssd/infer",
        content=photo,
        headers={"inference-header-content-length": "0", "x-dcf-timeout": "0.001"},
    )
    assert_v2_error(reply, 504, "DEADLINE_EXCEEDED")


def test_routes_and_methods_answer_in_the_v2_shape(api):
    assert_v2_error(api.get("/v2/models/hello-dcf/infer"), 405, "METHOD_NOT_ALLOWED", "GET")
    assert_v2_error(api.post("/v2/health/live"), 405, "METHOD_NOT_ALLOWED", "POST")
    assert_v2_error(api.get("/v2/models/hello-dcf/stats"), 404, "NOT_FOUND", "/stats")
    assert_v2_error(api.get("/v2/models/no-such-model/ready"), 404, "NOT_FOUND", "no-such-model")
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/ssd/versions/1/ready"):
        reply = api.get(path)
        assert (reply.status_code, reply.content) == (200, b""), path


# ---------------------------------------------------------------- limits and tokens


MAX_INVOKE = 64 * 1024
MAX_UNARY = 100 * 1024
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):
    """hello-dcf alone, with small unary limits and a token."""
    service = small_service(
        tmp_path_factory.mktemp("v2-small"),
        env={
            "DCF_MAX_INVOKE_BYTES": str(MAX_INVOKE),
            "DCF_MAX_UNARY_BYTES": str(MAX_UNARY),
            "DCF_TOKENS": TOKEN,
        },
    )
    yield service
    service.stop()


AUTH = {"authorization": f"Bearer {TOKEN}"}


class RawPost:
    """A POST over a plain socket: its head sent at once, its body as the test decides
    (or never), its answer read as it comes; h11 frames both ways."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.conn = h11.Connection(h11.CLIENT)
        head = {"host": f"127.0.0.1:{port}", **AUTH, **headers}
        request = h11.Request(method="POST", target=INFER, headers=list(head.items()))
        self.sock.sendall(self.conn.send(request))

    def send(self, data: bytes, end: bool = False) -> None:
        framed = self.conn.send(h11.Data(data=data))
        self.sock.sendall(framed + (self.conn.send(h11.EndOfMessage()) if end else b""))

    def event(self) -> object:
        while (event := self.conn.next_event()) is h11.NEED_DATA:
            self.conn.receive_data(self.sock.recv(1 << 16))
        return event

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        """The status, headers and body of the answer (past any "100 Continue")."""
        while isinstance(event := self.event(), h11.InformationalResponse):
            pass
        assert isinstance(event, h11.Response), event
        body = b""
        while isinstance(part := self.event(), h11.Data):
            body += bytes(part.data)
        assert isinstance(part, h11.EndOfMessage), part
        headers = {key.decode(): value.decode() for key, value in event.headers}
        return event.status_code, headers, body

    def close(self) -> None:
        self.sock.close()


INFER = "/v2/models/hello-dcf/infer"
JSON_LIMIT = 4 * -(-MAX_INVOKE // 3) + (1 << 16)  # base64 of the largest input, and room
BINARY_LIMIT = MAX_INVOKE + (1 << 16)


def hold_body(port: int, length: int) -> RawPost:
    """A POST whose body the front has begun to read and holds against its budget: the
    front says "100 Continue" when it starts reading, its budget taken by then."""
    post = RawPost(port, {"content-length": str(length), "expect": "100-continue"})
    assert isinstance(post.event(), h11.InformationalResponse)
    return post


def answer_without_body(port: int, headers: dict[str, str]) -> tuple[int, dict[str, str], dict]:
    """The answer to a POST whose body is never sent: status, headers, its JSON."""
    post = RawPost(port, headers)
    try:
        status, answer_headers, body = post.answer()
    finally:
        post.close()
    return status, answer_headers, json.loads(body)


def echo_body(size: int) -> tuple[str, bytes]:
    text = "y" * size
    return text, json.dumps({"inputs": [tensor([text])]}).encode()


def test_tokens_guard_v2(small):
    with httpx.Client(base_url=small.http_url, timeout=60) as client:
        assert_v2_error(client.get("/v2"), 401, "UNAUTHENTICATED")
        wrong = {"authorization": "Bearer nope"}
        assert_v2_error(client.get("/v2/health/ready", headers=wrong), 403, "PERMISSION_DENIED")
        assert client.get("/v2/health/ready", headers=AUTH).status_code == 200
        reply = client.post(INFER, json={"inputs": [tensor(["hi"])]}, headers=AUTH)
        assert json_answer(reply)[1] == b"hi"


@pytest.mark.parametrize(
    "headers",
    [
        {"content-length": str(JSON_LIMIT + 1)},
        {"content-length": str(BINARY_LIMIT + 1), "inference-header-content-length": "100"},
    ],
    ids=["json", "binary"],
)
def test_oversized_body_is_refused_before_it_is_read(small, headers):
    # Nothing of the body is sent, and the answer comes all the same.
    status, answer_headers, error = answer_without_body(small.http_port, headers)
    assert status == 413 and answer_headers["connection"] == "close"
    assert error["reason"] == "TOO_LARGE", error
    assert headers["content-length"] in error["error"]
    assert "POST /v1/functions/hello-dcf" in error["error"]  # where a larger input can go


def test_chunked_body_is_refused_once_it_crosses_the_limit(small):
    post = RawPost(small.http_port, {"transfer-encoding": "chunked"})
    try:
        sent = 0
        while sent <= JSON_LIMIT:
            post.send(b"x" * 8192)
            sent += 8192
        # The body is not ended: the refusal comes as soon as the limit is crossed.
        status, headers, body = post.answer()
    finally:
        post.close()
    assert (status, headers["connection"]) == (413, "close")
    assert json.loads(body)["reason"] == "TOO_LARGE"


def test_bodies_in_flight_share_a_budget(small):
    """One body being read holds its size against max_unary_bytes; another that would pass
    it is refused (429, Retry-After) while the first one goes on to its answer."""
    text, body = echo_body(59_000)
    assert 2 * len(body) > MAX_UNARY and len(text) < MAX_INVOKE
    held = hold_body(small.http_port, len(body))
    try:
        status, headers, error = answer_without_body(
            small.http_port, {"content-length": str(len(body))}
        )
        assert (status, headers["retry-after"]) == (429, "1")
        assert error["reason"] == "OVERLOADED" and "try again later" in error["error"]
        held.send(body, end=True)
        status, headers, answer = held.answer()
    finally:
        held.close()
    assert status == 200
    assert json.loads(answer)["outputs"][0]["data"] == [text]
    # Its bytes given back, the budget takes the next body.
    with httpx.Client(base_url=small.http_url, timeout=60) as client:
        assert json_answer(client.post(INFER, content=body, headers=AUTH))[1] == text.encode()


def test_a_body_abandoned_half_way_gives_its_bytes_back(small):
    """Two bodies fit the budget, three do not: with one abandoned half-way and one held,
    a third passes once the abandoned one's bytes are given back."""
    _, body = echo_body(40_000)
    assert 2 * len(body) <= MAX_UNARY < 3 * len(body)
    abandoned = RawPost(small.http_port, {"content-length": str(len(body))})
    abandoned.send(body[: len(body) // 2])
    abandoned.close()
    held = hold_body(small.http_port, len(body))
    try:
        with httpx.Client(base_url=small.http_url, timeout=60) as client:

            def third_passes() -> bool:
                reply = client.post(INFER, content=body, headers=AUTH)
                assert reply.status_code in (200, 429), reply.text
                return reply.status_code == 200

            wait_for(third_passes, "the abandoned body's bytes given back", timeout=30, every=0.2)
    finally:
        held.close()


def test_a_client_gone_cancels_its_infer_call(small):
    """The worker held still, a client sends its whole body and leaves before the answer:
    its call is cancelled at once (without that, it would wait for the stopped worker)."""
    request_id = f"leaver-{uuid.uuid4().hex[:8]}"
    _, body = echo_body(1000)

    def in_flight() -> float:
        return metric(small.metrics_text(), "dcf_calls_in_flight", function="hello-dcf")

    with paused(worker_pid(small.log, "hello-dcf")):
        post = RawPost(
            small.http_port, {"content-length": str(len(body)), "x-request-id": request_id}
        )
        try:
            post.send(body, end=True)
            wait_for(lambda: in_flight() == 1, "the infer call in flight")
        finally:
            post.close()
        wait_for(lambda: in_flight() == 0, "the call ended while its worker is stopped")
    ended = wait_for(
        lambda: re.search(
            rf"server\.gateway\.core\[\d+\]: call {request_id} hello-dcf (\w+)",
            small.log.read_text(),
        ),
        "the gateway's log line of the call",
    )
    assert ended[1] == "CANCELLED"
    with httpx.Client(base_url=small.http_url, timeout=60) as client:
        reply = client.post(INFER, json={"inputs": [tensor(["still here"])]}, headers=AUTH)
        assert json_answer(reply)[1] == b"still here"


def test_input_over_max_invoke_bytes_is_413_with_advice(small):
    with httpx.Client(base_url=small.http_url, timeout=60) as client:
        reply = client.post(
            INFER,
            content=b"z" * (MAX_INVOKE + 1),
            headers={**AUTH, "inference-header-content-length": "0"},
        )
    assert_v2_error(reply, 413, "TOO_LARGE", str(MAX_INVOKE), "POST /v1/functions/hello-dcf")


# ---------------------------------------------------------------- readiness, the front alone


def start(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def test_readiness_follows_the_worker_through_the_front_alone(tmp_path):
    """``python -m server http`` alone before a gateway and its worker: /v2 readiness and
    infer follow the worker as it is killed and started again."""
    config = tmp_path / "functions.yaml"
    document = write_registry(config)
    document["functions"] = {"hello-dcf": document["functions"]["hello-dcf"]}
    config.write_text(yaml.safe_dump(document))
    address = f"127.0.0.1:{document['server']['port']}"
    http_port = free_port()
    log = tmp_path / "server.log"
    worker = start("worker", "hello-dcf", "--config", str(config), log=log)
    processes = [
        worker,
        start("gateway", "--config", str(config), log=log),
        start(
            "http", "--config", str(config), "--port", str(http_port), "--gateway", address, log=log
        ),
    ]
    front = f"127.0.0.1:{http_port}"
    infer = {"op": "infer", "model": "hello-dcf", "data": b64(b"ping")}
    try:
        wait_serving(address, "hello-dcf")
        wait_listening(http_port)
        ready, server_ready, echo = v2_probe(
            front, [{"op": "model_ready", "model": "hello-dcf"}, {"op": "server_ready"}, infer]
        )
        assert probed(ready) is True and probed(server_ready) is True
        assert output_of(echo) == b"ping"

        worker.kill()
        worker.wait()
        waited, server_ready, live, refused = v2_probe(
            front,
            [
                {"op": "wait_model_ready", "model": "hello-dcf", "want": False, "timeout": 30},
                {"op": "server_ready"},
                {"op": "live"},
                infer,
            ],
        )
        assert probed(waited) == {"ready": False}
        assert probed(server_ready) is False and probed(live) is True
        assert (refused["ok"], refused["status"]) == (False, "503")
        assert "hello-dcf" in refused["message"]
        with httpx.Client(base_url=f"http://{front}", timeout=60) as client:
            assert client.get("/v2/models/hello-dcf/ready").status_code == 400
            reply = client.post("/v2/models/hello-dcf/infer", json={"inputs": [tensor(["a"])]})
            assert_v2_error(reply, 503, "UNAVAILABLE", "hello-dcf")

        processes.append(start("worker", "hello-dcf", "--config", str(config), log=log))
        waited, echo = v2_probe(
            front,
            [{"op": "wait_model_ready", "model": "hello-dcf", "want": True, "timeout": 60}, infer],
        )
        assert probed(waited) == {"ready": True}
        assert output_of(echo) == b"ping"
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    assert "Traceback" not in log.read_text(errors="replace")


# ---------------------------------------------------------------- the shared conversions


@pytest.mark.parametrize("value", [True, False, 0, -3, 2**63 - 1, 0.4, -1e300, "", "log"])
def test_parameters_go_to_grpc_and_back_unchanged(value):
    back = codec.parameter_value(codec.parameter_of("p", value))
    assert (back, type(back)) == (value, type(value))


@pytest.mark.parametrize(
    ("value", "words"), [(None, "null"), ([1], "list"), ({"a": 1}, "dict"), (2**63, "64-bit")]
)
def test_parameters_that_are_no_parameter_are_refused(value, words):
    with pytest.raises(InvalidInput, match=words):
        codec.parameter_of("p", value)
