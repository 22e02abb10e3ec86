"""Fixtures: a real ``python -m server`` on free loopback ports, shared by the tests.

Tests outside tests/unit/ start whole services (``python -m server`` subprocesses,
the model and TensorFlow); they are marked ``service`` here, in one place, so that
``make test-fast`` (``pytest -m "not service"``) runs tests/unit/ alone. Helpers
tests share live in tests/support/, not here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from protos.dcf.v1 import dcf_pb2_grpc
from tests.support import Service, start_service

UNIT_TESTS = Path(__file__).parent / "unit"

# A function that raises, one with a small input limit, and one with a tiny queue,
# beside the real ones.
TEST_FUNCTIONS = {
    "faulty": {
        "handler": "tests.support.fixture_handlers",
        "description": "raises an unexpected error (tests only)",
    },
    "echo-small": {
        "handler": "handlers.hello",
        "description": "hello-dcf with a 1 MiB input limit (tests only)",
        "max_input_bytes": "1MiB",
    },
    "echo-queue": {
        "handler": "handlers.hello",
        "description": "hello-dcf, one call at a time and one waiting (tests only)",
        "max_concurrency": 1,
        "max_queue": 1,
    },
}


@pytest.fixture(scope="session")
def dcf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_service(tmp_path_factory.mktemp("dcf"), TEST_FUNCTIONS)
    yield service
    service.stop()


@pytest.fixture
def stub(dcf: Service) -> Iterator[dcf_pb2_grpc.GatewayStub]:
    with dcf.channel() as channel:
        yield dcf.gateway(channel)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test outside tests/unit/ starts a service: mark it so."""
    for item in items:
        if UNIT_TESTS not in item.path.parents:
            item.add_marker(pytest.mark.service)
