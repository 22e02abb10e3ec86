"""README.md and docs/*.md as a tested contract: every example in their code blocks, run as
written, and its output checked.

The examples are what tests/docs/examples.py extracts: each command of a shell block
(backslash continuations and ``# comments`` included) and each ``python`` block. They are
found when the tests are collected, so an example is tested the day it is written.

How they run:

* against one served instance, ``python -m server`` started by
  ``server.testing.start_service`` on free ports. So the only text changed in an example
  is the documented defaults' host:port, ``127.0.0.1:50051`` (the gateway),
  ``127.0.0.1:8080`` (the HTTP front) and ``127.0.0.1:9100`` (the metrics), each to the
  served one; ``DCF_ADDRESS`` in the environment names the served gateway too. The
  instance answers one call before the examples run, as a deployment in use has (the
  metrics example greps for request counters);
* in a fresh temporary working directory holding real inputs at the paths the examples
  name: photo.jpg and dog.jpg (matplotlib's grace_hopper.jpg), a.wav (a generated chirp),
  clip.mp4 (a generated 12-frame video of the photograph);
* a shell command by ``bash -o pipefail -c``, a python block as a script in that
  directory, with this interpreter's folder (``.venv/bin``) first on PATH, so that
  ``python`` and ``grpcurl`` are the project's, and standard input empty.

Each must exit 0 with nothing on standard error, and its output must be what it documents:
the first rule of CHECKS that matches the example checks it, against the gateway's own
answer to the same call byte for byte where there is one, and for what the answer means
(ssd's JSON has a person in it, a PNG is a PNG of the right size, the echo is its input,
list names the four functions...). An example no rule matches must produce something.

An example a test cannot run (a Docker daemon, a Kubernetes cluster, a browser, an
editor; a server or ``make run`` that runs until stopped, ``make test`` that runs this
suite) is skipped by the rule of examples.SKIPS it matches, its reason in the skip.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from PIL import Image

from client.cli import parse_args, parse_params
from protos.dcf.v1 import dcf_pb2
from tests.support import ROOT, Service, call_requests, collect_call, media, start_service
from tests.support.examples import Example, all_examples, examples_in, skip_reason

EXAMPLES = all_examples(ROOT)
FUNCTIONS = ["hello-dcf", "ssd", "send-wav", "ssd-video"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLIP_FRAMES = 12  # more than ssd-video's default 10, so that its limit shows
COMMAND_TIMEOUT = 180  # seconds; generous, for a shared two-core machine
OPERATORS = {"|", "<", ">", ">>", "&&", "||", ";", "&"}


# -- the served instance and the inputs ---------------------------------------------------


@dataclass
class Answer:
    content_type: str
    body: bytes
    results: list[bytes]

    @property
    def as_output(self) -> bytes:
        """What a client prints: the body, or each partial result on a line of its own."""
        return b"".join(result + b"\n" for result in self.results) if self.results else self.body


@dataclass
class Served:
    service: Service
    _answers: dict = field(default_factory=dict)

    @property
    def rewrites(self) -> dict[str, str]:
        """The documented defaults' host:port -> the served instance's."""
        server = self.service.document["server"]
        return {
            "127.0.0.1:50051": self.service.address,
            "127.0.0.1:8080": f"127.0.0.1:{self.service.http_port}",
            "127.0.0.1:9100": f"127.0.0.1:{server['metrics_port']}",
        }

    def rewrite(self, text: str) -> str:
        for documented, served in self.rewrites.items():
            text = re.sub(re.escape(documented) + r"(?!\d)", served, text)
        return text

    def call(self, function: str, data: bytes, params: dict[str, str] | None = None) -> Answer:
        """The gateway's own answer over gRPC Call, to compare an example's output with."""
        key = (function, data, tuple(sorted((params or {}).items())))
        if key not in self._answers:
            with self.service.channel() as channel:
                responses = self.service.gateway(channel).Call(
                    call_requests(function, [data], params), timeout=COMMAND_TIMEOUT
                )
                self._answers[key] = Answer(*collect_call(responses))
        return self._answers[key]

    def function_names(self) -> list[str]:
        with self.service.channel() as channel:
            reply = self.service.gateway(channel).ListFunctions(
                dcf_pb2.ListFunctionsRequest(), timeout=30
            )
        return [fn.name for fn in reply.functions]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    service = start_service(tmp_path_factory.mktemp("docs-served"))
    try:
        served = Served(service)
        assert served.call("hello-dcf", b"warm").body == b"warm"
        yield served
    finally:
        service.stop()


@pytest.fixture(scope="module")
def inputs() -> dict[str, bytes]:
    """The files the examples name, by name."""
    return {
        "photo.jpg": media.photo(),
        "dog.jpg": media.photo(),
        "a.wav": media.chirp_wav(seconds=2.0),
        "clip.mp4": media.video(frames=CLIP_FRAMES),
    }


# -- running an example -------------------------------------------------------------------


@dataclass
class Ran:
    """An example that ran: what it wrote, where, and what to compare it with."""

    example: Example
    stdout: bytes
    workdir: Path
    served: Served
    inputs: dict[str, bytes]

    @property
    def words(self) -> list[str]:
        return self.example.words

    def after(self, word: str) -> str | None:
        """The word after the first ``word``, if any."""
        words = self.words
        return words[words.index(word) + 1] if word in words[:-1] else None

    def output(self) -> bytes:
        """What the example produced: the file it redirects or saves to, else its stdout."""
        target = self.after(">") or self.after("-o")
        if target is None:
            return self.stdout
        assert self.stdout == b"", "the output went to a file; nothing else is expected"
        path = self.workdir / target
        assert path.is_file(), f"{target} was not written"
        return path.read_bytes()


def run_example(example: Example, served: Served, workdir: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DCF_ADDRESS": served.service.address,
    }
    text = served.rewrite(example.text)
    if example.language == "python":
        script = workdir / "example.py"
        script.write_text(text)
        argv = ["python", script.name]
    else:
        argv = ["bash", "-o", "pipefail", "-c", text]
    return subprocess.run(
        argv,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
    )


# -- what each example's output must be ---------------------------------------------------


def assert_right_answer(function: str, params: dict[str, str], data: bytes, got: bytes) -> None:
    """What the documentation says ``function`` answers, of the test inputs."""
    if function == "hello-dcf":
        assert got == data
    elif function in ("ssd", "ssd-test") and params.get("annotate") == "true":
        assert got.startswith(PNG_SIGNATURE)
        assert Image.open(io.BytesIO(got)).size == Image.open(io.BytesIO(data)).size
    elif function in ("ssd", "ssd-test"):
        answer = json.loads(got)
        assert (answer["width"], answer["height"]) == (512, 600)
        assert "person" in [found["label"] for found in answer["detections"]], answer
        threshold = float(params.get("threshold", 0.5))
        assert all(found["confidence"] >= threshold for found in answer["detections"]), answer
    elif function in ("send-wav", "stft"):
        assert got.startswith(PNG_SIGNATURE)
        assert Image.open(io.BytesIO(got)).size == (1500, 750)
    elif function == "ssd-video":
        lines = [json.loads(line) for line in got.decode().splitlines()]
        frames, summary = lines[:-1], lines[-1]
        assert [frame["frame"] for frame in frames] == list(range(1, 11))
        assert all(
            "person" in [found["label"] for found in frame["detections"]] for frame in frames
        ), frames
        assert summary == {"width": 320, "height": 240, "fps": 10.0, "frames_read": 10}
    else:
        raise AssertionError(f"no expectation for {function}'s answer: add one here")


def check_client(ran: Ran, match: re.Match[str]) -> None:
    """``python -m client ...``: parsed by the client's own parser, compared with the gateway."""
    words = ran.words
    start = words.index("client") + 1
    end = next((i for i in range(start, len(words)) if words[i] in OPERATORS), len(words))
    args = parse_args(words[start:end])
    if args.command == "list":
        names = [line.split()[0] for line in ran.stdout.decode().splitlines()]
        assert names == ran.served.function_names()
        assert sorted(names) == sorted(FUNCTIONS)
        return
    if match["echo"] is not None:
        data = match["echo"].encode() + b"\n"
    else:
        source = args.file or ran.after("<")
        assert source is not None, "an example that reads standard input must give it"
        data = ran.inputs[source]
    params = parse_params(args.param)
    got = ran.output()
    assert got == ran.served.call(args.function, data, params).as_output
    assert_right_answer(args.function, params, data, got)


def check_http_call(ran: Ran, match: re.Match[str]) -> None:
    url = next(word for word in ran.words if "/v1/functions/" in word)
    function = urlsplit(url).path.rsplit("/", 1)[1]
    params = dict(parse_qsl(urlsplit(url).query))
    body = next(word for word in ran.words if word.startswith("@"))
    data = ran.inputs[body[1:]]
    got = ran.output()
    assert got == ran.served.call(function, data, params).as_output
    assert_right_answer(function, params, data, got)


def check_http_list(ran: Ran, match: re.Match[str]) -> None:
    listed = json.loads(ran.stdout)
    assert [fn["name"] for fn in listed] == ran.served.function_names()
    assert sorted(fn["name"] for fn in listed) == sorted(FUNCTIONS)


def check_grpcurl_list(ran: Ran, match: re.Match[str]) -> None:
    services = ran.stdout.decode().split()
    for service in (
        "dcf.v1.Gateway",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "inference.GRPCInferenceService",
    ):
        assert service in services, services


def check_grpcurl_invoke(ran: Ran, match: re.Match[str]) -> None:
    request = json.loads(ran.after("-d"))
    data = base64.b64decode(request.get("input", ""))
    params = request.get("params", {})
    reply = json.loads(ran.stdout)
    got = base64.b64decode(reply.get("output", ""))
    expected = ran.served.call(request["function"], data, params)
    # grpcurl prints the proto's own field names (content_type); protojson's default, camelCase.
    assert reply.get("content_type", reply.get("contentType")) == expected.content_type
    assert got == expected.body
    assert_right_answer(request["function"], params, data, got)


def check_metrics(ran: Ran, match: re.Match[str]) -> None:
    lines = ran.stdout.decode().splitlines()
    assert lines and all(match["pattern"] in line for line in lines), lines
    assert any(line.startswith("dcf_requests_total{") for line in lines), lines


def check_triton_example(ran: Ran, match: re.Match[str]) -> None:
    """README's Open Inference example: ssd on photo.jpg at threshold 0.4, then its type."""
    answer, content_type = ran.stdout.decode().splitlines()
    data = ran.inputs["photo.jpg"]
    params = {"threshold": "0.4"}
    expected = ran.served.call("ssd", data, params)
    assert answer.encode() == expected.body
    assert content_type == expected.content_type == "application/json"
    assert_right_answer("ssd", params, data, answer.encode())


Check = Callable[[Ran, re.Match[str]], None]
# (language, pattern searched in Example.shape, check): the first that matches checks.
CHECKS: list[tuple[str, re.Pattern[str], Check]] = [
    ("shell", re.compile(r"^(?:echo (?P<echo>[^|]*) \| )?python -m client\b"), check_client),
    ("shell", re.compile(r"^curl\b.*/v1/functions/[\w-]+"), check_http_call),
    ("shell", re.compile(r"^curl\b.*/v1/functions$"), check_http_list),
    ("shell", re.compile(r"^curl\b.*/metrics \| grep (?P<pattern>\S+)$"), check_metrics),
    ("shell", re.compile(r"^grpcurl\b.* list$"), check_grpcurl_list),
    ("shell", re.compile(r"^grpcurl\b.*dcf\.v1\.Gateway/Invoke$"), check_grpcurl_invoke),
    ("python", re.compile(r"import tritonclient\b"), check_triton_example),
]


def check_for(example: Example) -> tuple[Check, re.Match[str]] | None:
    for language, pattern, check in CHECKS:
        found = pattern.search(example.shape) if language == example.language else None
        if found:
            return check, found
    return None


# -- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.id for example in EXAMPLES])
def test_example(example: Example, request: pytest.FixtureRequest, tmp_path: Path):
    reason = skip_reason(example)
    if reason is not None:
        pytest.skip(f"{example.id}: {reason}")
    # Asked for only now, so that a run of skipped examples starts no server.
    served: Served = request.getfixturevalue("served")
    inputs: dict[str, bytes] = request.getfixturevalue("inputs")
    for name, data in inputs.items():
        (tmp_path / name).write_bytes(data)
    before = set(tmp_path.iterdir())
    done = run_example(example, served, tmp_path)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stderr == b"", done.stderr.decode(errors="replace")
    ran = Ran(example, done.stdout, tmp_path, served, inputs)
    found = check_for(example)
    if found is not None:
        check, match = found
        check(ran, match)
    else:
        made = [path for path in set(tmp_path.iterdir()) - before if path.stat().st_size]
        assert done.stdout or made, "the example produced nothing"


def test_every_check_still_applies():
    """A check whose example was reworded would silently stop checking anything."""
    runnable = [example for example in EXAMPLES if skip_reason(example) is None]
    for language, pattern, check in CHECKS:
        assert any(
            language == example.language and pattern.search(example.shape) for example in runnable
        ), f"{check.__name__} matches no example any more: fix its pattern"


def test_the_documents_have_examples():
    """The extraction still finds examples that run, in the README and in docs/."""
    runnable = [example for example in EXAMPLES if skip_reason(example) is None]
    assert {example.doc for example in runnable} >= {"README.md", "docs/deploying.md"}
    assert {example.language for example in runnable} == {"shell", "python"}


def test_a_continued_command_is_one_command(tmp_path: Path):
    """Backslash continuations and comments, as the shell reads them."""
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "README.md"
    doc.write_text(
        "Intro.\n\n```\n# a comment line\nprintf '%s|' one \\\n    two \\\n"
        "    'three four'      # the words\necho done\n```\n\n```yaml\nnot: a command\n```\n"
    )
    found = examples_in(doc, tmp_path)
    assert [(example.line, example.language) for example in found] == [(5, "shell"), (8, "shell")]
    continued = found[0]
    assert continued.words == ["printf", "%s|", "one", "two", "three four"]
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", continued.text], capture_output=True, timeout=30
    )
    assert done.returncode == 0 and done.stdout == b"one|two|three four|"


def test_commands_that_cannot_run_are_skipped_by_name():
    def shell(text: str) -> Example:
        return Example("README.md", 1, "shell", text)

    for text in (
        "make run",
        "make test",
        "docker compose up -d",
        "kubectl apply -f k8s/",
        "open http://127.0.0.1:8080/",
        "source .venv/bin/activate",
        "python -m server worker ssd --port 50061",
    ):
        assert skip_reason(shell(text)), text
    for text in (
        "python -m client list",
        "python -m server.probe 127.0.0.1:50051",
        "curl -s http://127.0.0.1:8080/v1/functions",
        "opener x",
    ):
        assert skip_reason(shell(text)) is None, text


def test_rewrite_changes_only_the_documented_addresses(served: Served):
    text = "a 127.0.0.1:50051 b http://127.0.0.1:8080/v1 c 127.0.0.1:80800 d 10.0.0.5:50051"
    rewritten = served.rewrite(text)
    assert rewritten == (
        f"a {served.service.address} b http://127.0.0.1:{served.service.http_port}/v1"
        " c 127.0.0.1:80800 d 10.0.0.5:50051"
    )
