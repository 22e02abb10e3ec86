"""The HTTP API against a real ``python -m server`` (the session's ``dcf`` service, whose
HTTP front runs in the gateway's process) and against the ``http`` role on its own."""

from __future__ import annotations

import io
import json
import re
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import h11
import httpx
import pytest
from PIL import Image

from handlers.errors import TABLE, http_status
from server.config import parse_size
from tests.support import (
    Service,
    free_port,
    memory,
    metric,
    reset_peak,
    spawn_server,
    wait_listening,
    wait_serving,
)
from tests.support.http import (
    GRACE_HOPPER,
    HELLO,
    Duplex,
    MiB,
    paused,
    small_service,
    video_file,
    wait_for,
    wav_bytes,
    worker_pid,
)

JSON_ERROR_KEYS = {"code", "reason", "message"}


@pytest.fixture(scope="module")
def api(dcf: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dcf.http_url, timeout=60) as client:
        yield client


def functions(api: httpx.Client) -> dict[str, dict]:
    reply = api.get("/v1/functions")
    assert reply.status_code == 200
    return {fn["name"]: fn for fn in reply.json()}


def needs(api: httpx.Client, name: str) -> None:
    if name not in functions(api):
        pytest.skip(f"{name} is not in the registry (server/functions.yaml) yet")


def assert_reason(body: dict, status: int) -> None:
    """The body's reason is the one whose row of the error table gives its code and status."""
    if body["code"] not in grpc.StatusCode.__members__:
        assert body["reason"] == body["code"], body  # the front's own: 405, 421 ...
        return
    assert TABLE[body["reason"]].status == body["code"], body
    assert http_status(body["reason"]) == status, body


def assert_error(reply: httpx.Response, status: int, code: str, *words: str) -> dict:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert set(body) == JSON_ERROR_KEYS and body["code"] == code, body
    assert_reason(body, status)
    for word in words:
        assert word in body["message"], body
    return body


# ---------------------------------------------------------------- every function


def test_list_functions(api):
    listed = functions(api)
    assert {"hello-dcf", "send-wav", "ssd"} <= set(listed)
    wav = listed["send-wav"]
    assert wav["input_content_type"] == "audio/wav"
    assert wav["output_content_type"] == "image/png"
    assert wav["aliases"] == ["stft"]
    assert "binsize" in wav["params"] and wav["max_input_bytes"] > 0
    binsize = next(spec for spec in wav["param_specs"] if spec["name"] == "binsize")
    assert binsize == {
        "name": "binsize",
        "type": "integer",
        "description": wav["params"]["binsize"],
        "default": "1024",
        "minimum": 16,
        "maximum": 32768,
    }
    assert listed["hello-dcf"]["description"]


def test_hello_dcf_echoes(api):
    reply = api.post("/v1/functions/hello-dcf", content="Hello, DCF!")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.text == "Hello, DCF!"
    assert reply.headers["x-request-id"]


def test_empty_body_is_an_empty_answer(api):
    reply = api.post("/v1/functions/hello-dcf", content=b"")
    assert reply.status_code == 200 and reply.content == b""


def test_send_wav_answers_a_png_with_params(api):
    reply = api.post(
        "/v1/functions/stft", params={"width": "400", "height": "200"}, content=wav_bytes()
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(reply.content)).size == (400, 200)


def test_ssd_finds_grace_hopper(api):
    reply = api.post(
        "/v1/functions/ssd", params={"threshold": "0.4"}, content=GRACE_HOPPER.read_bytes()
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    answer = reply.json()
    assert (answer["width"], answer["height"]) == (512, 600)
    people = [d for d in answer["detections"] if d["label"] == "person"]
    assert people and people[0]["confidence"] >= 0.4
    assert all(d["confidence"] >= 0.4 for d in answer["detections"])


def test_ssd_annotated_is_a_png(api):
    reply = api.post(
        "/v1/functions/ssd", params={"annotate": "true"}, content=GRACE_HOPPER.read_bytes()
    )
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(reply.content)).size == (512, 600)


def test_ssd_video_streams_one_line_per_frame(api, dcf, tmp_path):
    """Each frame's line is sent the moment it is done: the first line reaches the client
    while the call still runs. To see that without timing anything, the worker is held
    stopped once the first line is in: the gateway still has the call in flight then, so
    that line came before the answer was complete. (ssd-video spools the whole upload
    before decoding, an MP4's index may be at its end, so the lines can only begin once
    the upload is complete.)"""
    needs(api, "ssd-video")
    frames = 40
    clip = video_file(tmp_path / "clip.mp4", frames=frames).read_bytes()
    worker = worker_pid(dcf.log, "ssd-video")
    with Duplex(dcf.http_port, f"/v1/functions/ssd-video?max_frames={frames}", len(clip)) as call:
        call.send(clip)
        head = call.response()
        assert head.status_code == 200
        assert dict(head.headers)[b"content-type"] == b"application/x-ndjson"
        first = call.event()
        assert isinstance(first, h11.Data) and first.data.endswith(b"\n"), first
        with paused(worker):
            running = metric(dcf.metrics_text(), "dcf_calls_in_flight", function="ssd-video")
        rest = call.body()
    assert running == 1, "the answer was complete before its first line reached the client"
    lines = [json.loads(line) for line in (bytes(first.data) + rest).splitlines()]
    numbers = [line["frame"] for line in lines if "frame" in line]
    assert numbers == list(range(numbers[0], numbers[0] + frames))
    assert any(d["label"] == "person" for f in lines[:-1] for d in f["detections"])
    assert "frames_read" in lines[-1] and "frame" not in lines[-1]


def test_ssd_video_error_after_the_first_lines_is_a_last_line(api, dcf, tmp_path):
    """A failure once lines have gone out ends the NDJSON answer with one error line; the
    status was 200 long before. Here the failure is the call's deadline, passing while
    the worker is held stopped after the first line, so the video cannot end first."""
    needs(api, "ssd-video")
    frames = 40
    clip = video_file(tmp_path / "long.mp4", frames=frames, size=(160, 120)).read_bytes()
    worker = worker_pid(dcf.log, "ssd-video")
    with Duplex(
        dcf.http_port,
        f"/v1/functions/ssd-video?max_frames={frames}",
        len(clip),
        {"x-dcf-timeout": "10"},
    ) as call:
        call.send(clip)
        assert call.response().status_code == 200
        first = call.event()
        assert isinstance(first, h11.Data), first
        with paused(worker):
            rest = call.body()  # ends when the deadline passes
    lines = [json.loads(line) for line in (bytes(first.data) + rest).splitlines()]
    assert "frame" in lines[0] and all("frame" in line for line in lines[:-1])
    assert set(lines[-1]) == {"error"} and set(lines[-1]["error"]) == JSON_ERROR_KEYS
    assert lines[-1]["error"]["code"] == lines[-1]["error"]["reason"] == "DEADLINE_EXCEEDED"
    assert len(lines) - 1 < frames


def test_a_body_failing_after_it_began_is_cut_off(dcf):
    """echo-small (1 MiB limit) echoes its first MiB, then the limit is crossed: the
    answer had begun (200), so it is cut off without its last chunk, and no client
    can take the shorter body for a whole one."""
    total = 3 * MiB
    with Duplex(dcf.http_port, "/v1/functions/echo-small", total) as call:
        call.send(b"e" * (512 << 10))
        assert call.response().status_code == 200
        received = len(call.event().data)
        # The connection ends without the answer's last chunk (h11 says so, or the
        # socket is reset with the rest of the body still unread by the server).
        with pytest.raises((h11.RemoteProtocolError, ConnectionError)):  # noqa: PT012 - any step
            call.send(b"e" * (total - (512 << 10)))
            while not isinstance(event := call.event(), h11.EndOfMessage):
                received += len(event.data)
    assert received <= MiB


# ---------------------------------------------------------------- streaming


def test_echo_answers_each_piece_before_the_next_is_sent(dcf):
    """The body goes up as it arrives and the answer comes down as it is made: each
    piece's echo is read back before the next piece is written."""
    pieces = [bytes([65 + i]) * (256 << 10) for i in range(4)]
    total = sum(map(len, pieces))
    with Duplex(dcf.http_port, "/v1/functions/hello-dcf", total) as call:
        call.send(pieces[0])
        assert call.response().status_code == 200
        echoed = b""
        for i, piece in enumerate(pieces):
            if i:
                call.send(piece)
            while len(echoed) < (i + 1) * len(piece):
                event = call.event()
                assert isinstance(event, h11.Data), f"answer ended early after {len(echoed)} bytes"
                echoed += event.data
            assert call.sent < total or i == len(pieces) - 1
        assert echoed == b"".join(pieces)
        assert isinstance(call.event(), h11.EndOfMessage)


def test_256_mib_echo_keeps_the_front_memory_flat(dcf):
    """256 MiB up and back through the HTTP front, which runs in the gateway's
    process: its resident memory must not grow with the payload."""
    total, block = 256 * MiB, bytes(range(256)) * 4096  # 1 MiB
    received = 0
    with Duplex(dcf.http_port, "/v1/functions/hello-dcf", total) as call:

        def upload() -> None:
            for _ in range(total // len(block)):
                call.send(block)

        writer = threading.Thread(target=upload, daemon=True)
        reset_peak(dcf.process.pid)
        start = memory(dcf.process.pid)["VmRSS"]
        writer.start()
        assert call.response().status_code == 200
        while not isinstance(event := call.event(), h11.EndOfMessage):
            received += len(event.data)
        writer.join(30)
    assert received == total
    growth = memory(dcf.process.pid)["VmHWM"] - start
    assert growth < 60 * MiB, f"the gateway + HTTP front grew by {growth / MiB:.0f} MiB"


# ---------------------------------------------------------------- errors


def test_unknown_function_is_404(api):
    assert_error(api.post("/v1/functions/no-such", content=b"x"), 404, "NOT_FOUND", "no-such")
    assert_error(api.get("/v3/nothing"), 404, "NOT_FOUND")


def test_bad_param_is_400_naming_it(api):
    assert_error(
        api.post("/v1/functions/ssd?threshold=lots", content=GRACE_HOPPER.read_bytes()),
        400,
        "INVALID_ARGUMENT",
        "threshold",
        "lots",
    )
    assert_error(
        api.post("/v1/functions/hello-dcf?colour=red", content=b"x"),
        400,
        "INVALID_ARGUMENT",
        "colour",
    )
    assert_error(
        api.post("/v1/functions/ssd?threshold=0.1&threshold=0.2", content=b"x"),
        400,
        "INVALID_ARGUMENT",
        "threshold",
    )
    soon = {"x-dcf-timeout": "soon"}
    assert_error(
        api.post("/v1/functions/hello-dcf", content=b"x", headers=soon),
        400,
        "INVALID_ARGUMENT",
        "X-Dcf-Timeout",
    )


def test_bad_input_is_400(api):
    assert_error(
        api.post("/v1/functions/ssd", content=b"not an image at all"), 400, "INVALID_ARGUMENT"
    )
    assert_error(
        api.post("/v1/functions/send-wav", content=b"RIFF....WAVE"), 400, "INVALID_ARGUMENT"
    )
    if "ssd-video" in functions(api):  # refused before its first line: a real status
        assert_error(
            api.post("/v1/functions/ssd-video", content=b"not a video"), 400, "INVALID_ARGUMENT"
        )


def test_other_methods_are_405(api):
    for method in ("GET", "PUT", "DELETE"):
        reply = api.request(method, "/v1/functions/hello-dcf")
        assert_error(reply, 405, "METHOD_NOT_ALLOWED")
        assert reply.headers["allow"] == "POST"
    assert_error(api.post("/v1/functions", content=b"x"), 405, "METHOD_NOT_ALLOWED")


def test_a_function_bug_is_500_without_its_traceback(api, dcf):
    body = assert_error(api.post("/v1/functions/faulty", content=b"x"), 500, "INTERNAL")
    assert "must stay in the server log" not in body["message"]
    assert "must stay in the server log" in dcf.log.read_text()


def test_body_over_the_limit_is_413_before_the_rest_is_sent(dcf):
    """Declare 1 GiB, send ssd's limit + 1 byte and stop: the 413 comes without the rest
    of the body (a front that read it all first would hang). The body begins as a
    photo does, since ssd refuses a non-image at its first bytes."""
    limit = parse_size(dcf.document["functions"]["ssd"]["max_input_bytes"], "ssd")
    with Duplex(dcf.http_port, "/v1/functions/ssd", 1 << 30, timeout=20) as call:
        photo = GRACE_HOPPER.read_bytes()
        call.send(photo + b"\0" * (MiB - len(photo)))
        block = b"\0" * MiB
        for _ in range(limit // MiB - 1):
            call.send(block)
        call.send(b"\0")
        head = call.response()
        body = json.loads(call.body())
    assert head.status_code == 413
    assert body["code"] == "RESOURCE_EXHAUSTED" and "exceeds the limit" in body["message"]


def test_a_full_queue_is_429_with_retry_after(tmp_path):
    """hello-one runs one call at a time and queues one more. Hold two uploads open (one
    running, one waiting): a third is refused at once, 429 with Retry-After. Walk away
    from the two (their calls are cancelled, the waiting one leaves the queue), and
    hello-one answers again."""
    one = {"hello-one": {**HELLO, "max_concurrency": 1, "max_queue": 1}}
    service = small_service(tmp_path, one)
    held: list[Duplex] = []
    try:
        held = [Duplex(service.http_port, "/v1/functions/hello-one", 10) for _ in range(2)]
        for call in held:
            call.send(b"a")

        def placed() -> bool:
            text = service.metrics_text()
            return (
                metric(text, "dcf_calls_in_flight", function="hello-one") == 1
                and metric(text, "dcf_queue_depth", function="hello-one") == 1
            )

        wait_for(placed, "one held call running and one waiting")
        with httpx.Client(base_url=service.http_url, timeout=30) as client:
            reply = client.post("/v1/functions/hello-one", content=b"x")
            assert_error(reply, 429, "RESOURCE_EXHAUSTED", "queue is full")
            assert reply.headers["retry-after"] == "1"
            for call in held:
                call.close()
            deadline = time.monotonic() + 10
            while (
                reply := client.post("/v1/functions/hello-one", content=b"x")
            ).status_code == 429:
                assert time.monotonic() < deadline, "slots still taken after the callers left"
                time.sleep(0.1)
            assert reply.status_code == 200 and reply.content == b"x", reply.text
    finally:
        for call in held:
            call.close()
        assert service.stop() == 0, service.log.read_text()[-3000:]


def test_deadline_is_504(dcf):
    """X-Dcf-Timeout sets the call's deadline; a body that never comes runs past it."""
    with Duplex(dcf.http_port, "/v1/functions/hello-dcf", 10, {"x-dcf-timeout": "0.5"}) as call:
        started = time.monotonic()
        head = call.response()
        body = json.loads(call.body())
    assert head.status_code == 504 and body["code"] == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 5


def test_disconnect_cancels_the_call(dcf, api):
    """A client that goes away mid-upload: the gateway's call ends CANCELLED (its own
    counters say so), the worker's too (its log says so), and nothing stays in flight.

    grpcio's aio server may show a cancelled call's end as the end of its input a moment
    before the cancellation itself (see CUT_INPUT_OUTCOMES in the reliability suite):
    the worker may then finish the echo of what arrived (OK), and, rarer, the gateway
    may end with that OK before the cancellation reaches it. Either way, one call ended.
    """

    def ended() -> dict[str, float]:
        text = dcf.metrics_text()
        return {
            code: metric(text, "dcf_requests_total", function="hello-dcf", code=code)
            for code in ("CANCELLED", "OK")
        }

    before = ended()
    request_id = f"leaver-{uuid.uuid4().hex[:8]}"
    call = Duplex(dcf.http_port, "/v1/functions/hello-dcf", 100 * MiB, {"x-request-id": request_id})
    try:
        call.send(b"a" * 1000)
        assert call.response().status_code == 200
        assert bytes(call.event().data) == b"a" * 1000
        assert metric(dcf.metrics_text(), "dcf_calls_in_flight", function="hello-dcf") == 1
    finally:
        call.close()
    deadline = time.monotonic() + 10
    while metric(dcf.metrics_text(), "dcf_calls_in_flight", function="hello-dcf") != 0:
        assert time.monotonic() < deadline, "the call is still in flight after its client left"
        time.sleep(0.05)
    after = ended()
    gateway = re.search(
        rf"server\.gateway\.core\[\d+\]: call {request_id} hello-dcf (\w+)", dcf.log.read_text()
    )
    assert gateway is not None and gateway[1] in ("CANCELLED", "OK"), gateway
    assert after[gateway[1]] == before[gateway[1]] + 1, (before, after)
    while not (worker := re.search(rf"call {request_id} hello-dcf (\w+)", worker_lines(dcf))):
        assert time.monotonic() < deadline, "the worker's call did not end"
        time.sleep(0.05)
    assert worker[1] in ("CANCELLED", "OK"), worker[1]
    if gateway[1] == "OK":  # the race reached the gateway: it relayed the worker's OK
        assert worker[1] == "OK"
    assert api.post("/v1/functions/hello-dcf", content="still here").text == "still here"


def worker_lines(dcf: Service) -> str:
    return "\n".join(
        line for line in dcf.log.read_text().splitlines() if "server.worker.servicer[" in line
    )


# ---------------------------------------------------------------- the http role


def stop(process: subprocess.Popen) -> int:
    process.terminate()
    try:
        return process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def test_http_role_without_its_gateway_is_503(tmp_path):
    port = free_port()
    front = spawn_server(
        ["http", "--port", str(port), "--gateway", f"127.0.0.1:{free_port()}"],
        tmp_path / "http.log",
    )
    try:
        wait_listening(port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert_error(client.get("/v1/functions"), 503, "UNAVAILABLE")
            assert_error(client.post("/v1/functions/hello-dcf", content=b"x"), 503, "UNAVAILABLE")
            assert client.get("/").status_code == 200
    finally:
        assert stop(front) == 0, (tmp_path / "http.log").read_text()


def test_http_role_passes_the_bearer_token(dcf, tmp_path):
    """A gateway with tokens (serving the session's workers) behind the ``http`` role:
    the Authorization header reaches it as the call's token."""
    gateway_port, http_port = free_port(), free_port()
    gateway = spawn_server(
        [
            "gateway",
            "--config",
            str(dcf.config),
            "--port",
            str(gateway_port),
            "--metrics-port",
            str(free_port()),
        ],
        tmp_path / "gateway.log",
        {"DCF_TOKENS": "open-sesame"},
    )
    front = spawn_server(
        ["http", "--port", str(http_port), "--gateway", f"127.0.0.1:{gateway_port}"],
        tmp_path / "http.log",
    )
    try:
        wait_listening(gateway_port)
        wait_listening(http_port)
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as client:
            assert_error(client.get("/v1/functions"), 401, "UNAUTHENTICATED")
            assert_error(
                client.post("/v1/functions/hello-dcf", content=b"x"), 401, "UNAUTHENTICATED"
            )
            wrong = {"authorization": "Bearer guess"}
            assert_error(
                client.post("/v1/functions/hello-dcf", content=b"x", headers=wrong),
                403,
                "PERMISSION_DENIED",
            )
            right = {"authorization": "Bearer open-sesame"}
            assert client.get("/v1/functions", headers=right).status_code == 200
            deadline = time.monotonic() + 20
            while (
                reply := client.post("/v1/functions/hello-dcf", content=b"hi", headers=right)
            ).status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.1)  # the new gateway is still connecting to the worker
            assert reply.status_code == 200 and reply.content == b"hi", reply.text
    finally:
        assert stop(front) == 0, (tmp_path / "http.log").read_text()
        stop(gateway)


def hello_only(tmp: Path) -> tuple[Path, dict]:
    """A registry with hello-dcf alone (quick to start), on free ports."""
    server = {"port": free_port(), "metrics_port": free_port(), "http_port": free_port()}
    config = tmp / "hello.yaml"
    config.write_text(
        json.dumps(
            {
                "server": server,
                "functions": {
                    "hello-dcf": {
                        "handler": "handlers.hello",
                        "workers": [f"127.0.0.1:{free_port()}"],
                    }
                },
            }
        )
    )
    return config, server


def test_no_http_serves_no_http(tmp_path):
    config, ports = hello_only(tmp_path)
    server = spawn_server(["--config", str(config), "--no-http"], tmp_path / "server.log")
    try:
        wait_serving(f"127.0.0.1:{ports['port']}", "hello-dcf")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", ports["http_port"]), timeout=2).close()
    finally:
        assert stop(server) == 0


# ---------------------------------------------------------------- TLS


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, and its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_on_the_http_port(tmp_path):
    """DCF_TLS_CERT/KEY: the embedded default speaks HTTPS on its HTTP port (and its
    front reaches the TLS gateway over TLS too)."""
    pytest.importorskip(
        "cryptography",
        reason="the TLS test makes its certificate with "
        "the cryptography package, which is not installed",
    )
    cert, key = self_signed(tmp_path)
    config, ports = hello_only(tmp_path)
    http_port = ports["http_port"]
    server = spawn_server(
        ["--config", str(config)],
        tmp_path / "server.log",
        {"DCF_TLS_CERT": str(cert), "DCF_TLS_KEY": str(key)},
    )
    try:
        wait_listening(http_port)
        trust = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(
            base_url=f"https://127.0.0.1:{http_port}", verify=trust, timeout=30
        ) as client:
            assert client.get("/v1/functions").json()[0]["name"] == "hello-dcf"
            deadline = time.monotonic() + 30
            while (
                reply := client.post("/v1/functions/hello-dcf", content=b"secret")
            ).status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.1)  # the worker is still starting
            assert reply.status_code == 200 and reply.content == b"secret", reply.text
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{http_port}/v1/functions", timeout=5)
    finally:
        assert stop(server) == 0, (tmp_path / "server.log").read_text()[-3000:]
