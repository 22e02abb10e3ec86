"""A folder function's handler, imported by its file path and made into its Function.

The handler file need not be on ``sys.path``: it is imported from where it is, under a
module name of its own per folder and version (``dcf_function_NAME_VERSION``), so two
versions of one function, or two folders with a ``handler.py`` each, never share a
module. The factory is called as ``create(options, params)``, ``params`` being the
handlers.base.Params its function.yaml declares (a factory taking only ``options``
is called with that alone). The Function it makes takes exactly those params, checked
before any input is read.

Anything that goes wrong while importing or creating is ``FolderRefused``: one line
naming the file and the line at fault, and what went wrong; the traceback goes to the
debug log. A worker that cannot load its function logs that line and exits.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from handlers.base import Function, Param, Params
from handlers.errors import FunctionError, Unavailable
from server.config import FunctionConfig

log = logging.getLogger(__name__)

PREFIX = "dcf_function_"  # of the module names handler files are imported under


class FolderRefused(Unavailable):
    """A function folder whose handler cannot be loaded; the message names file and line."""


def module_name(config: FunctionConfig) -> str:
    """A module name of its own for this folder's handler, at this version."""
    safe = re.sub(r"\W", "_", config.name)
    return f"{PREFIX}{safe}_{config.version or 'registry'}"


def load_folder_function(config: FunctionConfig) -> Function:
    """Import the folder's handler and make its Function, once; FolderRefused if it fails
    (and then the module is forgotten: a refused version leaves nothing behind)."""
    try:
        return _load(config)
    except BaseException:
        if config.handler_file:
            sys.modules.pop(module_name(config), None)
        raise


def _load(config: FunctionConfig) -> Function:
    # A module's failure is its options' (from function.yaml), or the module's own.
    where = config.handler_file or str(Path(config.source, "function.yaml"))
    try:
        module = _import(config)
        factory = getattr(module, config.factory, None)
        if not callable(factory):
            raise FolderRefused(f"{where}: no function {config.factory}(options, params) in it")
        declared = config.declared_params()
        function = _create(factory, config.options, declared)
    except FolderRefused:
        raise
    except Exception as exc:  # any failure of the author's code is a refusal
        log.debug("loading %s failed", where, exc_info=True)
        raise FolderRefused(f"{where}: {describe(exc, config.handler_file)}") from exc
    if not isinstance(function, Function):
        raise FolderRefused(
            f"{where}: {config.factory}() returned {type(function).__name__}, not a Function"
        )
    if function.params and dict(function.params) != dict(declared):
        raise FolderRefused(
            f"{where}: its Function declares params of its own; declare them once, in "
            f"{Path(config.source, 'function.yaml')}"
        )
    return replace(function, params=declared, check=_checking(declared, function.check))


def _import(config: FunctionConfig) -> ModuleType:
    if not config.handler_file:
        return importlib.import_module(config.handler)
    name = module_name(config)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, config.handler_file)
    if spec is None or spec.loader is None:
        raise FolderRefused(f"{config.handler_file}: cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as import does: dataclasses and pickling look it up.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _create(
    factory: Callable[..., Any], options: Mapping[str, Any], params: Mapping[str, Param]
) -> Any:
    """``factory(options, params)``, or ``factory(options)`` for one that takes only that."""
    try:
        takes = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return factory(options, params)
    positional = [p for p in takes if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) == 1 and not any(p.kind == p.VAR_POSITIONAL for p in takes):
        return factory(options)
    return factory(options, params)


def _checking(
    declared: Mapping[str, Param], check: Callable[[Params], object]
) -> Callable[[Params], object]:
    """The Function's own check, after every declared param's value is read (typed,
    ranged), so a bad value is refused before the input is read."""

    def checked(params: Params) -> object:
        for param in declared.values():
            param.read(params)
        return check(params)

    return checked


def describe(exc: BaseException, handler_file: str = "") -> str:
    """An exception in one line: where in the author's file, and what."""
    if isinstance(exc, SyntaxError):
        return f"line {exc.lineno}: SyntaxError: {exc.msg}"
    text = exc.message if isinstance(exc, FunctionError) else f"{type(exc).__name__}: {exc}"
    if handler_file:
        lines = [
            frame.lineno
            for frame in traceback.extract_tb(exc.__traceback__)
            if frame.filename == handler_file
        ]
        if lines:
            text = f"line {lines[-1]}: {text}"
    return " ".join(text.split())
