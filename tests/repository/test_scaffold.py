"""``python -m server init``: a function folder that works the moment it exists.

Its own test passes; ``python -m client call --local`` runs it; served with
``python -m server --functions DIR`` it answers over gRPC, over HTTP and on the page's
list, beside the registry's functions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.support import run_client


def run_server_command(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_init_makes_a_folder_that_is_tested_run_and_served(serve, tmp_path: Path):
    done = run_server_command("init", "shout", "--dir", "fns", cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith("created fns/shout/: function.yaml, handler.py, test_shout.py")
    folder = tmp_path / "fns" / "shout"
    assert sorted(p.name for p in folder.iterdir()) == [
        "function.yaml",
        "handler.py",
        "test_shout.py",
    ]

    # Its own test: the handler run in-process, as its worker runs it.
    tested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "fns/shout"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tested.returncode == 0 and "3 passed" in tested.stdout, tested.stdout

    # python -m client call --local: the same handler in the client's process.
    local = run_client(
        "call",
        "--local",
        "shout",
        "-p",
        "case=lower",
        stdin=b"Any BYTES \xff",
        env={**os.environ, "DCF_FUNCTIONS_DIRS": str(tmp_path / "fns")},
    )
    assert local.returncode == 0, local.stderr
    assert local.stdout == b"any bytes \xff"

    served = serve(tmp_path / "fns", http=True)
    assert served.call("shout", b"Served \xff") == ("text/plain", b"SERVED \xff", [])
    url = served.service.http_url
    request = urllib.request.Request(
        f"{url}/v1/functions/shout?case=lower", data=b"Over HTTP", method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        assert reply.headers["content-type"].startswith("text/plain")
        assert reply.read() == b"over http"
    with urllib.request.urlopen(f"{url}/v1/functions", timeout=60) as reply:
        listed = {fn["name"]: fn for fn in json.loads(reply.read())}
    assert set(listed) == {"hello-dcf", "shout"}
    (case,) = listed["shout"]["param_specs"]
    assert (case["name"], case["default"], case["choices"]) == ("case", "upper", ["upper", "lower"])
    with urllib.request.urlopen(f"{url}/?function=shout", timeout=60) as reply:
        assert reply.status == 200 and b"<html" in reply.read().lower()


def test_init_refuses_a_bad_name_or_a_folder_in_use(tmp_path: Path):
    done = run_server_command("init", "Bad_Name", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "error: 'Bad_Name' cannot name a function: use lower-case letters, digits and '-' "
        "(it is also a host name)\n"
    )
    assert run_server_command("init", "fine", cwd=tmp_path).returncode == 0
    again = run_server_command("init", "fine", cwd=tmp_path)
    assert again.returncode == 2 and again.stderr == "error: fine exists and is not empty\n"
