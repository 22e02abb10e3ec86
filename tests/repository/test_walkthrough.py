"""docs/functions.md, "Write a function", run as written: every step, in order, in one folder.

Each step is what tests/support/examples.py finds in the walkthrough: a shell command,
or a file block the reader writes (its text, to its path). They run as the reader runs
them, in one fresh folder holding ``photo.jpg`` (matplotlib's grace_hopper.jpg):

* a shell command by ``bash -o pipefail -c``, with this interpreter's folder first on
  PATH and ``DCF_ADDRESS`` naming the served gateway; it must exit 0 with nothing on
  standard error;
* ``python -m server ...`` that serves (the walkthrough's "serve it" step) starts, with
  the arguments as written, in that folder, on free ports (a registry of hello-dcf
  alone, so that no model loads), and runs until the walkthrough ends. The documented
  addresses 127.0.0.1:50051 and :8080 are rewritten to the served ones;
* while it serves, after a step that changed a function folder, the walkthrough waits
  for the server's log to say the new version serves, as a reader would;
* what cannot run here (Docker, Kubernetes) is skipped by examples.SKIPS.

Then what the steps made is checked: the thumbnails' sizes, the served answer against the
one made in-process, the HTTP answer against the gRPC one, byte for byte.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from server.repository.folder import FolderError, folders_in, read_folder
from tests.support import ROOT, Service, free_port, media, wait_listening, wait_serving
from tests.support.examples import Example, examples_in, skip_reason, walkthroughs

DOC = ROOT / "docs" / "functions.md"
STEPS = examples_in(DOC, ROOT, files=True)
PATIENCE = 120.0
PNG = b"\x89PNG\r\n\x1a\n"
SERVE = re.compile(r"^python -m server(?! (init|ship)\b)(?P<args>( .*)?)$")
RUNS_ANYWAY = re.compile(r"^python -m server (init|ship)\b")  # files written, then done


class Walkthrough:
    """The reader's folder, and the dcf it serves once the walkthrough says so."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.service: Service | None = None
        self.outputs: dict[str, bytes] = {}
        self.skipped: list[str] = []
        self._served: dict[str, str] = {}  # function name -> version served

    def run(self, step: Example) -> None:
        if step.language == "file":
            path = self.folder / step.file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(step.text)
        elif step.language == "shell" and (match := SERVE.match(step.shape)):
            self.serve(match["args"].split())
        elif step.language == "shell" and not RUNS_ANYWAY.match(step.shape) and skip_reason(step):
            self.skipped.append(step.shape)
            return
        else:
            self.shell(step)
        self.wait_for_versions()

    def shell(self, step: Example) -> None:
        assert step.language == "shell", f"{step.id}: a walkthrough runs shell and files"
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        text = step.text
        if self.service is not None:
            env["DCF_ADDRESS"] = self.service.address
            text = text.replace("127.0.0.1:50051", self.service.address)
            text = text.replace("127.0.0.1:8080", f"127.0.0.1:{self.service.http_port}")
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", text],
            cwd=self.folder,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PATIENCE,
        )
        assert done.returncode == 0, f"{step.id}:\n{done.stderr.decode(errors='replace')}"
        assert done.stderr == b"", f"{step.id}:\n{done.stderr.decode(errors='replace')}"
        self.outputs[step.shape] = done.stdout

    def serve(self, args: list[str]) -> None:
        assert self.service is None, "the walkthrough serves once"
        server = {"port": free_port(), "metrics_port": free_port(), "http_port": free_port()}
        hello = {"handler": "handlers.hello", "workers": [f"127.0.0.1:{free_port()}"]}
        document = {"server": server, "functions": {"hello-dcf": hello}}
        config = self.folder.parent / "registry.yaml"
        config.write_text(yaml.safe_dump(document))
        log = self.folder.parent / "server.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--config", str(config), *args],
            cwd=self.folder,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        address = f"127.0.0.1:{server['port']}"
        self.service = Service(process, address, config, document, log, server["http_port"])
        wait_serving(address, timeout=PATIENCE)
        wait_listening(server["http_port"], timeout=PATIENCE)
        self._served = self.versions()

    def versions(self) -> dict[str, str]:
        found = {}
        for folder in folders_in([self.folder]):
            try:
                found[folder.name] = read_folder(folder).config.version
            except FolderError:
                continue
        return found

    def wait_for_versions(self) -> None:
        """Once serving: wait until each folder changed by the last step serves anew."""
        if self.service is None:
            return
        for name, version in self.versions().items():
            if self._served.get(name) == version:
                continue
            line = f"function {name} "
            deadline = time.monotonic() + PATIENCE
            while not any(
                line in text and f"version {version} serving" in text
                for text in self.log().splitlines()
            ):
                assert time.monotonic() < deadline, f"{name} {version} never served:\n{self.log()}"
                time.sleep(0.05)
            self._served[name] = version

    def log(self) -> str:
        assert self.service is not None
        return self.service.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()


def size_of(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG)
    return Image.open(io.BytesIO(png)).size


def thumbnail_size(photo: bytes, longest: int) -> tuple[int, int]:
    image = Image.open(io.BytesIO(photo))
    image.thumbnail((longest, longest))
    return image.size


def test_functions_md_is_the_walkthrough():
    assert walkthroughs(ROOT) == [DOC]
    kinds = [step.language for step in STEPS]
    assert kinds.count("file") == 3 and "shell" in kinds and "python" not in kinds


def test_write_a_function_as_written(tmp_path: Path):
    folder = tmp_path / "functions"
    folder.mkdir()
    photo = media.photo()
    (folder / "photo.jpg").write_bytes(photo)
    walk = Walkthrough(folder)
    try:
        for step in STEPS:
            walk.run(step)
        assert walk.service is not None and walk.service.process.poll() is None
    finally:
        walk.stop()

    # 1. The scaffold, tested and run in-process before it was made a thumbnailer.
    outputs = walk.outputs
    assert outputs["python -m server init thumbnail"].startswith(b"created thumbnail/")
    hello = "echo Hello, dcf | DCF_FUNCTIONS_DIRS=. python -m client call --local thumbnail"
    assert outputs[hello] == b"HELLO, DCF\n"
    runs = [text for shape, text in outputs.items() if shape == "python -m pytest -q thumbnail"]
    assert runs and b"4 passed" in runs[-1], runs  # the thumbnailer's own four tests
    # 2-4. The thumbnailer in-process, at its declared default size.
    local = (folder / "thumb.png").read_bytes()
    assert size_of(local) == thumbnail_size(photo, 128)
    # 5. Served, over gRPC and HTTP alike.
    small = (folder / "small.png").read_bytes()
    assert size_of(small) == thumbnail_size(photo, 64)
    assert (folder / "small-http.png").read_bytes() == small
    listed = [line.split()[0] for line in outputs["python -m client list"].decode().splitlines()]
    assert listed == ["hello-dcf", "thumbnail"]
    # 6. Changed while serving: the new default.
    assert size_of((folder / "thumb96.png").read_bytes()) == thumbnail_size(photo, 96)
    # 7. Shipped.
    shipped = sorted(
        p.relative_to(folder / "deploy").as_posix() for p in (folder / "deploy").rglob("*")
    )
    assert {
        "Dockerfile",
        "compose.yaml",
        "functions.yaml",
        "registry-entry.yaml",
        "requirements.txt",
        "k8s/10-registry.yaml",
        "k8s/50-thumbnail.yaml",
        "thumbnail/handler.py",
        "thumbnail/function.yaml",
    } <= set(shipped)
    assert "thumbnail/test_thumbnail.py" not in shipped
    assert all(re.match(r"^(docker|kubectl) ", shape) for shape in walk.skipped), walk.skipped
    assert len(walk.skipped) == 3


@pytest.mark.parametrize("step", STEPS, ids=[step.id for step in STEPS])
def test_every_step_is_run_or_skipped_for_a_reason(step: Example):
    if step.language == "shell" and not (SERVE.match(step.shape) or RUNS_ANYWAY.match(step.shape)):
        reason = skip_reason(step)
        assert reason is None or re.match(r"^(docker|kubectl) ", step.shape), (step.id, reason)
