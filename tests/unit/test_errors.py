"""The one error model: every error's reason, gRPC status and HTTP status, and the
reason a bare status stands for."""

from __future__ import annotations

import grpc
import pytest

from handlers import errors
from protos.dcf.v1 import dcf_pb2
from server.rpc.status import CallError, error_of, failure_error


@pytest.mark.parametrize(
    ("error", "reason", "status", "http"),
    [
        (errors.InvalidInput, "INVALID_INPUT", "INVALID_ARGUMENT", 400),
        (errors.NotFound, "NOT_FOUND", "NOT_FOUND", 404),
        (errors.TooLarge, "TOO_LARGE", "RESOURCE_EXHAUSTED", 413),
        (errors.Overloaded, "OVERLOADED", "RESOURCE_EXHAUSTED", 429),
        (errors.DeadlineExceeded, "DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", 504),
        (errors.Unavailable, "UNAVAILABLE", "UNAVAILABLE", 503),
        (errors.FunctionError, "INTERNAL", "INTERNAL", 500),
    ],
)
def test_each_error_has_one_reason_status_and_http_status(error, reason, status, http):
    raised = error("what went wrong")
    assert (raised.reason, raised.status, errors.http_status(raised.reason)) == (
        reason,
        status,
        http,
    )
    seen = error_of(raised)
    assert (seen.code.name, seen.reason, seen.message) == (status, reason, "what went wrong")


def test_every_status_in_the_table_is_a_grpc_status():
    assert {row.status for row in errors.TABLE.values()} <= set(grpc.StatusCode.__members__)


@pytest.mark.parametrize(
    ("code", "given", "reason"),
    [
        ("RESOURCE_EXHAUSTED", "", "TOO_LARGE"),  # a bare one is never retried blindly
        ("RESOURCE_EXHAUSTED", "OVERLOADED", "OVERLOADED"),
        ("RESOURCE_EXHAUSTED", "NOT_FOUND", "TOO_LARGE"),  # a reason of another status
        ("RESOURCE_EXHAUSTED", "made up", "TOO_LARGE"),
        ("INVALID_ARGUMENT", "", "INVALID_INPUT"),
        ("UNAUTHENTICATED", "", "UNAUTHENTICATED"),
        ("UNKNOWN", "", "INTERNAL"),
        ("UNIMPLEMENTED", "", "INTERNAL"),
    ],
)
def test_a_relayed_status_keeps_a_fitting_reason_else_takes_its_default(code, given, reason):
    error = CallError(grpc.StatusCode[code], "m", given)
    assert error.reason == reason
    record = dcf_pb2.CallFailure(code=code, message="m", reason=given)
    assert failure_error(record).reason == reason


def test_a_bug_is_internal_with_a_generic_message():
    seen = error_of(ZeroDivisionError("secret detail"))
    assert (seen.code, seen.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert "secret" not in seen.message


def test_unknown_reason_is_500():
    assert errors.http_status("NO_SUCH_REASON") == 500
