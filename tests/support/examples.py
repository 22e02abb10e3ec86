"""The examples of README.md and docs/*.md: what their fenced code blocks hold, as written.

A fenced block without a language (or ``sh``, ``bash``, ``shell``) holds shell commands,
one a line; a backslash at a line's end continues it, and a line that is only a comment
is not a command. A ``python`` block is one program. Blocks in any other language
(``yaml``...) are not examples. The Markdown is parsed by markdown-it (CommonMark), so
what counts as a block is what a renderer shows as one.

A walkthrough (a document holding ``WALKTHROUGH``, docs/functions.md) is run in order, in
one folder, each example building on the ones before; its blocks whose info string
names a file (```` ```python file=thumbnail/handler.py ````) are files the reader writes,
``file`` examples. ``documents`` leaves walkthroughs out: ``walkthroughs`` has them.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt

SHELL_LANGUAGES = frozenset({"", "sh", "bash", "shell"})
# Marks a document whose examples run in order, in one folder (see the module's docstring).
WALKTHROUGH = "<!-- examples: a walkthrough, run in order in one folder -->"


@dataclass(frozen=True)
class Example:
    """One command of a shell block, or one python block, where the docs show it."""

    doc: str  # the document, relative to the repository
    line: int  # the 1-based line where the example starts
    language: str  # "shell" or "python"; "file" for a walkthrough's file block
    text: str  # exactly as written
    file: str = ""  # a file block's path, relative to the walkthrough's folder

    @property
    def words(self) -> list[str]:
        """A shell command's words as the shell splits them, with no comment and no quotes,
        operators (``|``, ``>``, ``<``, ``&``) as words of their own."""
        if self.language != "shell":
            return []
        lexer = shlex.shlex(self.text.replace("\\\n", " "), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        return list(lexer)

    @property
    def shape(self) -> str:
        """What rules match against: the words joined by spaces, or a program's text."""
        return " ".join(self.words) if self.language == "shell" else self.text

    @property
    def id(self) -> str:
        summary = self.shape if self.language == "shell" else "python block"
        if self.language == "file":
            summary = f"write {self.file}"
        summary = re.sub(r"\s+", " ", summary)
        return f"{self.doc}:{self.line} {summary[:70]}"


def commands_in(block: str) -> Iterator[tuple[int, str]]:
    """A shell block's commands: (offset of the first line, text with its continuations)."""
    lines = block.splitlines()
    index = 0
    while index < len(lines):
        start = index
        while lines[index].endswith("\\") and index + 1 < len(lines):
            index += 1
        command = "\n".join(lines[start : index + 1])
        index += 1
        stripped = command.strip()
        if stripped and not stripped.startswith("#"):
            yield start, command


def file_named(info: str) -> str:
    """The path a fence's info string names with ``file=PATH``, or ""."""
    for word in info.split()[1:]:
        if word.startswith("file="):
            return word.removeprefix("file=")
    return ""


def examples_in(path: Path, root: Path, files: bool = False) -> list[Example]:
    """The examples of ``path``; with ``files``, its file blocks too (a walkthrough's)."""
    doc = path.relative_to(root).as_posix()
    found: list[Example] = []
    for token in MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8")):
        if token.type != "fence" or token.map is None:
            continue
        language = token.info.split()[0] if token.info.strip() else ""
        first_line = token.map[0] + 2  # the fence's own line is map[0], 0-based
        if files and file_named(token.info):
            found.append(Example(doc, first_line, "file", token.content, file_named(token.info)))
        elif language == "python":
            found.append(Example(doc, first_line, "python", token.content))
        elif language in SHELL_LANGUAGES:
            found += [
                Example(doc, first_line + offset, "shell", command)
                for offset, command in commands_in(token.content)
            ]
    return found


def is_walkthrough(path: Path) -> bool:
    return WALKTHROUGH in path.read_text(encoding="utf-8")


def documents(root: Path) -> list[Path]:
    """README.md and every docs/*.md but the walkthroughs."""
    found = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return [path for path in found if not is_walkthrough(path)]


def walkthroughs(root: Path) -> list[Path]:
    """The docs/*.md whose examples run in order, in one folder."""
    return [path for path in sorted((root / "docs").glob("*.md")) if is_walkthrough(path)]


def all_examples(root: Path) -> list[Example]:
    return [example for path in documents(root) for example in examples_in(path, root)]


# Examples a test cannot run, by what they do: (pattern on Example.shape, the reason).
# The patterns allow leading VAR=value assignments.
_ASSIGNMENTS = r"^(?:\w+=\S*\s+)*"
SKIPS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(_ASSIGNMENTS + pattern), reason)
    for pattern, reason in [
        (
            r"make run\b",
            (
                "make run serves until stopped; the instance under test is the same "
                "python -m server, started on free ports"
            ),
        ),
        (r"make test\b(?!-)", "make test runs the whole suite, this test included"),
        (
            r"make (lint|lock|setup|clean|test-fast)\b",
            (
                "a target of the checkout itself: CI runs make lint and the tests; make "
                "lock takes minutes and rewrites the lock files"
            ),
        ),
        (
            r"(make bench|python -m bench)\b",
            (
                "a benchmark: minutes of load on a service of its "
                "own, results written under bench/results/"
            ),
        ),
        (
            r"source\b",
            (
                "changes only the calling shell; here every command runs with .venv/bin "
                "first on PATH instead"
            ),
        ),
        (
            r"python -m server (init|ship)\b",
            (
                "writes a function folder or its deployment files into the working "
                "directory; docs/functions.md's walkthrough runs it, in order "
                "(tests/repository/test_walkthrough.py)"
            ),
        ),
        (
            r"python -m server(?!\.)\b",
            (
                "starts a server that runs until stopped, on the "
                "documented fixed ports; the instance under test is "
                "python -m server on free ports"
            ),
        ),
        (
            r"docker\b",
            (
                "needs a Docker daemon and builds or starts containers; tests/deploy "
                "checks the Dockerfile and compose file offline"
            ),
        ),
        (r"kubectl\b", "needs a Kubernetes cluster; tests/deploy validates the manifests offline"),
        (r"open\b", "opens a web browser; tests/http/test_page.py drives the page in one"),
        (r"\$EDITOR\b", "opens an interactive editor"),
        (
            r"python docker/registry\.py\b",
            (
                "rewrites docker/functions.yaml and "
                "docker/k8s/10-registry.yaml in the repository; "
                "tests/deploy checks they are what it writes"
            ),
        ),
        (r".*&$", "runs in the background until stopped"),
    ]
]


def skip_reason(example: Example) -> str | None:
    """Why ``example`` cannot run in a test, or None when it runs."""
    if example.language != "shell":
        return None
    for pattern, reason in SKIPS:
        if pattern.match(example.shape):
            return reason
    return None
