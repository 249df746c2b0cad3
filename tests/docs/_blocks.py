"""The code blocks of farside's documents, and the rules for running them here.

Every fenced block whose language is ``sh``, ``console`` or ``python`` in README.md,
docs/*.md and the examples' READMEs is run by ``test_docs.py``, in order, in one
scratch directory per document. Blocks in other languages (``ini``, ``toml``, plain
``````` for output and pictures) are not run, unless a marker says to write one to a file.

Markers are HTML comments on a line of their own, visible in the document's source,
before a block (blank lines may come between):

* ``<!-- docs-test: skip REASON -->``: the block is not run; the reason is required.
* ``<!-- docs-test: file PATH -->``: the block is written to PATH (in the scratch
  directory, rewritten like the blocks) instead of being run: an enclave or a config
  file that later blocks use.

and one that holds for the whole document, anywhere in it:

* ``<!-- docs-test: link PATH ... -->``: the document says to run it from a checkout of
  farside; each PATH of the checkout is linked into the scratch directory.

What the harness does that the document does not say, and nothing else:

* **Hosts**: the names and addresses of remote machines become loopback ones:
  ``trusted.example.com`` -> ``127.0.0.1``, ``10.0.0.N`` -> ``127.0.0.N``, and
  ``0.0.0.0`` (listen everywhere) -> ``127.0.0.1``.
* **The port**: ``4321``, the provision server's port in every document, becomes a free
  port chosen for that document, so that runs on a shared machine do not collide.
* **System paths**: ``/etc/farside`` and ``/var/lib/farside`` become
  ``SCRATCH/etc/farside`` and ``SCRATCH/var/lib/farside``, SCRATCH being the document's
  scratch directory (an absolute path, as theirs are).
* **pip**: a command starting with ``pip install`` is not run (the tests run in the
  environment they were installed into; ``.ci/run`` runs the README's install commands
  in a fresh one); whatever follows its ``&&`` is.
* **Servers**: a ``farside provision-server`` command runs in the background until the
  document is done (it must name its ``--port`` or a ``--config``); the next command
  starts once it printed its ``listening on`` line.
* **State**: the shell variables a ``sh`` block assigns are given to later blocks of the
  document (``sh`` and ``python``) as environment variables; ``python`` blocks of one
  document share one interpreter, as consecutive cells would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = [
    "LANGUAGES",
    "Block",
    "Document",
    "Step",
    "parse_document",
    "rewrite",
    "steps",
]

LANGUAGES = ("sh", "console", "python")
_FENCE = re.compile(r"^(`{3,})([\w+-]*)[^\n]*$")
_MARKER = re.compile(r"<!--\s*docs-test:\s*([a-z-]+)\s*(.*?)\s*-->", re.DOTALL)
_HOSTS = (
    (re.compile(r"\btrusted\.example\.com\b"), "127.0.0.1"),
    (re.compile(r"\b0\.0\.0\.0\b"), "127.0.0.1"),
    (re.compile(r"\b10\.0\.0\.(\d{1,3})\b"), r"127.0.0.\1"),
)
_PORT = re.compile(r"\b4321\b")
_PATHS = re.compile(r"(?<![\w./-])/(etc|var/lib)/farside\b")
_ASSIGNED = re.compile(r"^\s*(?:export\s+)?([A-Za-z_]\w*)=", re.MULTILINE)
_EXPORTED = re.compile(r"(?:^|\s)([A-Za-z_]\w*)=")
_SERVER = re.compile(r"^\s*farside\s+provision-server\b")
_PIP = re.compile(r"^\s*pip3?\s+install\b[^&]*(?:&&\s*(.*))?$", re.DOTALL)


class DocumentError(ValueError):
    """A marker the harness does not understand, or one in the wrong place."""


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its text, and its marker."""

    document: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    skip: str | None = None  # the reason, when marked skip
    file: str | None = None  # the path, when marked file

    @property
    def where(self) -> str:
        return f"{self.document.name}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.skip is None and (self.file is not None or self.language in LANGUAGES)


@dataclass(frozen=True)
class Document:
    path: Path
    blocks: list[Block] = field(default_factory=list)
    links: list[str] = field(default_factory=list)


def parse_document(path: Path, text: str | None = None) -> Document:
    """The blocks of the Markdown document at ``path`` with their markers."""
    text = path.read_text(encoding="utf-8") if text is None else text
    lines = text.splitlines()
    blocks: list[Block] = []
    links: list[str] = []
    pending: tuple[str, str, int] | None = None  # (directive, argument, line)
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = _FENCE.match(line)
        if fence is not None:
            ticks, language = fence.group(1), fence.group(2)
            end = index + 1
            while end < len(lines) and not lines[end].startswith(ticks):
                end += 1
            if end == len(lines):
                raise DocumentError(f"{path.name}:{index + 1}: the block is never closed")
            block = Block(path, index + 1, language, "\n".join(lines[index + 1 : end]) + "\n")
            if pending is not None:
                directive, argument, _ = pending
                block = replace(block, **{directive: argument})
                pending = None
            blocks.append(block)
            index = end + 1
            continue
        marker = _MARKER.fullmatch(line.strip())  # a line of its own, not quoted in prose
        if marker is not None:
            directive, argument = marker.group(1), " ".join(marker.group(2).split())
            where = f"{path.name}:{index + 1}"
            if directive == "link":
                links += argument.split()
                index += 1
                continue
            if directive not in ("skip", "file"):
                raise DocumentError(f"{where}: unknown docs-test marker {directive!r}")
            if not argument:
                raise DocumentError(f"{where}: docs-test {directive} needs an argument")
            if pending is not None:
                raise DocumentError(f"{where}: two docs-test markers before one block")
            pending = (directive, argument, index + 1)
        if pending is not None and line.strip() and marker is None:
            raise DocumentError(
                f"{path.name}:{pending[2]}: a docs-test marker must come right before a block"
            )
        index += 1
    if pending is not None:
        raise DocumentError(f"{path.name}:{pending[2]}: a docs-test marker without a block")
    return Document(path, blocks, links)


def rewrite(text: str, port: int, root: Path) -> str:
    """``text`` with remote hosts, the port and system paths made local (module docstring);
    ``root`` is the scratch directory that stands for ``/``."""
    for pattern, replacement in _HOSTS:
        text = pattern.sub(replacement, text)
    text = _PORT.sub(str(port), text)
    return _PATHS.sub(lambda m: f"{root}/{m.group(1)}/farside", text)


@dataclass(frozen=True)
class Step:
    """What running a stretch of a shell block means here."""

    kind: str  # "shell" (run as one script, wait for it), "server" (start in the background)
    command: str
    assigned: tuple[str, ...] = ()  # variables to hand on to later blocks


def _logical_lines(text: str, console: bool) -> list[str]:
    commands: list[str] = []
    current: list[str] = []
    for raw in text.splitlines():
        line = raw
        if console and not current:
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        current.append(line)
        if not line.rstrip().endswith("\\"):
            commands.append("\n".join(current))
            current = []
    if current:
        commands.append("\n".join(current))
    return [c for c in commands if c.strip()]


def steps(block: Block, text: str) -> list[Step]:
    """The steps of a ``sh`` or ``console`` block (already rewritten), in order.

    The commands between servers run as one script, as a reader would run them in one
    shell (a ``cd`` holds for the commands after it).
    """
    result: list[Step] = []
    chunk: list[str] = []
    names: list[str] = []

    def flush() -> None:
        if any(line.strip() and not line.strip().startswith("#") for line in chunk):
            result.append(Step("shell", "\n".join(chunk), tuple(dict.fromkeys(names))))
        chunk.clear()
        names.clear()

    for line in _logical_lines(text, block.language == "console"):
        pip = _PIP.match(line)
        if pip is not None and not pip.group(1):
            continue
        command = pip.group(1) if pip is not None else line
        if _SERVER.match(command):
            if "--port" not in command and "--config" not in command:
                raise DocumentError(
                    f"{block.where}: a provision server in the docs names its --port (or a "
                    "--config), so that the harness can move it off the default"
                )
            flush()
            result.append(Step("server", command))
            continue
        if command.split("#", 1)[0].rstrip().endswith("&"):
            raise DocumentError(
                f"{block.where}: a background command (&) the harness does not know how to "
                "stop; mark the block skip with a reason"
            )
        names += _ASSIGNED.findall(command)
        if re.match(r"^\s*export\s", command):
            names += _EXPORTED.findall(command)
        chunk.append(command)
    flush()
    return result
