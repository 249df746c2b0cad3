"""Walking a path the enclave named, from a descriptor of the root, without leaving it.

The client's file service (``_fileservice``) resolves every path through a ``Root``:
one component at a time from a descriptor of the root, with ``O_NOFOLLOW`` and
``dir_fd`` calls, so no check is separated from its use. A symbolic link is followed
by reading it and walking its target the same way; a ``..`` above the root, or an
absolute target outside it, is refused. What it finds is the last name's directory
(a descriptor) and the name, for the ``*at`` call that acts on it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import _filestat as filestat

__all__ = ["MAX_PATH", "MAX_SYMLINKS", "Found", "Root", "checked_path", "refused"]

MAX_PATH = 4096
MAX_SYMLINKS = 40  # as Linux's own limit: one more is ELOOP

_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)  # a handle on a directory, not a reader of it
_DIR_FLAGS = _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def refused(text: str, code: int = errno.EACCES) -> OSError:
    """An ``OSError`` of the confinement (``EACCES`` unless said otherwise)."""
    return OSError(code, text)


def checked_path(value: Any) -> str:
    """A path the enclave sent, relative to the root; ``ValueError`` if malformed."""
    if isinstance(value, bytes) and len(value) <= MAX_PATH:
        value = filestat.name_from_wire(value)
    if not isinstance(value, str) or len(value) > MAX_PATH or "\x00" in value:
        raise ValueError(f"a path must be a str of at most {MAX_PATH} characters, without NUL")
    if value.startswith("/"):
        raise ValueError("paths are relative to the files root")
    return value


class Found:
    """Where a path leads: its parent directory (a descriptor we own) and its last name.

    ``name`` is ``"."`` when the path is the root itself (``at_root``); ``st`` is what
    the name is (its own stat: no link followed), None if nothing has that name yet;
    ``must_be_dir``: the path ended in ``/``.
    """

    __slots__ = ("at_root", "dir_fd", "must_be_dir", "name", "st")

    def __init__(
        self,
        dir_fd: int,
        name: str,
        st: os.stat_result | None,
        *,
        at_root: bool = False,
        must_be_dir: bool = False,
    ) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.st = st
        self.at_root = at_root
        self.must_be_dir = must_be_dir

    def close(self) -> None:
        os.close(self.dir_fd)


class Root:
    """The directory the enclave's files are confined to, held open as a descriptor.

    ``path`` is its real path; ``given`` the absolute path it was given by (an absolute
    link target may be spelt either way).
    """

    def __init__(self, root: Path) -> None:
        self.path = str(root.resolve())
        self.given = os.path.abspath(root)
        self._fd: int | None = os.open(self.path, _DIR_FLAGS)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    @contextlib.contextmanager
    def at(self, rel: Any, *, follow: bool) -> Iterator[Found]:
        """Where ``rel`` leads, for the block (see ``find``)."""
        found = self.find(rel, follow=follow)
        try:
            yield found
        finally:
            found.close()

    def _inside(self, target: str) -> list[str]:
        """The parts of an absolute link target below the root; refused if it is not."""
        clean = posixpath.normpath(target)
        for base in (self.path, self.given):
            if base == "/":
                return clean.split("/")
            if clean == base or clean.startswith(base + "/"):
                return clean[len(base) :].split("/")
        raise refused("a symbolic link there leads outside the directory the client allows")

    def find(self, rel: Any, *, follow: bool) -> Found:
        """Walk ``rel`` from the root without ever leaving it (see the module docstring).

        A path ending in ``/`` names a directory: its last link is followed, and
        anything else there is ``ENOTDIR``.
        """
        if self._fd is None:
            raise refused("the session ended: the client's files are closed")
        rel = checked_path(rel)
        must_be_dir = rel.endswith("/")
        parts = deque(p for p in rel.split("/") if p not in ("", "."))
        if not parts:
            return Found(os.dup(self._fd), ".", os.fstat(self._fd), at_root=True)
        stack = [os.dup(self._fd)]  # the directories walked through, the root first
        try:
            return self._walk(stack, parts, follow=follow or must_be_dir, must_be_dir=must_be_dir)
        finally:
            for fd in stack:
                os.close(fd)

    def _walk(
        self, stack: list[int], parts: deque[str], *, follow: bool, must_be_dir: bool
    ) -> Found:
        """``find``'s walk: the found name's directory is popped off ``stack``."""
        links = 0
        while parts:
            part = parts.popleft()
            last = not parts
            if part == "..":
                self._up(stack)
                part = "."  # what the walk names if it ends here
            if part == ".":  # from a link's target, or after a ".."
                if not last:
                    continue
                st = os.stat(".", dir_fd=stack[-1])
                return Found(stack.pop(), ".", st, at_root=not stack)
            try:
                st = os.stat(part, dir_fd=stack[-1], follow_symlinks=False)
            except FileNotFoundError:
                if last:
                    return Found(stack.pop(), part, None, must_be_dir=must_be_dir)
                raise
            if stat.S_ISLNK(st.st_mode) and (follow or not last):
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                parts.extendleft(reversed(self._link(stack, part)))
                continue
            if last:
                if must_be_dir and not stat.S_ISDIR(st.st_mode):
                    raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
                return Found(stack.pop(), part, st, must_be_dir=must_be_dir)
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            stack.append(os.open(part, _DIR_FLAGS, dir_fd=stack[-1]))
        raise AssertionError("unreachable: the walk returns at its last part")

    @staticmethod
    def _up(stack: list[int]) -> None:
        """Step to the parent directory; refused above the root."""
        if len(stack) == 1:
            raise refused("the path leads outside the directory the client allows")
        os.close(stack.pop())

    def _link(self, stack: list[int], name: str) -> list[str]:
        """The parts of the symbolic link ``name``'s target, to walk next; an absolute
        target restarts the walk at the root, if it lies below it."""
        target = os.readlink(name, dir_fd=stack[-1])
        if target.startswith("/"):
            target = "/".join(self._inside(target))
            while len(stack) > 1:
                os.close(stack.pop())
        return [p for p in target.split("/") if p] or ["."]
