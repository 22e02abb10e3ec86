"""Settings: defaults < YAML < environment < flags, and the registry's checks."""

from __future__ import annotations

import pytest

from server.config import ConfigError, load_settings, parse_route, parse_size
from server.run.main import build_parser, settings_from


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


REGISTRY = """
server: {port: 6000, chunk_bytes: 512KiB}
functions:
  echo: {handler: handlers.hello, aliases: [e], max_input_bytes: 2MiB, workers: [127.0.0.1:7000]}
"""


def test_precedence(tmp_path):
    path = write(tmp_path, REGISTRY)
    assert load_settings(path, environ={}).port == 6000
    assert load_settings(path, environ={}).chunk_bytes == 512 * 1024
    assert load_settings(path, environ={"DCF_PORT": "6001"}).port == 6001
    assert load_settings(path, environ={"DCF_PORT": "6001"}, overrides={"port": 6002}).port == 6002
    assert load_settings(path, environ={}, overrides={"port": None}).port == 6000
    # The defaults show through where nothing is given.
    assert load_settings(path, environ={}).host == "127.0.0.1"


def test_config_file_from_environment(tmp_path, monkeypatch):
    path = write(tmp_path, REGISTRY)
    monkeypatch.setenv("DCF_CONFIG", str(path))
    monkeypatch.setenv("DCF_PORT", "6100")
    settings = settings_from(build_parser().parse_args(["--port", "6200"]))
    assert settings.port == 6200
    assert settings.function("e").name == "echo"


def test_log_format_flag_beats_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DCF_CONFIG", str(write(tmp_path, REGISTRY)))
    monkeypatch.setenv("DCF_LOG_FORMAT", "text")
    for argv in (["--log-format", "json"], ["worker", "echo", "--log-format", "json"]):
        assert settings_from(build_parser().parse_args(argv)).log_format == "json", argv
    assert settings_from(build_parser().parse_args([])).log_format == "text"


def test_registry_entries(tmp_path):
    settings = load_settings(write(tmp_path, REGISTRY), environ={})
    fn = settings.function("echo")
    assert fn.max_input_bytes == 2 << 20 and fn.workers == ("127.0.0.1:7000",)
    assert settings.function("missing") is None


def test_routes_override_workers(tmp_path):
    settings = load_settings(write(tmp_path, REGISTRY), environ={})
    routed = settings.with_routes(dict([parse_route("e=10.0.0.1:1,10.0.0.2:1")]))
    assert routed.function("echo").workers == ("10.0.0.1:1", "10.0.0.2:1")
    with pytest.raises(ConfigError):
        settings.with_routes({"nope": ("h:1",)})
    with pytest.raises(ConfigError):
        parse_route("no-equals-sign")


@pytest.mark.parametrize(
    "text",
    [
        "functions: {x: {description: no handler}}",
        "functions: {x: {handler: handlers.hello, bogus: 1}}",
        "functions: {x: {handler: handlers.hello, aliases: [y]}, y: {handler: handlers.hello}}",
        "server: {port: 70000}",
        "server: {nonsense: 1}",
        "server: {chunk_bytes: lots}",
        "[not, a, mapping]",
    ],
)
def test_bad_config_is_refused_with_a_reason(tmp_path, text):
    with pytest.raises(ConfigError):
        load_settings(write(tmp_path, text), environ={})


def test_sizes():
    assert parse_size("1MiB", "x") == 1 << 20
    assert parse_size("64M", "x") == 64 << 20
    assert parse_size(10, "x") == 10
    with pytest.raises(ConfigError):
        parse_size("-1", "x")
