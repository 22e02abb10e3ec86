"""Probes of the HTTP front, as an attacker (or a web page the user happens to open) would
make them. Each failed on the front before it was made safe by default (issue 14).

The browser and error-mapping probes use the session's ``dcf`` service; the
connection probes use small servers of their own: one with short timeouts, and one
whose open-file limit is lowered the way an operator's ``ulimit`` would lower it.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import h11
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from tests.support import Service, metric
from tests.support.http import Duplex, MiB, SmallService, small_service, wait_for

PAGE_PATHS = ["/", "/static/index.html", "/static/app.js", "/static/style.css"]
ELSEWHERE = "https://evil.example"


@pytest.fixture(scope="module")
def api(dcf: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dcf.http_url, timeout=60) as client:
        yield client


def assert_error(reply: httpx.Response, status: int, code: str) -> dict:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert set(body) == {"code", "reason", "message"} and body["code"] == code, body
    return body


def calls_made(dcf: Service, function: str) -> float:
    """Every call of ``function`` the gateway has counted, whatever its outcome."""
    total = 0.0
    for family in text_string_to_metric_families(dcf.metrics_text()):
        for sample in family.samples:
            if sample.name == "dcf_requests_total" and sample.labels.get("function") == function:
                total += sample.value
    return total


def gateway_line(log: Path, request_id: str) -> re.Match | None:
    return re.search(
        rf"server\.gateway\.core\[\d+\]: call {re.escape(request_id)} (\S+) (\w+)",
        log.read_text(errors="replace"),
    )


def assert_never_ran(dcf: Service, api: httpx.Client, refused: list[str], before: float) -> None:
    """The refused calls never reached the gateway. A call made after them is waited for
    in the gateway's log: had they run, their lines and counts would be in by then."""
    after_id = f"after-{uuid.uuid4().hex[:8]}"
    reply = api.post("/v1/functions/hello-dcf", content="after", headers={"x-request-id": after_id})
    assert reply.status_code == 200 and reply.text == "after"
    wait_for(lambda: gateway_line(dcf.log, after_id), "the gateway's line for the call after")
    for request_id in refused:
        assert gateway_line(dcf.log, request_id) is None, f"{request_id} reached the gateway"
    assert calls_made(dcf, "hello-dcf") == before + 1


# ---------------------------------------------------------------- browsers


def test_a_cross_site_text_plain_post_is_refused_and_does_not_run(dcf, api):
    """Any web page can POST text/plain to the API without a preflight. Its answer would
    be unreadable, but the call would run: it must be refused before it does."""
    before = calls_made(dcf, "hello-dcf")
    refused = []
    for origin in (
        ELSEWHERE,
        "null",
        f"http://127.0.0.1:{dcf.http_port + 1}",
        f"https://127.0.0.1:{dcf.http_port}x",
    ):
        request_id = f"xsite-{uuid.uuid4().hex[:8]}"
        refused.append(request_id)
        reply = api.post(
            "/v1/functions/hello-dcf",
            content="do my work",
            headers={"origin": origin, "content-type": "text/plain", "x-request-id": request_id},
        )
        body = assert_error(reply, 403, "PERMISSION_DENIED")
        assert "cross-origin" in body["message"] and "do my work" not in reply.text
    # Reading the function list, or asking for a preflight, is refused too.
    assert_error(api.get("/v1/functions", headers={"origin": ELSEWHERE}), 403, "PERMISSION_DENIED")
    preflight = api.options(
        "/v1/functions/hello-dcf",
        headers={"origin": ELSEWHERE, "access-control-request-method": "POST"},
    )
    assert_error(preflight, 403, "PERMISSION_DENIED")
    assert "access-control-allow-origin" not in preflight.headers
    assert_never_ran(dcf, api, refused, before)


def test_same_origin_and_origin_less_calls_still_work(dcf, api):
    """The page's own calls (a browser sends Origin on a POST, even to its own origin),
    curl and client libraries (no Origin) are not affected."""
    own = {"origin": f"http://127.0.0.1:{dcf.http_port}"}
    reply = api.post("/v1/functions/hello-dcf", content="from the page", headers=own)
    assert reply.status_code == 200 and reply.text == "from the page"
    localhost = {
        "origin": f"http://localhost:{dcf.http_port}",
        "host": f"localhost:{dcf.http_port}",
    }
    reply = api.post("/v1/functions/hello-dcf", content="by name", headers=localhost)
    assert reply.status_code == 200 and reply.text == "by name"
    reply = api.post("/v1/functions/hello-dcf", content="curl")
    assert reply.status_code == 200 and reply.text == "curl"


def test_a_host_it_does_not_serve_is_refused(dcf, api):
    """DNS rebinding: a page at evil.example, whose name then points at 127.0.0.1, is
    same-origin with itself; only the Host header tells. Those are refused, with 421."""
    before = calls_made(dcf, "hello-dcf")
    port = dcf.http_port
    for path in ("/", "/static/app.js", "/v1/functions"):
        assert_error(
            api.get(path, headers={"host": f"evil.example:{port}"}), 421, "MISDIRECTED_REQUEST"
        )
    request_id = f"rebound-{uuid.uuid4().hex[:8]}"
    reply = api.post(
        "/v1/functions/hello-dcf",
        content="rebound",
        headers={
            "host": f"evil.example:{port}",
            "origin": f"http://evil.example:{port}",
            "x-request-id": request_id,
        },
    )
    assert_error(reply, 421, "MISDIRECTED_REQUEST")
    assert_error(api.get("/", headers={"host": "bad host!"}), 400, "INVALID_ARGUMENT")
    for name in (f"localhost:{port}", f"127.0.0.1:{port}", "127.0.0.1", f"LOCALHOST.:{port}"):
        assert api.get("/v1/functions", headers={"host": name}).status_code == 200, name
    assert_never_ran(dcf, api, [request_id], before)


def test_every_answer_forbids_framing_and_sniffing(dcf, api):
    """The page and its files carry a CSP that keeps everything on this origin and lets
    no page frame them; every other answer a CSP that allows nothing; all of them nosniff."""
    for path in PAGE_PATHS:
        reply = api.get(path)
        assert reply.status_code == 200, path
        policy = reply.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy, path
        assert reply.headers.get("x-content-type-options") == "nosniff", path
    answers = [
        api.get("/v1/functions"),
        api.post("/v1/functions/hello-dcf", content="x"),
        api.post("/v1/functions/no-such", content="x"),
        api.get("/v1/functions/hello-dcf"),
        api.get("/static/no-such.js"),
        api.get("/v1/functions", headers={"origin": ELSEWHERE}),
    ]
    for reply in answers:
        where = f"{reply.request.method} {reply.request.url.path} -> {reply.status_code}"
        policy = reply.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in policy, where
        if reply.request.url.path.startswith("/v1/"):
            assert "default-src 'none'" in policy, where
        assert reply.headers.get("x-content-type-options") == "nosniff", where


# ---------------------------------------------------------------- errors at the edge


def test_non_ascii_metadata_headers_are_400(api):
    """X-Request-Id and Authorization become gRPC metadata, which is printable ASCII."""
    for name, value in (("x-request-id", "café".encode()), ("authorization", b"Bearer \xe9t\xe9")):
        reply = api.post("/v1/functions/hello-dcf", content="x", headers={name: value})
        body = assert_error(reply, 400, "INVALID_ARGUMENT")
        assert "ASCII" in body["message"]
    assert_error(
        api.get("/v1/functions", headers={"authorization": b"Bearer \xff"}), 400, "INVALID_ARGUMENT"
    )


def test_a_timeout_beyond_the_ceiling_is_clamped(api):
    for value in ("1e10", "1e308", "inf"):
        reply = api.post(
            "/v1/functions/hello-dcf", content="in time", headers={"x-dcf-timeout": value}
        )
        assert reply.status_code == 200 and reply.text == "in time", (value, reply.text)
    for value in ("-1", "0", "nan", "-inf", "soon"):
        reply = api.post("/v1/functions/hello-dcf", content="x", headers={"x-dcf-timeout": value})
        assert "X-Dcf-Timeout" in assert_error(reply, 400, "INVALID_ARGUMENT")["message"]


# ---------------------------------------------------------------- deadlines on connections

QUICK = 1  # seconds: every timeout of the quick server


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Iterator[SmallService]:
    """hello-dcf behind a front whose timeouts are all short, and whose names and
    origins are set by the operator."""
    service = small_service(
        tmp_path_factory.mktemp("quick"),
        env={
            "DCF_HTTP_HEADER_TIMEOUT": str(QUICK),
            "DCF_HTTP_BODY_TIMEOUT": str(QUICK),
            "DCF_HTTP_KEEPALIVE_TIMEOUT": str(QUICK),
            "DCF_HTTP_ALLOWED_HOSTS": "dcf.example",
            "DCF_HTTP_ALLOWED_ORIGINS": "https://app.example",
        },
    )
    yield service
    assert service.stop() == 0, service.log.read_text()[-3000:]


def closed_by_server(sock: socket.socket, within: float = 30.0) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (reading what comes)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def test_a_connection_that_says_nothing_is_closed(quick):
    with connect(quick.http_port) as sock:
        assert closed_by_server(sock), "a silent connection stays open"


def test_a_request_head_trickled_byte_by_byte_is_cut_off(quick):
    """Slowloris: each byte comes before any idle timeout would fire, but the head as a
    whole must be in within the header timeout."""
    head = b"POST /v1/functions/hello-dcf HTTP/1.1\r\nhost: 127.0.0.1\r\n" + b"x-pad: a\r\n" * 200
    with connect(quick.http_port) as sock:
        deadline = time.monotonic() + 30
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except ConnectionError:
                break
            sock.settimeout(0.1)
            try:
                if sock.recv(1) == b"":
                    break
            except TimeoutError:
                pass
            except ConnectionError:
                break
            assert time.monotonic() < deadline, "the trickled head is still being read"
        else:
            pytest.fail("the whole trickled head was taken")


def test_an_idle_keep_alive_connection_is_closed(quick):
    with connect(quick.http_port) as sock:
        client = h11.Connection(h11.CLIENT)
        sock.sendall(
            client.send(
                h11.Request(method="GET", target="/v1/functions", headers=[("host", "127.0.0.1")])
            )
        )
        sock.sendall(client.send(h11.EndOfMessage()))
        while not isinstance(event := client.next_event(), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                client.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                assert event.status_code == 200
        # uvicorn's own default (5 s) would pass a looser bound: this one shows the
        # front's setting is the one in force.
        assert closed_by_server(sock, within=4 * QUICK), "an idle keep-alive connection stays open"


def test_a_stalled_body_is_408_and_its_call_is_cancelled(quick):
    request_id = f"stalled-{uuid.uuid4().hex[:8]}"
    with Duplex(
        quick.http_port, "/v1/functions/hello-dcf", 100, {"x-request-id": request_id}, timeout=30
    ) as call:
        head = call.response()
        body = call.body()
    assert head.status_code == 408
    assert b'"DEADLINE_EXCEEDED"' in body and b"stalled" in body
    line = wait_for(lambda: gateway_line(quick.log, request_id), "the gateway's line for the call")
    assert line[2] == "CANCELLED", line[0]


def test_a_client_that_stops_reading_is_let_go(quick):
    """A client that sends a large echo but never reads the answer holds its call, a
    connection and the answer's buffers: once the answer stalls, the front lets it go."""
    request_id = f"deaf-{uuid.uuid4().hex[:8]}"
    total = 256 * MiB
    call = Duplex(
        quick.http_port, "/v1/functions/hello-dcf", total, {"x-request-id": request_id}, timeout=30
    )
    failure: list[BaseException] = []

    def upload() -> None:
        try:
            for _ in range(total // MiB):
                call.send(b"d" * MiB)
        except BaseException as exc:  # noqa: BLE001 - the test looks at what ended it
            failure.append(exc)

    writer = threading.Thread(target=upload, daemon=True)
    writer.start()
    try:
        writer.join(60)
        assert not writer.is_alive(), "the upload neither ended nor was cut off"
        assert failure and isinstance(failure[0], ConnectionError), failure
    finally:
        call.close()
    line = wait_for(lambda: gateway_line(quick.log, request_id), "the gateway's line for the call")
    assert line[2] in ("CANCELLED", "OK"), line[0]  # see test_disconnect_cancels_the_call
    wait_for(
        lambda: metric(quick.metrics_text(), "dcf_calls_in_flight", function="hello-dcf") == 0,
        "the call ended",
    )


def test_operator_names_and_origins(quick):
    """DCF_HTTP_ALLOWED_HOSTS replaces the local names (the address a connection came in
    on is always served); DCF_HTTP_ALLOWED_ORIGINS lets another origin's page call, and
    read the answer (CORS)."""
    with httpx.Client(base_url=quick.http_url, timeout=30) as client:
        assert client.get("/", headers={"host": "dcf.example"}).status_code == 200
        assert client.get("/", headers={"host": f"127.0.0.1:{quick.http_port}"}).status_code == 200
        assert_error(client.get("/", headers={"host": "localhost"}), 421, "MISDIRECTED_REQUEST")
        app = {"origin": "https://app.example"}
        reply = client.post("/v1/functions/hello-dcf", content="cors", headers=app)
        assert reply.status_code == 200 and reply.text == "cors"
        assert reply.headers["access-control-allow-origin"] == "https://app.example"
        preflight = client.options(
            "/v1/functions/hello-dcf",
            headers={
                **app,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, x-dcf-timeout",
            },
        )
        assert preflight.status_code == 200
        assert "x-dcf-timeout" in preflight.headers["access-control-allow-headers"].lower()
        assert_error(
            client.post(
                "/v1/functions/hello-dcf", content="x", headers={"origin": "https://other.example"}
            ),
            403,
            "PERMISSION_DENIED",
        )


# ---------------------------------------------------------------- descriptors

OPEN_FILES = 160  # the starved server's open-file limit; its front may hold half


@pytest.fixture(scope="module")
def starved(tmp_path_factory) -> Iterator[SmallService]:
    """hello-dcf served under a low open-file limit, logging at DEBUG (which shows each
    accept that failed for want of a descriptor). Its header timeout is long, so that
    only making room, not a timeout, can let a caller in past idle connections."""
    service = small_service(
        tmp_path_factory.mktemp("starved"),
        open_files=OPEN_FILES,
        env={"DCF_LOG_LEVEL": "DEBUG", "DCF_HTTP_HEADER_TIMEOUT": "120"},
    )
    yield service
    assert service.stop() == 0, service.log.read_text()[-3000:]


def grpc_echo(service: SmallService, text: bytes) -> bytes:
    with grpc.insecure_channel(service.address) as channel:
        request = dcf_pb2.InvokeRequest(function="hello-dcf", input=text)
        return dcf_pb2_grpc.GatewayStub(channel).Invoke(request, timeout=20).output


def test_many_idle_connections_stall_neither_http_nor_grpc(starved):
    """More idle connections than the process has descriptors: the front holds at most
    half its limit and makes room by closing the oldest idle one, so a caller gets in
    over HTTP, and the gateway's gRPC side still has descriptors of its own."""
    idle = [connect(starved.http_port) for _ in range(2 * OPEN_FILES + 80)]
    try:
        with httpx.Client(base_url=starved.http_url, timeout=20) as client:
            reply = client.post("/v1/functions/hello-dcf", content="over http")
            assert reply.status_code == 200 and reply.text == "over http"
        assert grpc_echo(starved, b"over grpc") == b"over grpc"
    finally:
        for sock in idle:
            sock.close()


def test_running_out_of_descriptors_is_logged_once_per_interval(starved):
    """Raw connections to the gRPC port take every descriptor the process has left; HTTP
    callers then wait. Each failed accept is seen at DEBUG, but the warning comes once
    (asyncio's own server logged a traceback per failed accept, thousands a second)."""
    log = starved.log
    start = len(log.read_text(errors="replace"))
    failed_accept = "accept failed for want of a descriptor"
    warnings = re.compile(r"out of file descriptors|out of system resource")
    hoarders = [connect(starved.grpc_port) for _ in range(OPEN_FILES + 40)]
    callers: list[socket.socket] = []
    try:
        descriptors = Path(f"/proc/{starved.process.pid}/fd")
        wait_for(
            lambda: len(list(descriptors.iterdir())) >= OPEN_FILES,
            "the gRPC side taking every descriptor left",
        )
        callers = [connect(starved.http_port) for _ in range(5)]

        def failures_seen() -> bool:
            text = log.read_text(errors="replace")[start:]
            assert len(warnings.findall(text)) <= 2, "a warning per failed accept"
            return text.count(failed_accept) >= 8

        wait_for(failures_seen, "eight accepts failing for want of a descriptor", every=0.2)
        text = log.read_text(errors="replace")[start:]
        lines = [line for line in text.splitlines() if warnings.search(line)]
        assert len(lines) == 1 and "WARNING server.http.listener" in lines[0], lines
    finally:
        for sock in hoarders + callers:
            sock.close()
    with httpx.Client(base_url=starved.http_url, timeout=20) as client:
        reply = wait_for(lambda: _answered(client), "an HTTP answer once descriptors are free")
        assert reply.text == "back"
    assert grpc_echo(starved, b"grpc too") == b"grpc too"


def _answered(client: httpx.Client) -> httpx.Response | None:
    try:
        reply = client.post("/v1/functions/hello-dcf", content="back")
    except httpx.TransportError:
        return None
    return reply if reply.status_code == 200 else None


def test_with_every_connection_busy_a_new_one_is_told_to_come_back(tmp_path):
    """At the connection cap with every connection in a call (none idle to close), a new
    connection gets a 503 with Retry-After at once, rather than waiting unanswered."""
    cap = 3
    service = small_service(tmp_path, env={"DCF_HTTP_MAX_CONNECTIONS": str(cap)})
    held: list[Duplex] = []
    try:
        held = [Duplex(service.http_port, "/v1/functions/hello-dcf", 10) for _ in range(cap)]
        for call in held:
            call.send(b"a")
        wait_for(
            lambda: (
                metric(service.metrics_text(), "dcf_calls_in_flight", function="hello-dcf") == cap
            ),
            "the held calls running",
        )
        with httpx.Client(base_url=service.http_url, timeout=30) as client:
            reply = client.get("/v1/functions")
            assert_error(reply, 503, "UNAVAILABLE")
            assert reply.headers["retry-after"] == "1"
            assert reply.headers["x-content-type-options"] == "nosniff"
            held.pop().close()
            reply = wait_for(lambda: _answered(client), "an answer once a connection is free")
            assert reply.text == "back"
    finally:
        for call in held:
            call.close()
        assert service.stop() == 0, service.log.read_text()[-3000:]
