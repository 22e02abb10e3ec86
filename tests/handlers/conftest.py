"""The handler tests' shared fixture: the real model, checked once for the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from handlers import detector
from handlers.model_fetch import default_model_dir


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The fetched model's folder; a clear failure, not a skip, when ``make model`` has not run."""
    path = default_model_dir()
    try:
        detector.check_model_dir(path)
    except detector.ModelMissing as exc:
        pytest.fail(f"SSD model files missing, run make model: {exc}")
    return path
