"""Fixtures: a real ``python -m server`` on free loopback ports, shared by the tests."""

from __future__ import annotations

from typing import Iterator

import pytest

from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc
from server.testing import ROOT, Service, free_port, start_service, wait_serving  # noqa: F401

# A function that raises, one with a small input limit, and one with a tiny queue,
# beside the real ones.
TEST_FUNCTIONS = {
    "faulty": {
        "handler": "tests.fixture_handlers",
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


def call_requests(function: str, chunks, params: dict | None = None):
    header = dcf_pb2.CallHeader(function=function)
    header.params.update(params or {})
    yield dcf_pb2.CallRequest(header=header)
    for chunk in chunks:
        yield dcf_pb2.CallRequest(chunk=chunk)


def collect_call(responses) -> tuple[str, bytes, list[bytes]]:
    """(content type, body from chunks, list of results) of a Call's responses."""
    content_type, body, results = "", [], []
    for response in responses:
        kind = response.WhichOneof("kind")
        if kind == "header":
            content_type = response.header.content_type
        elif kind == "chunk":
            body.append(response.chunk)
        else:
            results.append(response.result)
    return content_type, b"".join(body), results
