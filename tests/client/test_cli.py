"""The client CLI as a user runs it: a subprocess against a real server."""

from __future__ import annotations

import base64
import json
import os

import pytest

from protos.dcf.v1 import dcf_pb2
from tests.support import call_requests, collect_call, media, run_client

client = run_client


def test_call_echoes_stdin(dcf):
    done = client("call", "hello-dcf", "--address", dcf.address, stdin=b"Hello, DCF!\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"Hello, DCF!\n"


def test_address_before_the_subcommand_and_from_environment(dcf):
    done = client("--address", dcf.address, "call", "hello-dcf", stdin=b"x")
    assert done.stdout == b"x"

    done = client("call", "hello-dcf", stdin=b"y", env={**os.environ, "DCF_ADDRESS": dcf.address})
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"y"


def test_call_reads_a_file_and_prints_base64(dcf, tmp_path):
    data = bytes(range(256)) * 5000
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    done = client("call", "hello-dcf", str(path), "--base64", "--address", dcf.address)
    assert done.returncode == 0, done.stderr
    assert base64.b64decode(done.stdout) == data


def test_list(dcf):
    done = client("list", "--address", dcf.address)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert any(line.startswith("hello-dcf ") and "Echoes" in line for line in lines)


def test_errors_are_one_line_with_status(dcf):
    done = client("call", "no-such", "--address", dcf.address, stdin=b"x")
    assert done.returncode != 0
    assert done.stderr.decode().startswith("error: NOT_FOUND: ")
    assert len(done.stderr.decode().strip().splitlines()) == 1

    done = client("call", "hello-dcf", "-p", "nonsense", "--address", dcf.address)
    assert done.returncode != 0 and done.stderr.decode().startswith("error: INVALID_ARGUMENT: ")

    done = client("call", "hello-dcf", "--address", "127.0.0.1:1", stdin=b"x")
    assert done.returncode != 0 and done.stderr.decode().startswith("error: UNAVAILABLE: ")


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux's /proc")
def test_a_failed_read_is_one_line(dcf):
    """An input that fails mid-read (/proc/self/mem cannot be read at offset 0: EIO)."""
    for where in (["--address", dcf.address], ["--local"]):
        done = client("call", "hello-dcf", "/proc/self/mem", *where)
        assert done.returncode == 1
        assert done.stdout == b""
        assert done.stderr == (
            b"error: INVALID_ARGUMENT: cannot read the input: Input/output error\n"
        )


def test_local_fault_is_one_line(dcf):
    """A handler's bug under --local is reported like any failure, not as a traceback."""
    env = {**os.environ, "DCF_CONFIG": str(dcf.config)}  # the registry with ``faulty``
    done = client("call", "faulty", "--local", stdin=b"x", env=env)
    assert done.returncode == 1
    assert done.stdout == b""
    assert done.stderr == (
        b"error: INTERNAL: internal error in the function: RuntimeError: "
        b"a bug in the handler: this text must stay in the server log\n"
    )


def test_local_equals_served(dcf):
    served = client("call", "hello-dcf", "--address", dcf.address, stdin=b"same bytes")
    local = client("call", "--local", "hello-dcf", stdin=b"same bytes")
    assert local.returncode == 0, local.stderr
    assert served.stdout == local.stdout == b"same bytes"


def test_send_wav_local_equals_served_byte_for_byte(dcf, tmp_path):
    import io

    import numpy as np
    from PIL import Image
    from scipy.io import wavfile

    rate = 44100
    t = np.arange(rate * 2) / rate
    buffer = io.BytesIO()
    wavfile.write(buffer, rate, (0.5 * np.sin(2 * np.pi * 1000 * t) * 32767).astype(np.int16))
    wav = tmp_path / "tone.wav"
    wav.write_bytes(buffer.getvalue())
    served = client("call", "send-wav", str(wav), "--address", dcf.address)
    local = client("call", "--local", "stft", str(wav))
    assert served.returncode == 0, served.stderr
    assert local.returncode == 0, local.stderr
    assert served.stdout == local.stdout
    assert Image.open(io.BytesIO(served.stdout)).size == (1500, 750)


# -- arguments in any order -----------------------------------------------------------------

# Two params that change ssd's answer, so that a param lost on the way would show.
PARAMS = {"threshold": "0.1", "max_detections": "1"}
P1, P2 = ["-p", "threshold=0.1"], ["-p", "max_detections=1"]
A = "{address}"  # the served address, filled in by the test
F = "{photo}"  # the photograph's path, likewise

ORDERS = {
    "file-then-params": ["call", "ssd", F, *P1, *P2, "--address", A],
    "params-then-file": ["call", "ssd", *P1, *P2, F, "--address", A],
    "file-between-params": ["call", "ssd", *P1, F, *P2, "--address", A],
    "options-before-name": ["call", *P1, "--timeout", "60", "ssd", F, *P2, "--address", A],
    "address-before-command": ["--address", A, "call", "ssd", *P1, F, *P2],
    "everything-before-command": [*P1, "--address", A, "--timeout", "60", *P2, "call", "ssd", F],
    "options-last": ["call", "ssd", F, "--timeout", "60", *P2, "--address", A, *P1],
}


@pytest.fixture(scope="module")
def ssd_answer(dcf, tmp_path_factory) -> tuple[str, bytes]:
    """The photograph's path and the answer the gateway gives for it with PARAMS, over gRPC."""
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    path.write_bytes(media.photo())
    with dcf.channel() as channel:
        responses = dcf.gateway(channel).Call(
            call_requests("ssd", [media.photo()], PARAMS), timeout=60
        )
        content_type, body, _ = collect_call(responses)
    assert content_type == "application/json"
    return str(path), body


def test_the_params_change_the_answer(dcf, ssd_answer):
    """Without this, a param dropped by the parser would go unnoticed below."""
    path, answer = ssd_answer
    detections = json.loads(answer)["detections"]
    assert len(detections) == 1
    plain = client("call", "ssd", path, "--address", dcf.address)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout != answer


@pytest.mark.parametrize("order", list(ORDERS.values()), ids=list(ORDERS))
def test_call_arguments_in_any_order(dcf, ssd_answer, order):
    path, answer = ssd_answer
    argv = [word.format(address=dcf.address, photo=path) for word in order]
    done = client(*argv)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    assert done.stdout == answer


def test_file_from_stdin_with_params_after_the_name(dcf, ssd_answer):
    path, answer = ssd_answer
    with open(path, "rb") as photo:
        stdin = photo.read()
    done = client("call", "ssd", *P1, "--address", dcf.address, *P2, stdin=stdin)
    assert done.returncode == 0, done.stderr
    assert done.stdout == answer


def test_environment_address_with_options_first(dcf, ssd_answer):
    path, answer = ssd_answer
    env = {**os.environ, "DCF_ADDRESS": dcf.address}
    done = client("--timeout", "60", *P1, "call", *P2, "ssd", path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == answer


def test_readme_order_annotate_then_file(dcf, ssd_answer):
    """The README's own example: ``call ssd -p annotate=true photo.jpg > boxes.png``."""
    path, _ = ssd_answer
    with dcf.channel() as channel:
        responses = dcf.gateway(channel).Call(
            call_requests("ssd", [media.photo()], {"annotate": "true"}), timeout=60
        )
        content_type, png, _ = collect_call(responses)
    assert content_type == "image/png" and png.startswith(b"\x89PNG\r\n\x1a\n")
    done = client("call", "ssd", "-p", "annotate=true", path, "--address", dcf.address)
    assert done.returncode == 0, done.stderr
    assert done.stdout == png


@pytest.mark.parametrize(
    "order",
    [
        ["list", "--address", A],
        ["--address", A, "list"],
        ["--timeout", "30", "list", "--address", A],
    ],
    ids=["address-after", "address-before", "split"],
)
def test_list_options_in_any_order(dcf, order):
    argv = [word.format(address=dcf.address) for word in order]
    done = client(*argv)
    assert done.returncode == 0, done.stderr
    with dcf.channel() as channel:
        reply = dcf.gateway(channel).ListFunctions(dcf_pb2.ListFunctionsRequest(), timeout=30)
    names = [line.split()[0] for line in done.stdout.decode().splitlines()]
    assert names == [fn.name for fn in reply.functions]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], b"the following arguments are required: command"),
        (["bogus"], b"invalid choice: 'bogus'"),
        (["call"], b"the following arguments are required: NAME"),
        (["call", "hello-dcf", "a", "b"], b"unrecognized arguments: b"),
        (["list", "extra"], b"unrecognized arguments: extra"),
        (["list", "--base64"], b"unrecognized arguments: --base64"),
        (["call", "hello-dcf", "--timeout"], b"argument --timeout: expected one argument"),
        (["call", "hello-dcf", "--timeout", "soon"], b"invalid float value: 'soon'"),
    ],
    ids=[
        "nothing",
        "unknown-command",
        "no-name",
        "two-files",
        "list-extra",
        "list-base64",
        "timeout-missing",
        "timeout-bad",
    ],
)
def test_usage_errors_are_reported_before_any_call(argv, message):
    done = client(*argv, env={**os.environ, "DCF_ADDRESS": "127.0.0.1:1"})
    assert done.returncode == 2
    assert done.stdout == b""
    assert message in done.stderr
    assert b"Traceback" not in done.stderr


@pytest.mark.parametrize("argv", [["--help"], ["call", "--help"], ["list", "-h"]])
def test_help_names_the_command(argv):
    done = client(*argv)
    assert done.returncode == 0, done.stderr
    usage = done.stdout.decode().splitlines()[0]
    assert usage.startswith("usage: python -m client")
    if argv[0] in ("call", "list"):
        assert usage.startswith(f"usage: python -m client {argv[0]}")
