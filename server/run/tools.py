"""The function author's commands: ``init`` (a folder to start from) and ``ship`` (what
deploys it). They serve nothing: each writes files, says which, and exits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from server.repository.folder import FolderError
from server.repository.scaffold import ScaffoldError, scaffold, tests_file_of
from server.repository.ship import ShipError, ship


def run_init(args: argparse.Namespace) -> int:
    try:
        folder = scaffold(args.name, Path(args.dir))
    except (ScaffoldError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shown = folder.as_posix()
    parent = Path(args.dir).as_posix()
    print(f"created {shown}/: function.yaml, handler.py, {tests_file_of(args.name)}")
    print(f"  python -m pytest {shown}                                      # its test")
    print(f"  echo hello | DCF_FUNCTIONS_DIRS={parent} python -m client call --local {args.name}")
    print(f"  python -m server --functions {parent}                # served beside the others")
    return 0


def run_ship(args: argparse.Namespace) -> int:
    try:
        written = ship(
            Path(args.folder),
            Path(args.out),
            image=args.image,
            port=args.port,
            cpu=args.cpu,
            memory=args.memory,
            registry=Path(args.registry) if args.registry else None,
        )
    except (FolderError, ShipError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path.as_posix()}")
    return 0


def run_tool(args: argparse.Namespace) -> int:
    return run_init(args) if args.role == "init" else run_ship(args)
