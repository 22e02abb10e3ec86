"""dcf's client: a Python library (``Client``, ``AsyncClient``) and ``python -m client``.

    from client import Client

    with Client("127.0.0.1:50051") as dcf:
        print(dcf.call("hello-dcf", "Hello, DCF!").text)

``Client`` (client/library.py) and ``AsyncClient`` (client/aio.py) call functions over
dcf.v1 ``Gateway/Call``, streaming inputs and answers; failures are ``DcfError``
subclasses, one per status family (client/exceptions.py). The command line
(client/cli.py) is built on ``Client``.
"""

from client.aio import AsyncClient, AsyncStream
from client.exceptions import (
    Cancelled,
    DcfError,
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    NotFound,
    Overloaded,
    PermissionDenied,
    TooLarge,
    Unauthenticated,
    Unavailable,
)
from client.library import Client, Stream
from client.result import AnswerHeader, FunctionInfo, ParamInfo, Result

__all__ = [
    "AnswerHeader",
    "AsyncClient",
    "AsyncStream",
    "Cancelled",
    "Client",
    "DcfError",
    "DeadlineExceeded",
    "FunctionInfo",
    "InternalError",
    "InvalidInput",
    "NotFound",
    "Overloaded",
    "ParamInfo",
    "PermissionDenied",
    "Result",
    "Stream",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
]
