"""``python -m server init NAME [--dir DIR]``: a function folder that works from the start.

DIR/NAME gets a function.yaml, a handler that answers any bytes (its input with the
letters' case changed, streamed back as it arrives, with one declared param) and a
test that runs the handler in-process. It can be called the moment it exists:
``python -m client call --local``, or served with ``python -m server --functions DIR``.
"""

from __future__ import annotations

from pathlib import Path

from server.repository.folder import FUNCTION_FILE, NAME

FUNCTION_YAML = """\
# The function {name}: what it is, what it takes, and where its code is.
# dcf reads this file when it serves the folder (python -m server --functions DIR),
# and again whenever it changes.
name: {name}
description: Changes the case of the letters of its input, streamed back as it arrives.
input_type: text/plain
output_type: text/plain
params:                           # declared once, here: checked before the handler runs
  - name: case
    type: string
    choices: [upper, lower]
    default: upper
    help: the case the letters are changed to
limits:
  max_input_bytes: 16MiB          # larger inputs are refused (0: no limit)
  max_concurrency: 4              # calls at once; more wait in a queue
  max_queue: 16                   # calls that may wait; more are refused (OVERLOADED)
options: {{}}                       # handed to create(options, params)
handler:
  file: handler.py
  factory: create
requirements: []                  # Python packages it needs, e.g. [pillow>=10]
build_packages: []                # Debian packages its image installs first
"""

HANDLER = '''\
"""{name}: an example dcf function, a starting point for your own.

It answers any bytes: its input with the letters in upper (or lower) case, streamed
back chunk by chunk as it arrives. ``create`` runs once, when a worker starts: load
models and other slow things there. ``handle`` runs for every call, on a thread of
its own, so it may block. Its params are declared in function.yaml and come here
typed: ``case.read(request.params)`` is a checked value, or the default.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from handlers.base import Function, Param, Reply, Request


def create(options: Mapping[str, Any], params: Mapping[str, Param]) -> Function:
    case = params["case"]

    def handle(request: Request) -> Reply:
        upper = case.read(request.params) == "upper"

        def changed() -> Iterator[bytes]:
            for chunk in request.chunks:
                yield chunk.upper() if upper else chunk.lower()

        return Reply("text/plain", changed())

    return Function(handle=handle)
'''

TEST = '''\
"""{name}'s handler, run in this process as its worker runs it: python -m pytest {name}"""

from pathlib import Path

import pytest

from handlers.errors import InvalidInput
from server.repository.local import run_folder

FOLDER = Path(__file__).resolve().parent


def test_it_changes_the_case_of_any_bytes():
    answer = run_folder(FOLDER, b"Hello, \\xffdcf!")
    assert answer.content_type == "text/plain"
    assert answer.body == b"HELLO, \\xffDCF!"


def test_the_case_param():
    assert run_folder(FOLDER, [b"Hello, ", b"DCF"], case="lower").body == b"hello, dcf"


def test_a_bad_param_is_refused():
    with pytest.raises(InvalidInput, match="case"):
        run_folder(FOLDER, b"x", case="title")
'''


class ScaffoldError(ValueError):
    """The folder cannot be made: a bad name, or something already there."""


def tests_file_of(name: str) -> str:
    return f"test_{name.replace('-', '_')}.py"


def scaffold(name: str, parent: Path) -> Path:
    """Write the example function NAME into ``parent``/NAME; returns the folder."""
    if not NAME.match(name):
        raise ScaffoldError(
            f"{name!r} cannot name a function: use lower-case letters, digits and '-' "
            "(it is also a host name)"
        )
    folder = Path(parent) / name
    if folder.exists() and any(folder.iterdir()):
        raise ScaffoldError(f"{folder} exists and is not empty")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FUNCTION_FILE).write_text(FUNCTION_YAML.format(name=name))
    (folder / "handler.py").write_text(HANDLER.format(name=name))
    (folder / tests_file_of(name)).write_text(TEST.format(name=name))
    return folder
