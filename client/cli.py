"""``python -m client``: call dcf functions from a shell.

    python -m client call NAME [-p KEY=VALUE ...] [FILE]    stream FILE (or stdin), print the result
    python -m client list                                    the functions, one a line

Options (before or after the subcommand): --address (default $DCF_ADDRESS, else
127.0.0.1:50051), --timeout SECONDS. Results go to standard output as they arrive:
text and JSON as text, partial results (ssd-video's frames) as JSON lines, binary
results (PNG) as raw bytes, or base64 with --base64. Errors go to standard error as
one line, ``error: <STATUS>: <message>``, with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import BinaryIO, Iterable, Iterator, Sequence

import grpc

from client.errors import CliError
from client.output import Output
from protos.dcf.v1 import dcf_pb2, dcf_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
CHUNK_BYTES = 1 << 20
PROGRESS_MIN_BYTES = 8 << 20


def build_parser() -> argparse.ArgumentParser:
    def connection(suppress: bool) -> argparse.ArgumentParser:
        # The same options on the main parser and on each subcommand; the
        # subcommand's copy only overrides when given (SUPPRESS).
        parent = argparse.ArgumentParser(add_help=False)
        default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
        parent.add_argument(
            "--address",
            default=default(os.environ.get("DCF_ADDRESS", DEFAULT_ADDRESS)),
            help="gateway HOST:PORT (default $DCF_ADDRESS or 127.0.0.1:50051)",
        )
        parent.add_argument(
            "--timeout", type=float, default=default(None), help="deadline in seconds"
        )
        parent.add_argument(
            "--ca",
            default=default(os.environ.get("DCF_TLS_CA") or None),
            help="speak TLS, trusting this CA certificate (PEM; default $DCF_TLS_CA)",
        )
        parent.add_argument(
            "--token",
            default=default(os.environ.get("DCF_TOKEN") or None),
            help="bearer token for a gateway that requires one (default $DCF_TOKEN)",
        )
        return parent

    parser = argparse.ArgumentParser(
        prog="python -m client", description="Call dcf functions.", parents=[connection(False)]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    call = commands.add_parser("call", parents=[connection(True)], help="call a function")
    call.add_argument("function", help="the function's name, e.g. hello-dcf, ssd")
    call.add_argument("file", nargs="?", help="input file (default: standard input)")
    call.add_argument(
        "-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="a param (repeatable)"
    )
    call.add_argument("--base64", action="store_true", help="print the result as base64")
    call.add_argument(
        "--local", action="store_true", help="run the function in this process, with no server"
    )
    commands.add_parser("list", parents=[connection(True)], help="list the functions")
    return parser


def parse_params(items: Iterable[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError("INVALID_ARGUMENT", f"param {item!r}: expected KEY=VALUE")
        params[key] = value
    return params


def read_chunks(source: BinaryIO, size: int | None) -> Iterator[bytes]:
    """The input in chunks, with a progress bar on a terminal for large inputs."""
    progress = None
    if sys.stderr.isatty() and (size is None or size >= PROGRESS_MIN_BYTES):
        from tqdm import tqdm

        progress = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False)
    try:
        while chunk := source.read(CHUNK_BYTES):
            if progress is not None:
                progress.update(len(chunk))
            yield chunk
    finally:
        if progress is not None:
            progress.close()


def _requests(function: str, params: dict[str, str], chunks: Iterable[bytes]) -> Iterator[dcf_pb2.CallRequest]:
    header = dcf_pb2.CallHeader(function=function)
    header.params.update(params)
    yield dcf_pb2.CallRequest(header=header)
    for chunk in chunks:
        yield dcf_pb2.CallRequest(chunk=chunk)


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    if not args.ca:
        return grpc.insecure_channel(args.address)
    try:
        with open(args.ca, "rb") as pem:
            credentials = grpc.ssl_channel_credentials(root_certificates=pem.read())
    except OSError as exc:
        raise CliError("INVALID_ARGUMENT", f"cannot read CA {args.ca}: {exc.strerror}") from None
    return grpc.secure_channel(args.address, credentials)


def call_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {args.token}"),) if args.token else ()


def call_remote(args: argparse.Namespace, params: dict[str, str], chunks: Iterable[bytes], out: Output) -> None:
    with open_channel(args) as channel:
        stub = dcf_pb2_grpc.GatewayStub(channel)
        requests = _requests(args.function, params, chunks)
        for response in stub.Call(requests, timeout=args.timeout, metadata=call_metadata(args)):
            kind = response.WhichOneof("kind")
            if kind == "header":
                out.begin(response.header.content_type, response.header.partial_results)
            elif kind == "chunk":
                out.chunk(response.chunk)
            elif kind == "result":
                out.result(response.result)
            elif kind == "failure":
                raise CliError(response.failure.code, response.failure.message)
    out.end()


def call_local(args: argparse.Namespace, params: dict[str, str], chunks: Iterable[bytes], out: Output) -> None:
    from server.config import load_settings
    from server.local import run_local

    reply = run_local(load_settings(), args.function, params, chunks)
    out.begin(reply.content_type, reply.partial_results)
    for part in reply.parts:
        out.result(part) if reply.partial_results else out.chunk(part)
    out.end()


def list_functions(args: argparse.Namespace) -> None:
    with open_channel(args) as channel:
        reply = dcf_pb2_grpc.GatewayStub(channel).ListFunctions(
            dcf_pb2.ListFunctionsRequest(), timeout=args.timeout, metadata=call_metadata(args)
        )
    width = max((len(fn.name) for fn in reply.functions), default=0)
    for fn in reply.functions:
        types = f"{fn.input_content_type} -> {fn.output_content_type}"
        aliases = f" (alias {', '.join(fn.aliases)})" if fn.aliases else ""
        print(f"{fn.name:<{width}}  {fn.description}  [{types}]{aliases}")


def run(args: argparse.Namespace) -> None:
    if args.command == "list":
        list_functions(args)
        return
    params = parse_params(args.param)
    out = Output(sys.stdout.buffer, as_base64=args.base64, terminal=sys.stdout.isatty())
    if args.file:
        try:
            source: BinaryIO = open(args.file, "rb")
        except OSError as exc:
            raise CliError("INVALID_ARGUMENT", f"cannot read {args.file}: {exc.strerror}") from None
        size = os.fstat(source.fileno()).st_size
    else:
        source, size = sys.stdin.buffer, None
    with source:
        chunks = read_chunks(source, size)
        (call_local if args.local else call_remote)(args, params, chunks, out)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except CliError as exc:
        print(f"error: {exc.status}: {exc.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader of our output went away (| head): not an error of ours.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("error: CANCELLED: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - --local runs handlers in process
        from handlers.base import FunctionError

        if isinstance(exc, FunctionError):
            print(f"error: {exc.status}: {exc.message}", file=sys.stderr)
            return 1
        raise
    return 0

