"""Broken function folders are refused, one log line each naming the file and the reason,
while the others serve: at start-up, and when a served folder breaks while serving."""

from __future__ import annotations

import re
import time
from pathlib import Path

import grpc
import pytest

from server.repository.scaffold import scaffold

PATIENCE = 120.0


def lines_naming(log: str, file: Path) -> list[str]:
    return [line for line in log.splitlines() if str(file) in line]


def wait_for_line(served, pattern: str) -> str:
    deadline = time.monotonic() + PATIENCE
    while not (found := re.findall(f"^.*{pattern}.*$", served.log(), re.MULTILINE)):
        assert time.monotonic() < deadline, f"no log line matching {pattern!r}:\n{served.log()}"
        time.sleep(0.05)
    return found[-1]


def test_broken_folders_are_refused_and_the_others_serve(serve, tmp_path: Path):
    fns = tmp_path / "fns"
    scaffold("good", fns)
    bad_yaml = scaffold("bad-yaml", fns) / "function.yaml"
    bad_yaml.write_text("name: bad-yaml\nparams: [unclosed\n")
    bad_import = scaffold("bad-import", fns) / "handler.py"
    bad_import.write_text("import no_such_module_for_dcf\n")
    bad_requirement = scaffold("bad-requirement", fns) / "function.yaml"
    bad_requirement.write_text(
        bad_requirement.read_text().replace(
            "requirements: []", "requirements: [no-such-package-for-dcf>=1]"
        )
    )

    served = serve(fns)  # comes up, SERVING: a worker that cannot load is not waited for

    assert served.names() == ["hello-dcf", "good"]
    assert served.call("good", b"fine")[1] == b"FINE"
    assert served.call("hello-dcf", b"fine")[1] == b"fine"
    wait_for_line(served, "worker bad-import cannot start")
    log = served.log()
    for file, reason in [
        (bad_yaml, "not valid YAML: line 3, column 1: expected ',' or ']', but got '<stream end>'"),
        (bad_import, "line 1: ModuleNotFoundError: No module named 'no_such_module_for_dcf'"),
        (bad_requirement, "requirement 'no-such-package-for-dcf>=1' is not installed"),
    ]:
        (line,) = lines_naming(log, file)
        assert f"{file}: {reason}" in line, line
        assert " ERROR " in line, line
    assert "Traceback" not in log
    for name in ("bad-yaml", "bad-import", "bad-requirement"):
        with pytest.raises(grpc.RpcError) as caught:
            served.call(name, b"x")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_served_folder_that_breaks_keeps_its_version_until_it_is_fixed(serve, tmp_path: Path):
    folder = scaffold("steady", tmp_path / "fns")
    served = serve(tmp_path / "fns")
    assert served.call("steady", b"v1")[1] == b"V1"
    handler = folder / "handler.py"
    working = handler.read_text()

    handler.write_text(working.replace("def create(", "def create(:"))  # a syntax error
    line = wait_for_line(served, "worker steady cannot start")
    assert line.endswith(f"{handler}: line 18: SyntaxError: invalid syntax"), line
    assert served.call("steady", b"still v1")[1] == b"STILL V1"

    spec = folder / "function.yaml"
    spec.write_text("name: [steady\n")
    line = wait_for_line(served, "function folder refused")
    assert line.endswith("(the version before keeps serving)") and str(spec) in line, line
    assert served.call("steady", b"still v1")[1] == b"STILL V1"

    spec.write_text(scaffold_text(tmp_path, "steady"))
    handler.write_text(working.replace('"text/plain", changed()', '"text/x-fixed", changed()'))
    deadline = time.monotonic() + PATIENCE
    while (answer := served.call("steady", b"v2"))[0] != "text/x-fixed":
        assert time.monotonic() < deadline, "the fixed version was never served"
        assert answer[1] == b"V2"
        time.sleep(0.05)
    assert answer[1] == b"V2"
    assert served.service.process.poll() is None


def scaffold_text(tmp_path: Path, name: str) -> str:
    """A fresh scaffold's function.yaml for ``name``."""
    return (scaffold(name, tmp_path / "fresh") / "function.yaml").read_text()
