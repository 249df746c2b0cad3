"""Where a path the enclave names leads: the client's files, the interpreter's, or nowhere.

One rule (docs/architecture.md, "What an enclave sees"):

1. A relative path is the client's: it is relative to the enclave's working
   directory, which starts at the client's ``files_root`` and stays below it.
2. An absolute path at or below the files root, as the client spells it (its real
   path, or the path it was given when that differs), is the client's.
3. Any other absolute path at or below the interpreter's own files (its prefixes,
   the absolute entries of ``sys.path`` but the proxy's working directory, farside's
   install, the time zone database, ``/dev/urandom``) is the trusted host's,
   read-only: a change is ``OSError(EROFS)``; ``/dev/null`` is a sink the view keeps.
4. Anything else is refused with ``PermissionError``, asking nobody.

Paths are made absolute against a base (the working directory, or the directory of a
``dir_fd``) and normalized the way ``os.path.normpath`` does before the rule applies
(``a/link/..`` is ``a``); a path ending in ``/`` keeps it, so it still names a
directory. ``_fsview`` applies the rule to every call.
"""

from __future__ import annotations

import errno
import os
import posix
import posixpath
import sys
from dataclasses import dataclass
from typing import Any

from .. import _filestat as filestat
from ._fsvalues import MAX_PATH, Mount

__all__ = ["CLIENT", "HOST", "Rule", "Where", "interpreter_paths", "read_only", "unavailable"]

CLIENT, HOST = "client", "host"


def interpreter_paths() -> tuple[str, ...]:
    """Where the interpreter's own files are: what the enclave may read of the trusted host.

    The same places the sandbox leaves readable, less the system's shared libraries (the
    dynamic loader reads those, not Python code), and never ``/`` or the working directory.
    """
    import farside

    cwd = posix.getcwd()
    candidates = [
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        posixpath.dirname(posixpath.dirname(farside.__file__ or "")),
        *sys.path,
        "/usr/share/zoneinfo",
        "/etc/localtime",
        "/dev/null",
        "/dev/urandom",
    ]
    paths: list[str] = []
    for candidate in candidates:
        if not candidate or not candidate.startswith("/"):
            continue
        for spelling in (posixpath.normpath(candidate), posixpath.realpath(candidate)):
            if spelling not in ("/", cwd) and spelling not in paths:
                paths.append(spelling)
    return tuple(paths)


def _under(path: str, base: str) -> bool:
    return base in ("/", path) or path.startswith(base + "/")


@dataclass(frozen=True, slots=True)
class Where:
    """Where a path leads: ``kind`` CLIENT (``rel`` is below the files root) or HOST
    (``host`` is the trusted host's path); ``full`` is the normalized absolute path."""

    kind: str
    full: str
    rel: str | bytes = ""  # as it crosses the wire (farside._filestat.name_to_wire)
    host: Any = None


class Rule:
    """The rule, for one client's ``Mount`` and this interpreter's files."""

    def __init__(self, mount: Mount, interpreter: tuple[str, ...]) -> None:
        self.mount = mount
        self.interpreter = interpreter

    def text(self, path: Any) -> str:
        """``path`` (str, bytes or path-like) as the str the rule reads; checked."""
        text = os.fsdecode(os.fspath(path))
        if "\x00" in text:
            raise ValueError("embedded null byte")
        if not text:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if len(text) > MAX_PATH:
            raise OSError(errno.ENAMETOOLONG, "File name too long", path)
        return text

    def where(self, path: Any, text: str, base: str) -> Where:
        """Where ``path`` (read as ``text``, relative to the absolute ``base``) leads."""
        if not text.startswith("/") and self.mount.root is None:
            raise self.no_files(path)
        full = posixpath.normpath(posixpath.join(base, text))
        if full.startswith("//"):
            full = "/" + full.lstrip("/")
        trailing = "/" if text.endswith("/") and full != "/" else ""
        rel = self._below_root(full)
        if rel is not None:
            return Where(CLIENT, full, filestat.name_to_wire(rel + trailing if rel else ""))
        if any(_under(full, prefix) for prefix in self.interpreter):
            return Where(HOST, full, host=path if text.startswith("/") else full + trailing)
        if self.mount.root is None:
            raise self.no_files(path)
        raise PermissionError(
            errno.EACCES,
            f"outside the enclave's files: they are the client's files root "
            f"({self.mount.root}), and only the interpreter's own files are readable elsewhere",
            path,
        )

    def _below_root(self, full: str) -> str | None:
        """``full`` relative to the client's files root, or None if it is not below it."""
        if self.mount.root is None:
            return None
        for mount in (self.mount.root, *self.mount.aliases):
            if _under(full, mount):
                return full[len(mount) :].lstrip("/") if mount != "/" else full.lstrip("/")
        return None

    @staticmethod
    def no_files(path: Any) -> OSError:
        return PermissionError(
            errno.EACCES, "the client gave this enclave no files (files_root=None)", path
        )


def read_only(path: Any, path2: Any = None) -> OSError:
    """The error of a change to the trusted host's (the interpreter's) files."""
    text = "the trusted host's files are read-only inside an enclave"
    if path2 is not None:
        return OSError(errno.EROFS, text, path, None, path2)
    return OSError(errno.EROFS, text, path)


def unavailable(what: str) -> OSError:
    """The error of a call the enclave's file system does not have."""
    return OSError(
        errno.ENOSYS,
        f"{what} is not available inside an enclave (its files are the client's, "
        "reached through the calls docs/architecture.md lists)",
    )
