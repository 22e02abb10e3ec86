"""Open Inference Protocol tests: their fixtures (helpers are in tests/support/oip.py)."""

from __future__ import annotations

import pytest

from tests.support.oip import PHOTO


@pytest.fixture(scope="session")
def photo() -> bytes:
    return PHOTO.read_bytes()
