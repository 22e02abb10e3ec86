"""The client library (``from client import Client, AsyncClient``) against real served functions.

Every method, sync and async, answers what the gateway answers over plain gRPC, byte
for byte; every error family is raised as its own class; inputs stream without
being read whole; one client serves eight threads at once; and a stream left early
ends its call up to the worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from client import (
    AsyncClient,
    Cancelled,
    Client,
    DcfError,
    DeadlineExceeded,
    FunctionInfo,
    InternalError,
    InvalidInput,
    NotFound,
    Overloaded,
    PermissionDenied,
    Result,
    TooLarge,
    Unauthenticated,
    Unavailable,
)
from protos.dcf.v1 import dcf_pb2
from tests.support import (
    ROOT,
    Service,
    call_requests,
    collect_call,
    free_port,
    media,
    metric,
    spawn_gateway,
    spawn_server,
)

TIMEOUT = 120.0
MiB = 1 << 20


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def grpc_answer(
    dcf: Service, function: str, data: bytes, params: dict[str, str] | None = None
) -> tuple[str, bytes, list[bytes]]:
    """(content type, body, partial results) of the gateway's own answer over gRPC Call."""
    with dcf.channel() as channel:
        responses = dcf.gateway(channel).Call(
            call_requests(function, [data], params), timeout=TIMEOUT
        )
        return collect_call(responses)


def invoke_answer(
    dcf: Service, function: str, data: bytes, params: dict[str, str] | None = None
) -> dcf_pb2.InvokeResponse:
    with dcf.channel() as channel:
        request = dcf_pb2.InvokeRequest(function=function, input=data, params=params or {})
        return dcf.gateway(channel).Invoke(request, timeout=TIMEOUT)


def in_flight(dcf: Service, function: str) -> float:
    return metric(dcf.metrics_text(), "dcf_calls_in_flight", function=function)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("library-inputs")
    made = {
        "photo.jpg": media.photo(),
        "tone.wav": media.chirp_wav(seconds=1.0),
        "clip.mp4": media.video(frames=12),
    }
    for name, data in made.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in made}


def varied_chunks(data: bytes) -> Iterator[bytes]:
    """``data`` in uneven chunks: empty ones, small ones, and one over the 1 MiB chunk size."""
    yield b""
    yield data[:7]
    yield data[7 : 7 + 3 * MiB]
    yield b""
    for start in range(7 + 3 * MiB, len(data), 100_000):
        yield data[start : start + 100_000]


async def async_chunks(data: bytes) -> AsyncIterator[bytes]:
    for chunk in varied_chunks(data):
        await asyncio.sleep(0)
        yield chunk


# -- whole answers ----------------------------------------------------------------------


def test_call_takes_every_kind_of_input(dcf, tmp_path):
    data = os.urandom(5 * MiB + 3)
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    text = "Grüße, DCF! ✓\n"
    with Client(dcf.address) as client:
        assert client.call("hello-dcf", data).body == data
        assert client.call("hello-dcf", bytearray(data)).body == data
        assert client.call("hello-dcf", memoryview(data)).body == data
        assert client.call("hello-dcf", path).body == data
        with path.open("rb") as opened:
            assert client.call("hello-dcf", opened).body == data
        assert client.call("hello-dcf", io.BytesIO(data)).body == data
        assert client.call("hello-dcf", varied_chunks(data)).body == data
        assert client.call("hello-dcf", b"").body == b""
        result = client.call("hello-dcf", text)
    assert result.body == text.encode("utf-8")
    assert result.text == text
    assert result.content_type == "text/plain"
    # The id is the gateway's, and its log line names the call by it.
    assert result.request_id
    wait_for(
        lambda: f"call {result.request_id} hello-dcf OK" in dcf.log.read_text(),
        "the gateway's log line of the call",
    )


def test_async_call_takes_every_kind_of_input(dcf, tmp_path):
    data = os.urandom(5 * MiB + 3)
    path = tmp_path / "input.bin"
    path.write_bytes(data)

    async def main() -> list[Result]:
        async with AsyncClient(dcf.address) as client:
            with path.open("rb") as opened:
                return [
                    await client.call("hello-dcf", data),
                    await client.call("hello-dcf", path),
                    await client.call("hello-dcf", opened),
                    await client.call("hello-dcf", varied_chunks(data)),
                    await client.call("hello-dcf", async_chunks(data)),
                    await client.call("hello-dcf", "Grüße ✓"),
                ]

    *echoes, text = asyncio.run(main())
    assert [echo.body == data for echo in echoes] == [True] * 5
    assert text.text == "Grüße ✓" and text.content_type == "text/plain"
    assert all(result.request_id for result in [*echoes, text])


# ssd's answer with params that change it, given typed to the library and as strings on
# the wire: a param lost or misspelt on the way shows as another answer.
SSD_TYPED = {"threshold": 0.1, "max_detections": 1, "annotate": False}
SSD_WIRE = {"threshold": "0.1", "max_detections": "1", "annotate": "false"}


def test_ssd_answers_what_grpc_answers(dcf, files):
    photo = media.photo()
    content_type, expected, _ = grpc_answer(dcf, "ssd", photo, SSD_WIRE)
    assert content_type == "application/json"
    assert len(json.loads(expected)["detections"]) == 1
    _, png, _ = grpc_answer(dcf, "ssd", photo, {"annotate": "true"})
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Client(dcf.address) as client:
        result = client.call("ssd", files["photo.jpg"], **SSD_TYPED)
        annotated = client.call("ssd", photo, annotate=True)
        plain = client.call("ssd", photo)
    assert (result.content_type, result.body) == (content_type, expected)
    assert result.json() == json.loads(expected)
    assert (annotated.content_type, annotated.body) == ("image/png", png)
    assert plain.body != expected  # so the params above did travel

    async def main() -> tuple[Result, Result]:
        async with AsyncClient(dcf.address) as client:
            return (
                await client.call("ssd", files["photo.jpg"], **SSD_TYPED),
                await client.call("ssd", photo, annotate=True),
            )

    typed, drawn = asyncio.run(main())
    assert (typed.content_type, typed.body) == (content_type, expected)
    assert drawn.body == png


def test_send_wav_answers_what_grpc_answers(dcf, files):
    wav = files["tone.wav"].read_bytes()
    content_type, expected, _ = grpc_answer(dcf, "send-wav", wav, {"width": "400"})
    assert content_type == "image/png" and expected.startswith(b"\x89PNG\r\n\x1a\n")
    with Client(dcf.address) as client:
        result = client.call("send-wav", files["tone.wav"], width=400)
        with client.stream("stft", files["tone.wav"], width=400) as answer:
            pieces = list(answer)
    assert (result.content_type, result.body) == (content_type, expected)
    assert all(isinstance(piece, bytes) for piece in pieces) and b"".join(pieces) == expected

    async def main() -> Result:
        async with AsyncClient(dcf.address) as client:
            return await client.call("send-wav", files["tone.wav"], width=400)

    assert asyncio.run(main()).body == expected


# -- streamed answers -----------------------------------------------------------------------


def test_ssd_video_frames_as_they_come(dcf, files):
    clip = files["clip.mp4"].read_bytes()
    content_type, _, results = grpc_answer(dcf, "ssd-video", clip, {"max_frames": "3"})
    expected = [json.loads(result) for result in results]
    assert [frame.get("frame") for frame in expected] == [1, 2, 3, None]  # 3 frames, summary
    with Client(dcf.address) as client:
        with client.stream("ssd-video", files["clip.mp4"], max_frames=3) as answer:
            head = answer.header()
            frames = list(answer)
        with client.stream("ssd-video", clip, max_frames=3) as answer:
            raw = list(answer.raw())
        whole = client.call("ssd-video", files["clip.mp4"], max_frames=3)
    assert (head.content_type, head.partial_results) == (content_type, True)
    assert (answer.content_type, answer.partial_results) == (content_type, True)
    assert frames == expected
    assert raw == results
    # A whole answer is the document dcf.v1 Invoke answers, byte for byte.
    invoked = invoke_answer(dcf, "ssd-video", clip, {"max_frames": "3"})
    assert (whole.content_type, whole.body) == (invoked.content_type, invoked.output)
    assert whole.json()["frames"] == expected[:-1]

    async def main() -> tuple[list[object], list[bytes], Result]:
        async with AsyncClient(dcf.address) as client:
            async with client.stream("ssd-video", files["clip.mp4"], max_frames=3) as answer:
                assert (await answer.header()).partial_results
                frames = [frame async for frame in answer]
            raw = [piece async for piece in client.stream("ssd-video", clip, max_frames=3).raw()]
            return frames, raw, await client.call("ssd-video", clip, max_frames=3)

    frames, raw, whole = asyncio.run(main())
    assert frames == expected
    assert raw == results
    assert whole.body == invoked.output


def test_stream_yields_bytes_pieces_as_they_come(dcf):
    data = os.urandom(3 * MiB + 5)
    with Client(dcf.address) as client:
        answer = client.stream("hello-dcf", data)
        assert answer.request_id is None  # known only once the call has ended
        pieces = list(answer)
    assert len(pieces) >= 4  # 1 MiB chunks, not one body
    assert all(len(piece) <= MiB for piece in pieces)
    assert b"".join(pieces) == data
    assert answer.request_id


# -- list and health ----------------------------------------------------------------------


def test_list_and_health(dcf):
    with dcf.channel() as channel:
        reply = dcf.gateway(channel).ListFunctions(dcf_pb2.ListFunctionsRequest(), timeout=30)
    expected = [FunctionInfo.from_message(fn) for fn in reply.functions]
    with Client(dcf.address) as client:
        listed = client.list()
        healthy = [client.health(), client.health("hello-dcf"), client.health("ssd")]
        with pytest.raises(NotFound) as unknown:
            client.health("no-such")
    assert listed == expected
    ssd = next(fn for fn in listed if fn.name == "ssd")
    assert (ssd.input_content_type, ssd.output_content_type) == ("image/*", "application/json")
    assert ssd.aliases == ("ssd-test",) and ssd.max_input_bytes == 16 * MiB
    assert {"threshold", "max_detections", "annotate"} <= set(ssd.params)
    assert healthy == [True, True, True]
    assert unknown.value.code == "NOT_FOUND"

    async def main() -> tuple[list[FunctionInfo], list[bool]]:
        async with AsyncClient(dcf.address) as client:
            return await client.list(), [await client.health(), await client.health("ssd")]

    assert asyncio.run(main()) == (expected, [True, True])


# -- errors -----------------------------------------------------------------------------------

# (function, input, params, the class, its code, its reason): one case per family a
# call to the served instance can meet.
FAILURES = {
    "not-found": ("no-such", b"x", {}, NotFound, "NOT_FOUND", "NOT_FOUND"),
    "bad-input": ("ssd", b"not a picture", {}, InvalidInput, "INVALID_ARGUMENT", "INVALID_INPUT"),
    "bad-param": ("ssd", b"x", {"threshold": 7}, InvalidInput, "INVALID_ARGUMENT", "INVALID_INPUT"),
    "unknown-param": (
        "hello-dcf",
        b"x",
        {"loud": True},
        InvalidInput,
        "INVALID_ARGUMENT",
        "INVALID_INPUT",
    ),
    "too-large": (
        "echo-small",
        b"x" * (3 * MiB),
        {},
        TooLarge,
        "RESOURCE_EXHAUSTED",
        "TOO_LARGE",
    ),
    "fault": ("faulty", b"x", {}, InternalError, "INTERNAL", "INTERNAL"),
}


def check_failure(error: DcfError, kind: type[DcfError], code: str, reason: str) -> None:
    assert type(error) is kind, error
    assert (error.code, error.reason) == (code, reason)
    assert error.message and "\n" not in error.message
    assert error.request_id  # the gateway's id of the call, to quote when asking


@pytest.mark.parametrize("case", list(FAILURES.values()), ids=list(FAILURES))
def test_each_failure_is_its_own_class(dcf, case):
    function, data, params, kind, code, reason = case
    with Client(dcf.address) as client:
        with pytest.raises(DcfError) as called:
            client.call(function, data, **params)
        with pytest.raises(DcfError) as streamed, client.stream(function, data, **params) as a:
            list(a)
    check_failure(called.value, kind, code, reason)
    check_failure(streamed.value, kind, code, reason)

    async def main() -> DcfError:
        async with AsyncClient(dcf.address) as client:
            try:
                await client.call(function, data, **params)
            except DcfError as error:
                return error
        raise AssertionError("the call succeeded")

    check_failure(asyncio.run(main()), kind, code, reason)


def test_too_large_while_still_sending(dcf):
    """A limit crossed mid-upload ends the call at once: the rest is never asked for."""
    sent: list[int] = []

    def endless() -> Iterator[bytes]:
        while len(sent) < 10_000:  # 640 MiB: far more than a refused call ever takes
            sent.append(64 * 1024)
            yield b"y" * (64 * 1024)

    with Client(dcf.address) as client, pytest.raises(TooLarge) as refused:
        client.call("echo-small", endless())
    assert refused.value.reason == "TOO_LARGE"
    assert sum(sent) < 64 * MiB

    async def endless_async() -> AsyncIterator[bytes]:
        while True:
            yield b"z" * (64 * 1024)

    async def main() -> DcfError:
        async with AsyncClient(dcf.address) as client:
            try:
                await client.call("echo-small", endless_async())
            except DcfError as error:
                return error
        raise AssertionError("the call succeeded")

    check_failure(asyncio.run(main()), TooLarge, "RESOURCE_EXHAUSTED", "TOO_LARGE")


def test_nothing_listening_is_unavailable():
    address = f"127.0.0.1:{free_port()}"
    with Client(address) as client:
        for attempt in (
            lambda: client.call("hello-dcf", b"x"),
            client.list,
            client.health,
        ):
            with pytest.raises(Unavailable) as down:
                attempt()
            assert down.value.code == "UNAVAILABLE" and down.value.request_id is None

    async def main() -> None:
        async with AsyncClient(address) as client:
            with pytest.raises(Unavailable):
                await client.call("hello-dcf", b"x")
            with pytest.raises(Unavailable):
                await client.list()

    asyncio.run(main())


class Held:
    """An input that sends one chunk, then waits until released (or 60 s)."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def chunks(self) -> Iterator[bytes]:
        yield b"held"
        self.released.wait(60)

    async def async_chunks(self) -> AsyncIterator[bytes]:
        yield b"held"
        for _ in range(6000):
            if self.released.is_set():
                return
            await asyncio.sleep(0.01)


def test_deadline_and_cancel(dcf):
    held = Held()
    try:
        with (
            Client(dcf.address, timeout=1.0) as client,
            pytest.raises(DeadlineExceeded) as expired,
        ):
            client.call("hello-dcf", held.chunks())
        assert expired.value.code == "DEADLINE_EXCEEDED"

        with Client(dcf.address) as client:
            answer = client.stream("hello-dcf", held.chunks())
            assert next(answer) == b"held"
            answer.cancel()
            with pytest.raises(Cancelled) as cancelled:
                next(answer)
        assert cancelled.value.code == "CANCELLED"

        async def main() -> tuple[DcfError, DcfError]:
            async with AsyncClient(dcf.address, timeout=1.0) as client:
                try:
                    await client.call("hello-dcf", held.async_chunks())
                except DcfError as error:
                    late = error
            async with AsyncClient(dcf.address) as client:
                answer = client.stream("hello-dcf", held.async_chunks())
                assert await anext(answer) == b"held"
                answer.cancel()
                try:
                    await anext(answer)
                except DcfError as error:
                    return late, error
            raise AssertionError("the cancelled call went on")

        late, cancelled_async = asyncio.run(main())
        assert type(late) is DeadlineExceeded
        assert type(cancelled_async) is Cancelled
    finally:
        held.released.set()


def test_a_full_queue_is_overloaded(dcf):
    """echo-queue runs one call and queues one (tests/conftest.py): a third is refused."""
    held = Held()

    def depth() -> float:
        return metric(dcf.metrics_text(), "dcf_queue_depth", function="echo-queue")

    try:
        with Client(dcf.address, timeout=TIMEOUT) as client:
            running = client.stream("echo-queue", held.chunks())
            assert next(running) == b"held"
            waiting = client.stream("echo-queue", held.chunks())
            wait_for(lambda: depth() == 1, "the second call to wait in the queue")
            with pytest.raises(DcfError) as refused:
                client.call("echo-queue", b"third")

            async def main() -> DcfError:
                async with AsyncClient(dcf.address) as client:
                    try:
                        await client.call("echo-queue", b"fourth")
                    except DcfError as error:
                        return error
                raise AssertionError("the call was not refused")

            refused_async = asyncio.run(main())
            held.released.set()
            assert list(running) == [] and b"".join(waiting) == b"held"
    finally:
        held.released.set()
    check_failure(refused.value, Overloaded, "RESOURCE_EXHAUSTED", "OVERLOADED")
    check_failure(refused_async, Overloaded, "RESOURCE_EXHAUSTED", "OVERLOADED")


def test_the_inputs_own_failures_reach_the_caller(dcf, tmp_path):
    def broken() -> Iterator[bytes]:
        yield b"fine so far"
        raise OSError("the disk went away")

    async def broken_async() -> AsyncIterator[bytes]:
        yield b"fine so far"
        raise OSError("the disk went away")

    with Client(dcf.address) as client:
        with pytest.raises(OSError, match="the disk went away"):
            client.call("hello-dcf", broken())
        with pytest.raises(FileNotFoundError):
            client.stream("hello-dcf", tmp_path / "missing.bin")
        with pytest.raises(TypeError, match="param when"):
            client.call("hello-dcf", b"x", when=object())  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not int"):
            client.call("hello-dcf", 42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="text mode"), open(__file__) as text:
            client.call("hello-dcf", text)  # type: ignore[arg-type]
        assert client.call("hello-dcf", b"still fine").body == b"still fine"

    async def main() -> None:
        async with AsyncClient(dcf.address) as client:
            with pytest.raises(OSError, match="the disk went away"):
                await client.call("hello-dcf", broken_async())
            with pytest.raises(OSError, match="the disk went away"):
                await client.call("hello-dcf", broken())
            with pytest.raises(FileNotFoundError):
                await client.call("hello-dcf", tmp_path / "missing.bin")

    asyncio.run(main())


# -- tokens and TLS ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A TLS gateway that wants a token ("alpha" or "beta"), in front of a hello-dcf worker:
    its address and the CA to trust."""
    import trustme

    folder = tmp_path_factory.mktemp("guarded")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    leaf.private_key_pem.write_to_path(str(folder / "key.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    worker_port, gateway_port = free_port(), free_port()
    worker = spawn_server(["worker", "hello-dcf", "--port", str(worker_port)], folder / "w.log")
    env = {
        "DCF_TLS_CERT": str(folder / "cert.pem"),
        "DCF_TLS_KEY": str(folder / "key.pem"),
        "DCF_TOKENS": "alpha, beta",
    }
    gateway = spawn_gateway(
        gateway_port, f"hello-dcf=127.0.0.1:{worker_port}", folder / "g.log", env
    )
    address = f"127.0.0.1:{gateway_port}"
    try:

        def serving() -> bool:
            with Client(address, ca=folder / "ca.pem", timeout=5) as client:
                try:
                    return client.health("hello-dcf")
                except DcfError:
                    return False

        wait_for(serving, "the guarded gateway's hello-dcf")
        yield address, folder / "ca.pem"
    finally:
        for process in (gateway, worker):
            process.kill()
            process.wait()


def test_token_and_ca(guarded):
    address, ca = guarded
    with Client(address, ca=ca, token="alpha") as client:
        assert client.call("hello-dcf", b"over TLS").body == b"over TLS"
        assert [fn.name for fn in client.list()] != []
    with Client(address, ca=ca.read_bytes()) as client:
        assert client.health() is True  # health checks need no token
        with pytest.raises(Unauthenticated) as missing:
            client.call("hello-dcf", b"x")
        with pytest.raises(Unauthenticated):
            client.list()
    with Client(address, ca=ca, token="gamma") as client, pytest.raises(PermissionDenied) as wrong:
        client.call("hello-dcf", b"x")
    assert (missing.value.code, wrong.value.code) == ("UNAUTHENTICATED", "PERMISSION_DENIED")
    with Client(address) as client, pytest.raises(Unavailable):  # plaintext to a TLS port
        client.call("hello-dcf", b"x")

    async def main() -> tuple[Result, DcfError]:
        async with AsyncClient(address, ca=ca, token="beta") as client:
            echoed = await client.call("hello-dcf", b"async over TLS")
        async with AsyncClient(address, ca=ca, token="gamma") as client:
            try:
                await client.list()
            except DcfError as error:
                return echoed, error
        raise AssertionError("a wrong token was let in")

    echoed, refused = asyncio.run(main())
    assert echoed.body == b"async over TLS"
    assert type(refused) is PermissionDenied


# -- streaming without holding, threads, cancellation ---------------------------------------

# Runs in a process of its own so that its peak memory is the client's alone: a warm-up
# call, then the peak is reset and a file streamed through hello-dcf's echo, the answer
# hashed as it comes and never kept.
MEMORY_SCRIPT = """
import asyncio, hashlib, json, os, sys
from pathlib import Path
from client import AsyncClient, Client
from tests.support import memory, reset_peak

address, path, mode = sys.argv[1:]
pid = os.getpid()

def sync():
    with Client(address) as dcf:
        dcf.call("hello-dcf", b"warm" * 1000)
        before = memory(pid)["VmRSS"]
        reset_peak(pid)
        digest = hashlib.sha256()
        for piece in dcf.stream("hello-dcf", Path(path)):
            digest.update(piece)
        return before, digest.hexdigest()

async def main():
    async with AsyncClient(address) as dcf:
        await dcf.call("hello-dcf", b"warm" * 1000)
        before = memory(pid)["VmRSS"]
        reset_peak(pid)
        digest = hashlib.sha256()
        async for piece in dcf.stream("hello-dcf", Path(path)):
            digest.update(piece)
        return before, digest.hexdigest()

before, digest = sync() if mode == "sync" else asyncio.run(main())
print(json.dumps({"growth": memory(pid)["VmHWM"] - before, "sha256": digest}))
"""
STREAMED_BYTES = 128 * MiB
# gRPC's flow-control windows and buffers and the allocator's arenas hold about 25 MiB
# of a long stream, whatever its length (64 MiB or 192 MiB alike); an input or answer
# held whole would be 128 MiB.
GROWTH_LIMIT = 48 * MiB


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_big_file_streams_through_without_being_held(dcf, tmp_path, mode):
    path = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(STREAMED_BYTES // MiB):
            chunk = os.urandom(MiB)
            digest.update(chunk)
            out.write(chunk)
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, dcf.address, str(path), mode],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert report["sha256"] == digest.hexdigest()
    assert report["growth"] < GROWTH_LIMIT, f"{report['growth'] / MiB:.1f} MiB"


def test_one_client_from_eight_threads(dcf):
    inputs = [bytes([index]) * (2 * MiB) + os.urandom(MiB) for index in range(8)]
    start = threading.Barrier(8)
    answers: dict[int, tuple[bytes, bytes, list[str]]] = {}

    def work(client: Client, index: int) -> None:
        start.wait(30)
        called = client.call("hello-dcf", varied_chunks(inputs[index])).body
        streamed = b"".join(client.stream("hello-dcf", inputs[index]))
        answers[index] = (called, streamed, [fn.name for fn in client.list()])

    with Client(dcf.address) as client:
        threads = [threading.Thread(target=work, args=(client, i)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        names = [fn.name for fn in client.list()]
    assert sorted(answers) == list(range(8))
    for index, (called, streamed, listed) in answers.items():
        assert called == streamed == inputs[index]
        assert listed == names


CALL_LINE = re.compile(
    r"(server\.gateway\.core|server\.worker\.servicer)\[\d+\]: call (\S+) hello-dcf (\S+)"
)
# How the worker may end a call its caller left mid-upload: CANCELLED, or its answer to
# the input as it was when the gateway cut it (as in tests/reliability/test_disconnect.py).
WORKER_ENDINGS = {"CANCELLED", "OK"}


def cancelled_calls(log: Path) -> dict[str, str | None]:
    """hello-dcf calls the gateway logged CANCELLED: request id -> the worker's outcome
    (None while the worker has not ended its part)."""
    gateway, worker = set(), {}
    for role, request_id, outcome in CALL_LINE.findall(log.read_text()):
        if role == "server.gateway.core" and outcome == "CANCELLED":
            gateway.add(request_id)
        elif role == "server.worker.servicer":
            worker[request_id] = outcome
    return {request_id: worker.get(request_id) for request_id in gateway}


def wait_ended_at_the_worker(log: Path, before: set[str]) -> set[str]:
    """Wait for a call cancelled at the gateway, not in ``before``, to end at the worker."""

    def ended() -> bool:
        calls = cancelled_calls(log)
        return any(calls[rid] in WORKER_ENDINGS for rid in set(calls) - before)

    wait_for(ended, "a cancelled call to end at the worker")
    return set(cancelled_calls(log))


def endless() -> Iterator[bytes]:
    while True:
        yield b"e" * (64 * 1024)


async def endless_async() -> AsyncIterator[bytes]:
    while True:
        yield b"e" * (64 * 1024)
        await asyncio.sleep(0)


def test_leaving_a_stream_early_ends_the_call_at_the_worker(dcf):
    """A loop broken out of, with the input still coming: the worker's call ends too."""
    wait_for(lambda: in_flight(dcf, "hello-dcf") == 0, "earlier hello-dcf calls to end")
    seen = set(cancelled_calls(dcf.log))
    with Client(dcf.address) as client:
        for piece in client.stream("hello-dcf", endless()):
            assert piece.startswith(b"e")
            assert in_flight(dcf, "hello-dcf") == 1
            break
        seen = wait_ended_at_the_worker(dcf.log, seen)
        wait_for(lambda: in_flight(dcf, "hello-dcf") == 0, "no hello-dcf call in flight")
        assert client.call("hello-dcf", b"after").body == b"after"

    async def main(seen: set[str]) -> None:
        async with AsyncClient(dcf.address) as client:
            async for piece in client.stream("hello-dcf", endless_async()):
                assert piece.startswith(b"e")
                assert in_flight(dcf, "hello-dcf") == 1
                break
            seen = await asyncio.to_thread(wait_ended_at_the_worker, dcf.log, seen)
            async with client.stream("hello-dcf", endless_async()) as answer:
                assert (await anext(answer)).startswith(b"e")
        await asyncio.to_thread(wait_ended_at_the_worker, dcf.log, seen)

    asyncio.run(main(seen))
    wait_for(lambda: in_flight(dcf, "hello-dcf") == 0, "no hello-dcf call in flight")


def test_a_closed_client_refuses_calls(dcf):
    client = Client(dcf.address)
    client.close()
    with pytest.raises(ValueError, match="closed"):
        client.call("hello-dcf", b"x")
