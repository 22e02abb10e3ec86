"""A function folder read, checked and run in this process: what every serving path builds on.

No server here: the folder's function.yaml into a FunctionConfig (or one line naming
the file and what is wrong), its handler imported by file path, its params declared
once and checked before the handler runs.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from handlers.base import Params
from handlers.errors import InvalidInput, TooLarge
from server.config import load_settings, params_yaml, parse_params
from server.repository.folder import FolderError, fingerprint, read_folder, read_folders
from server.repository.load import FolderRefused, load_folder_function, module_name
from server.repository.local import local_settings, run_folder
from server.repository.scaffold import ScaffoldError, scaffold
from server.worker.local import run_local
from server.worker.servicer import load_function


def write(folder: Path, function_yaml: str, handler: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "function.yaml").write_text(textwrap.dedent(function_yaml))
    if handler is not None:
        (folder / "handler.py").write_text(textwrap.dedent(handler))
    return folder


ECHO = """
from handlers.base import Function, Reply

def create(options, params):
    suffix = options.get("suffix", "").encode()
    return Function(handle=lambda request: Reply("text/plain", [request.read() + suffix]))
"""


def test_the_scaffold_reads_and_answers_any_bytes(tmp_path: Path):
    folder = scaffold("shout", tmp_path)
    config = read_folder(folder).config
    assert (config.name, config.input_type, config.output_type) == (
        "shout",
        "text/plain",
        "text/plain",
    )
    assert config.source == str(folder.absolute())
    assert config.handler == str(folder.absolute() / "handler.py")
    assert (config.max_input_bytes, config.max_concurrency, config.queue_size) == (16 << 20, 4, 16)
    assert list(config.declared_params()) == ["case"]
    data = bytes(range(256))
    assert run_folder(folder, data).body == data.upper()
    assert run_folder(folder, [b"Ab", b"\xc3\xa9Z"], case="lower").body == b"ab\xc3\xa9z"


def test_a_scaffold_needs_a_host_name_and_an_empty_place(tmp_path: Path):
    with pytest.raises(ScaffoldError, match="cannot name a function"):
        scaffold("Not_A_Name", tmp_path)
    scaffold("taken", tmp_path)
    with pytest.raises(ScaffoldError, match="not empty"):
        scaffold("taken", tmp_path)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("name: [unclosed\n", r"function\.yaml: not valid YAML: line 2, column 1"),
        ("- a list\n", "expected a mapping"),
        ("nme: typo\n", r"unknown keys \['nme'\]"),
        ("name: other\n", "is not the folder's name 'f'"),
        ("handler: {file: missing.py}\n", "handler.file: missing.py is missing"),
        ("handler: {file: ../outside.py}\n", "outside the folder"),
        ("handler: {module: 'not a module'}\n", "give a file or a module"),
        ("limits: {max_concurrency: -1}\n", "must not be negative"),
        ("limits: {max_input_bytes: lots}\n", "expected a size"),
        ("limits: {max_speed: 1}\n", "limits: expected a mapping of"),
        ("params: [{name: size, type: whole}]\n", "size.type: expected one of"),
        ("params: [{name: size, type: integer, default: x}]\n", "default: expected a integer"),
        ("params: [{name: s, type: integer, range: [1, 9], default: 20}]\n", "s.default: param"),
        ("params: [{name: c, type: string, choices: [a], default: b}]\n", "c.default: param"),
        ("params: [{name: n, type: number}, {name: n, type: number}]\n", "declared twice"),
        ("requirements: [no-such-package-for-dcf>=1]\n", "is not installed"),
        ("requirements: ['pyyaml>=999']\n", "is not met: pyyaml"),
        ("requirements: ['not a requirement!']\n", "is not valid"),
        ("build_packages: ['libpng-dev; rm -rf /']\n", "is not a package name"),
    ],
)
def test_a_broken_folder_is_refused_in_one_line_naming_the_file(
    tmp_path: Path, text: str, reason: str
):
    folder = write(tmp_path / "f", text, ECHO)
    (tmp_path / "outside.py").write_text(ECHO)
    with pytest.raises(FolderError, match=reason) as caught:
        read_folder(folder)
    assert caught.value.file == folder.absolute() / "function.yaml"
    assert str(caught.value).startswith(f"{folder.absolute() / 'function.yaml'}: ")
    assert "\n" not in str(caught.value)


def test_requirements_that_are_met_and_markers_that_do_not_apply_pass(tmp_path: Path):
    folder = write(
        tmp_path / "f",
        "requirements: ['pyyaml>=6', 'no-such-package-for-dcf; python_version < \"3\"']\n",
        ECHO,
    )
    assert read_folder(folder).requirements == (
        "pyyaml>=6",
        'no-such-package-for-dcf; python_version < "3"',
    )


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        ("def create(options, params:\n", r"handler\.py: line 1: SyntaxError"),
        ("import no_such_module_for_dcf\n", "line 1: ModuleNotFoundError: No module named"),
        ("x = 1\n", r"no function create\(options, params\) in it"),
        ("def create(options, params):\n    return 1 / 0\n", "line 2: ZeroDivisionError"),
        ("def create(options, params):\n    return 'nope'\n", "returned str, not a Function"),
    ],
)
def test_a_handler_that_does_not_load_is_refused_naming_the_file_and_line(
    tmp_path: Path, handler: str, reason: str
):
    config = read_folder(write(tmp_path / "f", "{}\n", handler)).config
    with pytest.raises(FolderRefused, match=reason) as caught:
        load_function(config)  # as a worker does
    assert str(caught.value).startswith(f"{config.handler}: ")
    assert module_name(config) not in sys.modules


def test_params_are_declared_once_in_function_yaml(tmp_path: Path):
    folder = write(
        tmp_path / "f",
        """
        params:
          - {name: size, type: integer, range: [16, 1024], default: 128, help: longest side}
        """,
        """
        from handlers.base import Function, Reply

        def create(options, params):
            size = params["size"]
            def handle(request):
                return Reply("text/plain", [str(size.read(request.params)).encode()])
            return Function(handle=handle)
        """,
    )
    config = read_folder(folder).config
    function = load_folder_function(config)
    assert function.params == config.declared_params()
    assert function.params["size"].describe() == "longest side, 16..1024 (default 128)"
    assert run_folder(folder, b"").body == b"128"
    assert run_folder(folder, b"", size=64).body == b"64"
    # Checked before the handler runs, as a worker checks it before reading the input.
    with pytest.raises(InvalidInput, match="param size: expected a whole number in"):
        function.check(Params({"size": "2048"}))
    with pytest.raises(InvalidInput, match="unknown param colour"):
        run_folder(folder, b"", colour="red")


def test_a_handler_that_declares_other_params_is_refused(tmp_path: Path):
    folder = write(
        tmp_path / "f",
        "params: [{name: a, type: boolean}]\n",
        """
        from handlers.base import Function, Param, Reply, declare

        def create(options, params):
            mine = declare(Param("b", "boolean", "another"))
            return Function(handle=lambda r: Reply("text/plain", [b""]), params=mine)
        """,
    )
    with pytest.raises(FolderRefused, match=r"declare them once, in .*function\.yaml"):
        load_folder_function(read_folder(folder).config)


def test_the_input_limit_and_options_of_the_folder(tmp_path: Path):
    folder = write(
        tmp_path / "f",
        "limits: {max_input_bytes: 4}\noptions: {suffix: '!', data: ./data.txt}\n",
        ECHO,
    )
    config = read_folder(folder).config
    assert config.options["data"] == str(folder.resolve() / "data.txt")  # "./": the folder
    assert run_folder(folder, b"four").body == b"four!"
    with pytest.raises(TooLarge):
        run_folder(folder, b"fives")


def test_a_factory_of_options_alone_and_a_module_handler(tmp_path: Path):
    folder = write(
        tmp_path / "f",
        "handler: {file: handler.py}\n",
        """
        from handlers.base import Function, Reply

        def create(options):
            return Function(handle=lambda request: Reply("text/plain", [b"one argument"]))
        """,
    )
    assert run_folder(folder, b"").body == b"one argument"
    module = write(tmp_path / "g", "handler: {module: handlers.hello}\n")
    assert run_folder(module, [b"a", b"b"]).body == b"ab"


def test_each_version_is_imported_under_a_name_of_its_own(tmp_path: Path):
    folder = write(tmp_path / "f", "{}\n", ECHO)
    first = read_folder(folder).config
    (folder / "handler.py").write_text(ECHO.replace('"text/plain"', '"text/x-two"'))
    second = read_folder(folder).config
    assert first.version != second.version
    assert module_name(first) != module_name(second)
    assert run_folder(folder, b"x").content_type == "text/x-two"
    # A test file or a cache is not part of the version.
    before = fingerprint(folder)
    (folder / "test_f.py").write_text("def test(): pass\n")
    (folder / "__pycache__").mkdir(exist_ok=True)
    (folder / "__pycache__" / "handler.pyc").write_bytes(b"\0")
    assert fingerprint(folder) == before
    assert read_folder(folder).config.version == second.version


def test_folders_and_the_registry_mix_and_a_taken_name_is_refused(tmp_path: Path):
    write(tmp_path / "fns" / "mine", "{}\n", ECHO)
    write(tmp_path / "fns" / "hello-dcf", "{}\n", ECHO)
    write(tmp_path / "fns" / "broken", "name: [\n", ECHO)
    (tmp_path / "fns" / "not-a-function").mkdir()
    registry = tmp_path / "functions.yaml"
    registry.write_text(
        "server: {functions_dirs: [fns]}\n"  # relative to the registry file
        "functions:\n  hello-dcf: {handler: handlers.hello, workers: [127.0.0.1:1]}\n"
    )
    settings = load_settings(registry, environ={})
    assert settings.functions_dirs == (str(tmp_path / "fns"),)
    assert [fn.name for fn in settings.functions] == ["hello-dcf", "mine"]
    found, refused = read_folders(settings.functions_dirs, settings.functions[:1])
    assert [f.config.name for f in found] == ["mine"]
    broken = tmp_path / "fns" / "broken" / "function.yaml"
    taken = tmp_path / "fns" / "hello-dcf" / "function.yaml"
    assert sorted(str(e) for e in refused) == [
        (
            f"{broken}: not valid YAML: line 2, column 1: expected the node content, but found "
            "'<stream end>'"
        ),
        f"{taken}: its name is taken by the registry's hello-dcf",
    ]
    # The environment names folders as PATH does; a flag would replace it.
    env = {"DCF_FUNCTIONS_DIRS": f"{tmp_path / 'fns'}{':'}{tmp_path / 'none'}"}
    assert [fn.name for fn in load_settings(registry, environ=env).functions][-1] == "mine"
    # A worker reads its own folder alone.
    only = load_settings(registry, environ={}, only="mine")
    assert [fn.name for fn in only.functions] == ["hello-dcf", "mine"]
    assert load_settings(registry, environ={}, only="other").functions[1:] == ()


def test_local_runs_find_a_folder_by_its_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write(tmp_path / "mine", "{}\n", ECHO)
    monkeypatch.chdir(tmp_path)
    settings, name = local_settings("mine", load_settings(environ={}))
    assert name == "mine"
    assert run_local(settings, name, {}, [b"as ", b"served"]).parts == [b"as served"]
    settings, name = local_settings("hello-dcf", load_settings(environ={}))
    assert (name, settings.function(name).handler) == ("hello-dcf", "handlers.hello")


def test_params_round_trip_through_their_yaml_form():
    declared = parse_params(
        [
            {"name": "t", "type": "number", "range": [0, 1], "default": 0.3, "help": "h"},
            {"name": "k", "type": "string", "choices": ["a", "b"], "default": "a"},
            {"name": "n", "type": "integer", "range": [1, None]},
            {"name": "f", "type": "boolean", "default": True},
        ],
        "params",
    )
    assert parse_params(params_yaml(declared), "again") == declared
    assert declared["t"].default == 0.3 and declared["n"].low == 1 and declared["n"].high is None
