"""What changed in the functions directories: folders added, changed, removed or broken.

Polling, dependency-free: every look stats each folder's files (path, modification
time, size; server/repository/folder.py ``fingerprint``), which costs microseconds
for a function's few files. A folder is reported only once it has looked the same
twice in a row, so an editor's save in several writes, or a folder being copied in,
is read once, whole. A folder is known by its path; its function's name is its own.

``Repository`` has no timers and no gRPC: ``changes()`` is one look, and the caller
(server/run/reload.py) decides what to do and when to look again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from server.config import FunctionConfig
from server.repository.folder import (
    FUNCTION_FILE,
    FolderError,
    FunctionFolder,
    fingerprint,
    folders_in,
    read_folder,
)

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class Change:
    """One folder's news: its function read anew (``folder``), refused (``error``), or
    gone (neither)."""

    path: Path
    folder: FunctionFolder | None = None
    error: FolderError | None = None

    @property
    def name(self) -> str:
        return self.folder.config.name if self.folder is not None else self.path.name

    @property
    def removed(self) -> bool:
        return self.folder is None and self.error is None


@dataclass
class Repository:
    """The function folders of ``dirs``, looked at again and again.

    ``registry``: the functions the registry serves, whose names a folder may not take.
    """

    dirs: tuple[str, ...]
    registry: Iterable[FunctionConfig] = ()
    _reported: dict[Path, Fingerprint] = field(default_factory=dict)
    _last_look: dict[Path, Fingerprint] = field(default_factory=dict)
    _names: dict[Path, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._taken = {
            n: f"the registry's {fn.name}" for fn in self.registry for n in (fn.name, *fn.aliases)
        }
        self._described = {fn.source for fn in self.registry if fn.source}

    def changes(self, settle: bool = True) -> list[Change]:
        """What changed since the last look; with ``settle``, only folders that look as
        they did at the last look (at start-up, ``settle=False`` takes them as they are)."""
        now = {
            path: fingerprint(path)
            for path in folders_in(self.dirs)
            if str(path.absolute()) not in self._described
        }
        previous, self._last_look = self._last_look, now
        found: list[Change] = []
        for path, marks in now.items():
            steady = not settle or previous.get(path) == marks
            if steady and self._reported.get(path) != marks:
                self._reported[path] = marks
                found.append(self._read(path))
        for path in list(self._reported):
            if path not in now and (not settle or path not in previous):
                del self._reported[path]
                self._names.pop(path, None)
                found.append(Change(path))
        return found

    def _read(self, path: Path) -> Change:
        self._names.pop(path, None)
        try:
            folder = read_folder(path)
        except FolderError as exc:
            return Change(path, error=exc)
        except Exception as exc:  # whatever a folder holds, it is refused
            log.debug("reading %s failed", path, exc_info=True)
            reason = f"cannot be read: {type(exc).__name__}: {exc}"
            return Change(path, error=FolderError(path / FUNCTION_FILE, reason))
        names = (folder.config.name, *folder.config.aliases)
        holders = {**{n: str(p) for p, ns in self._names.items() for n in ns}, **self._taken}
        clash = next((holders[n] for n in names if n in holders), None)
        if clash is not None:
            error = FolderError(path / FUNCTION_FILE, f"its name is taken by {clash}")
            return Change(path, error=error)
        self._names[path] = names
        return Change(path, folder=folder)
