"""``python -m client``: call dcf functions from a shell.

    python -m client call NAME [-p KEY=VALUE ...] [FILE]    stream FILE (or stdin), print the result
    python -m client list                                    the functions, one a line

Options and positionals go in any order, before or after the command:
--address (default $DCF_ADDRESS, else 127.0.0.1:50051), --timeout SECONDS, --ca, --token.
Results go to standard output as they arrive: text and JSON as text, partial results
(ssd-video's frames) as JSON lines, binary results (PNG) as raw bytes, or base64 with
--base64. Errors go to standard error as one line, ``error: <STATUS>: <message>``, with a
non-zero exit status.

Calls go through the library's ``Client`` (client/library.py), like any program's;
this module only parses arguments and prints. ``--local`` runs the handler in process
(server/worker/local.py) instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

from client.errors import CliError
from client.exceptions import DcfError
from client.inputs import CHUNK_BYTES
from client.library import Client
from client.output import Output
from client.wire import DEFAULT_ADDRESS

PROGRESS_MIN_BYTES = 8 << 20
COMMANDS = {"call": "call a function", "list": "list the functions"}
_USAGE = {
    "call": "python -m client call NAME [FILE] [-p KEY=VALUE ...] [--base64] [--local] [options]",
    "list": "python -m client list [options]",
}


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=os.environ.get("DCF_ADDRESS", DEFAULT_ADDRESS),
        metavar="HOST:PORT",
        help="the gateway (default $DCF_ADDRESS, else 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="a deadline for the call, in seconds"
    )
    parser.add_argument(
        "--ca",
        default=os.environ.get("DCF_TLS_CA") or None,
        metavar="PEM",
        help="speak TLS, trusting this CA certificate (default $DCF_TLS_CA)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("DCF_TOKEN") or None,
        help="bearer token for a gateway that requires one (default $DCF_TOKEN)",
    )


def _add_call_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a param (repeatable)",
    )
    parser.add_argument("--base64", action="store_true", help="print the result as base64")
    parser.add_argument(
        "--local", action="store_true", help="run the function in this process, with no server"
    )


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of one command, or with None the top-level one (help, and a missing command).

    Each command has a flat parser of its own, the command word being its first
    positional, so that ``parse_intermixed_args`` can take options and positionals
    in any order: argparse's subparsers cannot be intermixed, and with them an
    optional FILE after ``-p`` was "unrecognized".
    """
    if command is None:
        parser = argparse.ArgumentParser(
            prog="python -m client",
            usage="python -m client [options] {call,list} ...",
            description="Call dcf functions. Options go before or after the command, in any order.",
            epilog="\n".join(f"  {_USAGE[name]}\n      {text}" for name, text in COMMANDS.items()),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument("command", choices=list(COMMANDS), help="call or list")
        _add_connection_options(parser)
        return parser
    parser = argparse.ArgumentParser(
        prog=f"python -m client {command}", usage=_USAGE[command], description=COMMANDS[command]
    )
    parser.add_argument("command", choices=[command], help=argparse.SUPPRESS)
    if command == "call":
        parser.add_argument(
            "function", metavar="NAME", help="the function's name, e.g. hello-dcf, ssd"
        )
        parser.add_argument(
            "file", metavar="FILE", nargs="?", help="input file (default: standard input)"
        )
        _add_call_options(parser)
    _add_connection_options(parser)
    return parser


def find_command(argv: Sequence[str]) -> str | None:
    """The command word: the first positional, once every option has taken its value."""
    scout = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    _add_connection_options(scout)
    _add_call_options(scout)
    scout.add_argument("words", nargs="*")
    try:
        words = scout.parse_known_intermixed_args(argv)[0].words
    except argparse.ArgumentError:
        # An option without its value, or a bad one: the command's own parser says which.
        words = [word for word in argv if word in COMMANDS]
    return words[0] if words and words[0] in COMMANDS else None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``call NAME FILE -p k=v``, ``call -p k=v NAME FILE``, ``--address A call ...`` alike."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = find_command(argv)
    if command is None:
        top = build_parser()
        top.parse_args(argv)  # prints the help, or the error, and exits
        top.error("a command is required: call or list")
    return build_parser(command).parse_intermixed_args(argv)


def parse_params(items: Iterable[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError("INVALID_ARGUMENT", f"param {item!r}: expected KEY=VALUE")
        params[key] = value
    return params


def _read(source: BinaryIO) -> bytes:
    try:
        return source.read(CHUNK_BYTES)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CliError("INVALID_ARGUMENT", f"cannot read the input: {reason}") from None


def read_chunks(source: BinaryIO, size: int | None) -> Iterator[bytes]:
    """The input in chunks, with a progress bar on a terminal for large inputs.

    A failed read is a CliError: the library raises it in the caller's thread, so that
    it is reported as one line like any other failure.
    """
    progress = None
    if sys.stderr.isatty() and (size is None or size >= PROGRESS_MIN_BYTES):
        from tqdm import tqdm

        progress = tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            leave=False,
        )
    try:
        while chunk := _read(source):
            if progress is not None:
                progress.update(len(chunk))
            yield chunk
    finally:
        if progress is not None:
            progress.close()


def open_client(args: argparse.Namespace) -> Client:
    """The library's client for the connection options; a CA that cannot be read is
    INVALID_ARGUMENT, as any other unusable argument."""
    try:
        return Client(args.address, token=args.token, ca=args.ca, timeout=args.timeout)
    except OSError as exc:
        raise CliError("INVALID_ARGUMENT", f"cannot read CA {args.ca}: {exc.strerror}") from None


def call_remote(
    args: argparse.Namespace, params: dict[str, str], chunks: Iterable[bytes], out: Output
) -> None:
    with open_client(args) as dcf, dcf.stream(args.function, chunks, **params) as answer:
        header = answer.header()
        out.begin(header.content_type, header.partial_results)
        write = out.result if header.partial_results else out.chunk
        for piece in answer.raw():
            write(piece)
    out.end()


def call_local(
    args: argparse.Namespace, params: dict[str, str], chunks: Iterable[bytes], out: Output
) -> None:
    from server.repository.local import local_settings
    from server.worker.local import run_local

    settings, name = local_settings(args.function)  # a registered function, or a folder
    reply = run_local(settings, name, params, chunks)
    out.begin(reply.content_type, reply.partial_results)
    for part in reply.parts:
        out.result(part) if reply.partial_results else out.chunk(part)
    out.end()


def list_functions(args: argparse.Namespace) -> None:
    with open_client(args) as dcf:
        functions = dcf.list()
    width = max((len(fn.name) for fn in functions), default=0)
    for fn in functions:
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
            source: BinaryIO = open(args.file, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise CliError("INVALID_ARGUMENT", f"cannot read {args.file}: {exc.strerror}") from None
        size = os.fstat(source.fileno()).st_size
    else:
        source, size = sys.stdin.buffer, None
    with source:
        chunks = read_chunks(source, size)
        (call_local if args.local else call_remote)(args, params, chunks, out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except DcfError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
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
    except Exception as exc:  # any error: --local runs handlers in process
        from handlers.errors import FunctionError

        if isinstance(exc, FunctionError):
            print(f"error: {exc.status}: {exc.message}", file=sys.stderr)
            return 1
        if getattr(args, "local", False):
            # A fault in the handler: one line, as a worker's would be. Being local, the
            # message goes nowhere but to the user, so it names the fault.
            fault = f"{type(exc).__name__}: {exc}"
            print(f"error: INTERNAL: internal error in the function: {fault}", file=sys.stderr)
            return 1
        raise
    return 0
