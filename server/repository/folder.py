"""A function folder read and checked: its function.yaml into a FunctionConfig.

Everything that can be known without running the handler is checked here, in the
process that finds the folder, so that a broken folder is refused with one line
naming the file and what is wrong (``FolderError``) before any worker starts for
it: YAML that does not parse, a key that is not known, a param or limit of the wrong
kind, a handler file that is missing or outside the folder, and a requirement that
is not installed. What only running the handler shows (a syntax or import error,
a factory that raises) is the worker's to report, in the same one-line form
(server/repository/load.py).

function.yaml, every key but ``handler`` optional::

    name: thumbnail                 # the folder's own name, if given
    description: A smaller copy of an image, as PNG.
    input_type: image/*
    output_type: image/png
    aliases: [thumb]
    params:
      - {name: size, type: integer, range: [16, 1024], default: 128, help: longest side}
    limits: {max_input_bytes: 16MiB, max_concurrency: 2, max_queue: 8}
    options: {model: ./model.tflite}  # handed to the factory; "./" is the folder
    handler: {file: handler.py, factory: create}   # or {module: handlers.x}
    requirements: [pillow>=10]      # checked when read; installed by the shipped image
    build_packages: [libjpeg-dev]   # Debian packages the shipped image installs first
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement

from server.config import ConfigError, FunctionConfig

FUNCTION_FILE = "function.yaml"
# A DNS label: the name is also a compose service, a Kubernetes Deployment and a host name.
NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
DEBIAN_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
LIMITS = ("max_input_bytes", "max_concurrency", "max_queue", "max_uploads", "max_call_seconds")
KEYS = {
    "name",
    "description",
    "input_type",
    "output_type",
    "aliases",
    "params",
    "limits",
    "options",
    "handler",
    "requirements",
    "build_packages",
}


class FolderError(ValueError):
    """A folder that cannot be served: the file at fault and why, said in one line."""

    def __init__(self, file: Path, reason: str) -> None:
        self.file = file
        self.reason = " ".join(reason.split())  # one line, whatever the YAML parser said
        super().__init__(f"{file}: {self.reason}")


@dataclass(frozen=True)
class FunctionFolder:
    """A folder read and checked: its function's config, and what shipping it needs."""

    path: Path
    config: FunctionConfig
    requirements: tuple[str, ...] = ()
    build_packages: tuple[str, ...] = ()


def is_function_folder(path: Path) -> bool:
    return (path / FUNCTION_FILE).is_file()


def folders_in(dirs: Iterable[str | Path]) -> list[Path]:
    """The function folders of the functions directories, in order; a directory that is
    itself a function folder counts as one. A directory that does not exist (yet) has
    none."""
    found: list[Path] = []
    for directory in map(Path, dirs):
        if is_function_folder(directory):
            found.append(directory)
            continue
        try:
            entries = sorted(directory.iterdir())
        except OSError:
            continue
        found += [p for p in entries if not _ignored(p.name) and is_function_folder(p)]
    return found


def _ignored(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__"


def _is_test(name: str) -> bool:
    return name == "conftest.py" or (
        name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))
    )


def files_of(folder: Path) -> Iterator[Path]:
    """The files that make a version of the function: all of the folder's but caches,
    hidden ones and its tests (editing a test changes nothing that is served)."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        if _ignored(entry.name):
            continue
        if entry.is_dir():
            yield from files_of(entry)
        elif entry.is_file() and not _is_test(entry.name):
            yield entry


def fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """What polling compares: each file's path, modification time and size; cheap."""
    marks = []
    for file in files_of(folder):
        try:
            stat = file.stat()
        except OSError:
            continue  # removed while we looked: the next look sees it gone
        marks.append((file.relative_to(folder).as_posix(), stat.st_mtime_ns, stat.st_size))
    return tuple(marks)


def digest(folder: Path) -> str:
    """A digest of the folder's files' names and contents: its version."""
    hashed = hashlib.sha256()
    for file in files_of(folder):
        hashed.update(file.relative_to(folder).as_posix().encode() + b"\0")
        try:
            hashed.update(file.read_bytes())
        except OSError:
            continue
        hashed.update(b"\0")
    return hashed.hexdigest()[:16]


def read_folder(folder: Path) -> FunctionFolder:
    """The folder's function, checked; FolderError naming the file and the reason if not."""
    folder = Path(folder).absolute()
    spec_file = folder / FUNCTION_FILE
    try:
        document = yaml.safe_load(spec_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FolderError(spec_file, f"cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise FolderError(spec_file, "it is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise FolderError(spec_file, f"not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(document, Mapping):
        raise FolderError(spec_file, "expected a mapping (name, description, handler...)")
    unknown = set(document) - KEYS
    if unknown:
        raise FolderError(spec_file, f"unknown keys {sorted(unknown)} (known: {sorted(KEYS)})")
    name = document.get("name", folder.name)
    if not isinstance(name, str) or not NAME.match(name):
        raise FolderError(
            spec_file,
            f"name {name!r}: use lower-case letters, digits and '-', as a host name (up to 63)",
        )
    if name != folder.name:
        raise FolderError(spec_file, f"name {name!r} is not the folder's name {folder.name!r}")
    handler, factory = _handler(document.get("handler"), folder, spec_file)
    limits = document.get("limits") or {}
    if not isinstance(limits, Mapping) or set(limits) - set(LIMITS):
        raise FolderError(spec_file, f"limits: expected a mapping of {', '.join(LIMITS)}")
    options = document.get("options") or {}
    if not isinstance(options, Mapping):
        raise FolderError(spec_file, "options: expected a mapping")
    entry: dict[str, Any] = {
        "folder": str(folder),
        "handler": handler,
        "factory": factory,
        "params": document.get("params"),
        "options": {key: _in_folder(value, folder) for key, value in options.items()},
        **limits,
    }
    for key in ("description", "input_type", "output_type", "aliases"):
        if key in document:
            entry[key] = document[key]
    for key in ("description", "input_type", "output_type"):
        if not isinstance(entry.get(key, ""), str):
            raise FolderError(spec_file, f"{key}: expected text")
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise FolderError(spec_file, "aliases: expected a list of names")
    try:
        config = FunctionConfig.from_yaml(name, entry)
    except ConfigError as exc:
        raise FolderError(spec_file, str(exc)) from None
    requirements = _strings(document.get("requirements"), "requirements", spec_file)
    check_requirements(requirements, spec_file)
    packages = _strings(document.get("build_packages"), "build_packages", spec_file)
    for package in packages:
        if not DEBIAN_PACKAGE.match(package):
            raise FolderError(spec_file, f"build_packages: {package!r} is not a package name")
    return FunctionFolder(folder, replace(config, version=digest(folder)), requirements, packages)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return str(problem)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _handler(value: Any, folder: Path, spec_file: Path) -> tuple[str, str]:
    """(handler, factory): the handler file's absolute path, or a module's name."""
    value = {"file": "handler.py"} if value is None else value
    if not isinstance(value, Mapping) or set(value) - {"file", "module", "factory"}:
        raise FolderError(spec_file, "handler: expected {file: handler.py, factory: create}")
    factory = value.get("factory", "create")
    if not isinstance(factory, str) or not IDENTIFIER.match(factory):
        raise FolderError(spec_file, f"handler.factory: {factory!r} is not a Python name")
    if "module" in value:
        module = value["module"]
        if "file" in value or not isinstance(module, str) or not MODULE.match(module):
            raise FolderError(spec_file, "handler: give a file or a module (a dotted name)")
        return module, factory
    file = value.get("file")
    if not isinstance(file, str) or not file.endswith(".py"):
        raise FolderError(spec_file, f"handler.file: expected a .py file, got {file!r}")
    path = (folder / file).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise FolderError(spec_file, f"handler.file: {file} is outside the folder")
    if not path.is_file():
        raise FolderError(spec_file, f"handler.file: {file} is missing")
    return str(folder / file), factory


def _in_folder(value: Any, folder: Path) -> Any:
    """An option naming a file of the folder ("./labels.txt") as its absolute path."""
    if isinstance(value, str) and value.startswith(("./", "../")):
        return str((folder / value).resolve())
    return value


def _strings(value: Any, key: str, spec_file: Path) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FolderError(spec_file, f"{key}: expected a list of strings")
    return tuple(value)


def check_requirements(requirements: Iterable[str], spec_file: Path) -> None:
    """FolderError for the first requirement this Python does not satisfy."""
    for text in requirements:
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            raise FolderError(spec_file, f"requirements: {text!r} is not valid: {exc}") from None
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            raise FolderError(
                spec_file, f"requirement {text!r} is not installed (pip install '{text}')"
            ) from None
        if requirement.specifier and not requirement.specifier.contains(
            installed, prereleases=True
        ):
            raise FolderError(
                spec_file, f"requirement {text!r} is not met: {requirement.name} {installed}"
            )


def read_folders(
    dirs: Iterable[str | Path], taken: Iterable[FunctionConfig] = (), only: str = ""
) -> tuple[list[FunctionFolder], list[FolderError]]:
    """The functions directories' folders that can be served, and the refusals.

    A folder whose name (or an alias) is already the registry's, or an earlier
    folder's, is refused; one that a registry entry describes (its ``folder``) is that
    entry's, and left out quietly. ``only``: the folder of that name alone.
    """
    described = {fn.source for fn in taken if fn.source}
    names = {n: f"the registry's {fn.name}" for fn in taken for n in (fn.name, *fn.aliases)}
    found: list[FunctionFolder] = []
    refused: list[FolderError] = []
    for path in folders_in(dirs):
        if (only and path.name != only) or str(path.absolute()) in described:
            continue
        try:
            folder = read_folder(path)
        except FolderError as exc:
            refused.append(exc)
            continue
        config = folder.config
        clash = next((names[n] for n in (config.name, *config.aliases) if n in names), None)
        if clash is not None:
            refused.append(FolderError(path / FUNCTION_FILE, f"its name is taken by {clash}"))
            continue
        names.update({n: str(path) for n in (config.name, *config.aliases)})
        found.append(folder)
    return found, refused
