"""Params declared once: what a caller is told (describe, ParamSpec) is what is checked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from handlers.base import Param, Params, declare
from handlers.errors import InvalidInput
from server.config import load_settings
from server.gateway.core import function_info
from tests.support import ROOT

RATIO = Param("ratio", "number", "a share", default=0.5, low=0.0, high=0.95)
COUNT = Param("count", "integer", "how many", default=3, low=1, high=10, note="count x 2 <= 20")
FLAG = Param("flag", "boolean", "draw it", default=False)
MODE = Param("mode", "string", "how", default="fast", choices=("fast", "exact"))
CHANNEL = Param("channel", "integer", "which one", low=0, shown_default="all of them")


@pytest.mark.parametrize(
    ("param", "text"),
    [
        (RATIO, "a share, 0..0.95 (default 0.5)"),
        (COUNT, "how many, 1..10 (default 3); count x 2 <= 20"),
        (FLAG, "draw it (default false)"),
        (MODE, "how: fast or exact (default fast)"),
        (CHANNEL, "which one, at least 0 (default: all of them)"),
    ],
)
def test_describe_says_range_choices_and_default(param, text):
    assert param.describe() == text


@pytest.mark.parametrize(
    ("param", "given", "value"),
    [
        (RATIO, {}, 0.5),
        (RATIO, {"ratio": "0.95"}, 0.95),
        (COUNT, {"count": " 10 "}, 10),
        (FLAG, {"flag": "yes"}, True),
        (MODE, {"mode": "exact"}, "exact"),
        (CHANNEL, {}, None),
        (CHANNEL, {"channel": "7"}, 7),
    ],
)
def test_read_takes_the_value_or_the_default(param, given, value):
    assert param.read(Params(given)) == value


@pytest.mark.parametrize(
    ("param", "raw", "says"),
    [
        (RATIO, "0.96", "param ratio: expected a number in [0, 0.95], got '0.96'"),
        (RATIO, "nan", "param ratio: expected a number in [0, 0.95], got 'nan'"),
        (COUNT, "0", "param count: expected a whole number in [1, 10], got '0'"),
        (COUNT, "2.5", "param count: expected a whole number in [1, 10], got '2.5'"),
        (FLAG, "maybe", "param flag: expected true or false, got 'maybe'"),
        (MODE, "slow", "param mode: expected one of fast, exact, got 'slow'"),
        (CHANNEL, "-1", "param channel: expected a whole number >= 0, got '-1'"),
    ],
)
def test_a_value_out_of_its_declaration_is_invalid_input_naming_it(param, raw, says):
    with pytest.raises(InvalidInput) as raised:
        param.read(Params({param.name: raw}))
    assert raised.value.message == says


def test_an_unknown_type_is_refused_when_declared():
    with pytest.raises(ValueError, match="type must be one of"):
        Param("x", "float", "no such type")


def test_param_specs_carry_the_declaration():
    spec = function_info(load_settings(environ={}).resolve("send-wav")).param_specs
    by_name = {s.name: s for s in spec}
    assert [s.name for s in spec][:2] == ["binsize", "overlap"]
    assert (by_name["overlap"].type, by_name["overlap"].default) == ("number", "0.5")
    assert (by_name["overlap"].minimum, by_name["overlap"].maximum) == (0.0, 0.95)
    assert list(by_name["scale"].choices) == ["linear", "log"]
    assert by_name["channel"].default == "" and not by_name["channel"].HasField("maximum")
    assert by_name["colorbar"].default == "true"


def test_declare_keeps_the_order_given():
    assert list(declare(MODE, RATIO, FLAG)) == ["mode", "ratio", "flag"]


def test_function_modules_import_nothing_heavy():
    """The gateway imports every handler module to list its params: none may pull in
    the libraries of their work, which load when a worker creates the function."""
    settings = load_settings(environ={})
    modules = sorted({fn.handler for fn in settings.functions})
    heavy = ("numpy", "scipy", "cv2", "PIL", "matplotlib", "tensorflow")
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(h for h in {heavy!r} if h in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
