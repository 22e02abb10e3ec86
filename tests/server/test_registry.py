"""The packaged registry agrees with the handlers it names."""

from __future__ import annotations

import pytest

from server.config import ConfigError, load_settings
from server.worker.servicer import load_function

SETTINGS = load_settings(environ={})


@pytest.mark.parametrize("fn", SETTINGS.functions, ids=lambda fn: fn.name)
def test_listed_params_are_the_params_the_worker_checks(fn):
    # ListFunctions reads the handler module's PARAMS; the worker checks the params of
    # the function create() built. They are one declaration.
    function = load_function(fn)
    assert function.params == fn.declared_params()
    function.close()


def test_a_registry_that_lists_params_is_refused_with_a_pointer_to_the_handler(tmp_path):
    config = tmp_path / "functions.yaml"
    config.write_text("functions:\n  ssd:\n    handler: handlers.ssd\n    params: {threshold: x}\n")
    with pytest.raises(
        ConfigError, match=r"declared once, by the handler \(PARAMS in handlers.ssd"
    ):
        load_settings(config, environ={})


def test_every_function_has_a_description_and_a_worker():
    for fn in SETTINGS.functions:
        assert fn.description and fn.workers, fn.name
