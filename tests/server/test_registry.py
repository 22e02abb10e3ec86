"""The packaged registry agrees with the handlers it names."""

from __future__ import annotations

import pytest

from server.config import load_settings
from server.worker.servicer import load_function

SETTINGS = load_settings(environ={})


@pytest.mark.parametrize("fn", SETTINGS.functions, ids=lambda fn: fn.name)
def test_documented_params_are_the_handlers_params(fn):
    # ListFunctions reads params from the registry without importing handlers;
    # the worker enforces the handler's own list. They must not drift apart.
    function = load_function(fn)
    assert set(fn.params) == set(function.params)
    function.close()


def test_every_function_has_a_description_and_a_worker():
    for fn in SETTINGS.functions:
        assert fn.description and fn.workers, fn.name
