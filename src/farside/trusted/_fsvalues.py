"""What crosses between the enclave's file system and the client's file service.

Open flags go out by name (``portable_flags``: numbers differ between systems), and
what comes back is checked and turned into Python's own types.

Everything here is untrusted input: the client may be hostile to the enclave. A
malformed answer is an ``OSError`` (``EIO``) that says the client sent it; nothing the
client sends becomes anything but a checked int, str, bytes or ``os.stat_result``
(stats travel packed: ``farside._filestat``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .. import _filestat as filestat

__all__ = [
    "MAX_PATH",
    "DirEntry",
    "Listing",
    "Mount",
    "answer",
    "bad_answer",
    "check_name",
    "check_target",
    "listing_batch",
    "portable_flags",
    "stat_result",
]

MAX_PATH = 4096
MAX_NAME = 1024  # a name of 255 bytes, in the worst case of UTF-8 and escapes
MAX_TEXT = 1024  # an error's text


_IGNORED = os.O_CLOEXEC | os.O_NOCTTY | getattr(os, "O_LARGEFILE", 0)
_OPTIONS = (
    (os.O_CREAT, "create"),
    (os.O_EXCL, "exclusive"),
    (os.O_TRUNC, "truncate"),
    (os.O_APPEND, "append"),
    (os.O_NOFOLLOW, "nofollow"),
    (os.O_DIRECTORY, "directory"),
    (os.O_NONBLOCK, "nonblock"),
    (os.O_SYNC, "sync"),  # before dsync: O_SYNC includes O_DSYNC's bit
    (getattr(os, "O_DSYNC", os.O_SYNC), "dsync"),
)
_ACCESS = {os.O_RDONLY: "read", os.O_WRONLY: "write", os.O_RDWR: "readwrite"}


def bad_answer(what: str) -> OSError:
    return OSError(errno.EIO, f"the client's file service returned an invalid {what}")


@dataclass(frozen=True, slots=True)
class Mount:
    """How the client presents its files: the root as it spells it (its real path, and
    the path it was given if that differs), read-only or not, and standard input."""

    root: str | None
    aliases: tuple[str, ...] = ()
    readonly: bool = False
    stdin: bool = False

    @classmethod
    def from_client(cls, value: Any) -> Mount:
        """Check the client's ``farside.client.describe`` answer."""
        if not isinstance(value, dict) or set(value) != {"root", "aliases", "readonly", "stdin"}:
            raise bad_answer("description of its files")
        root, aliases = value["root"], value["aliases"]
        if not isinstance(aliases, list) or len(aliases) > 4 or (root is None and aliases):
            raise bad_answer("list of files root aliases")
        for path in [root, *aliases] if root is not None else []:
            if (
                not isinstance(path, str)
                or not path.startswith("/")
                or len(path) > MAX_PATH
                or "\x00" in path
                or posixpath.normpath(path) != path
            ):
                raise bad_answer(f"files root {path!r}")
        if not isinstance(value["readonly"], bool) or not isinstance(value["stdin"], bool):
            raise bad_answer("description of its files")
        return cls(
            root=root, aliases=tuple(aliases), readonly=value["readonly"], stdin=value["stdin"]
        )


def answer(value: Any, *filenames: Any) -> Any:
    """The value of an ``["ok", value]`` answer; raise the ``OSError`` of an error answer.

    Errors travel by name (``"ENOENT"``): numbers differ between systems. The error
    names ``filenames`` as the enclave gave them, as a native call would.
    """
    if isinstance(value, list):
        if len(value) == 2 and value[0] == "ok":
            return value[1]
        if len(value) == 3 and value[0] == "error":
            raise error_from(value[1], value[2], *filenames)
    raise bad_answer("answer")


def error_from(name: Any, text: Any, *filenames: Any) -> OSError:
    code = getattr(errno, name, None) if isinstance(name, str) and name.startswith("E") else None
    if type(code) is not int:
        code = errno.EIO
    if not isinstance(text, str):
        text = os.strerror(code)
    text = text[:MAX_TEXT]
    if len(filenames) >= 2:
        return OSError(code, text, filenames[0], None, filenames[1])
    if filenames:
        return OSError(code, text, filenames[0])
    return OSError(code, text)


def stat_result(value: Any) -> os.stat_result:
    """A stat as the client sent it (packed: ``farside._filestat``)."""
    return _stat_result(_fields(value))


def _fields(value: Any) -> tuple[int, ...]:
    if not isinstance(value, bytes) or len(value) != filestat.SIZE:
        raise bad_answer("stat")
    return filestat.unpack(value)


def _stat_result(fields: tuple[int, ...]) -> os.stat_result:
    mode, ino, dev, nlink, uid, gid, size, atime, mtime, ctime, blksize, blocks, rdev = fields
    seconds = [t // 10**9 for t in (atime, mtime, ctime)]
    extra = {
        # As the C library's stat gives them: whole seconds, plus nanoseconds scaled.
        "st_atime": seconds[0] + (atime % 10**9) * 1e-9,
        "st_mtime": seconds[1] + (mtime % 10**9) * 1e-9,
        "st_ctime": seconds[2] + (ctime % 10**9) * 1e-9,
        "st_atime_ns": atime,
        "st_mtime_ns": mtime,
        "st_ctime_ns": ctime,
        "st_blksize": blksize,
        "st_blocks": blocks,
        "st_rdev": rdev,
    }
    return os.stat_result((mode, ino, dev, nlink, uid, gid, size, *seconds), extra)


def check_name(value: Any) -> str:
    """A directory entry's name: one path component."""
    if isinstance(value, bytes) and len(value) <= MAX_NAME:
        value = filestat.name_from_wire(value)
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_NAME
        or "/" in value
        or "\x00" in value
        or value in (".", "..")
    ):
        raise bad_answer("directory entry name")
    return value


def check_target(value: Any) -> str:
    """A symbolic link's target, as the client read it."""
    if isinstance(value, bytes) and len(value) <= MAX_PATH:
        value = filestat.name_from_wire(value)
    if not isinstance(value, str) or not value or len(value) > MAX_PATH or "\x00" in value:
        raise bad_answer("link target")
    return value


class DirEntry:
    """``os.DirEntry`` for an entry of the client's directory, with what the client
    already said about it: asking costs no exit call (``os.DirEntry`` cannot be made
    from Python, so this is a look-alike; ``isinstance(e, os.DirEntry)`` is False)."""

    __slots__ = ("_lstat", "_mode", "_target", "name", "path")

    def __init__(self, name: Any, path: Any, lstat: tuple[int, ...], target: Any) -> None:
        self.name = name
        self.path = path
        self._lstat: tuple[int, ...] | os.stat_result = lstat  # made a stat_result when asked
        self._mode = lstat[0]
        # for a symbolic link: its target's fields (or stat_result), or the OSError
        self._target = target

    @classmethod
    def from_client(cls, value: Any, directory: str | bytes | None) -> DirEntry:
        """An entry ``[name, lstat, target]`` of the listing of ``directory`` (None: a
        listing by descriptor, whose entries' paths are their names)."""
        if not isinstance(value, list) or len(value) != 3:
            raise bad_answer("directory entry")
        name = check_name(value[0])
        lstat = _fields(value[1])
        target: Any = None
        if stat.S_ISLNK(lstat[0]):
            raw = value[2]
            if isinstance(raw, list) and len(raw) == 3 and raw[0] == "error":
                target = error_from(raw[1], raw[2])
            else:
                target = _fields(raw)
        elif value[2] is not None:
            raise bad_answer("directory entry")
        shown: str | bytes = os.fsencode(name) if isinstance(directory, bytes) else name
        if directory is None:
            path: str | bytes = shown
        else:
            path = posixpath.join(directory, shown)  # type: ignore[arg-type]
        return cls(shown, path, lstat, target)

    def _followed_mode(self) -> int | None:
        if not stat.S_ISLNK(self._mode):
            return self._mode
        target = self._target
        if isinstance(target, OSError):
            return None
        return int(target[0] if isinstance(target, tuple) else target.st_mode)

    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self._mode)

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        mode = self._followed_mode() if follow_symlinks else self._mode
        return mode is not None and stat.S_ISDIR(mode)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        mode = self._followed_mode() if follow_symlinks else self._mode
        return mode is not None and stat.S_ISREG(mode)

    def is_junction(self) -> bool:
        return False

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        if not follow_symlinks or not self.is_symlink():
            lstat = self._lstat
            if not isinstance(lstat, os.stat_result):
                lstat = self._lstat = _stat_result(lstat)
            return lstat
        if isinstance(self._target, OSError):
            error = self._target
            raise OSError(error.errno, error.strerror, self.path)
        if isinstance(self._target, tuple):
            self._target = _stat_result(self._target)
        assert isinstance(self._target, os.stat_result)
        return self._target

    def inode(self) -> int:
        return int(self._lstat[1])

    def __fspath__(self) -> Any:
        return self.path

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"


class Listing:
    """``os.scandir`` of a client directory: an iterator of ``DirEntry`` and a context
    manager. Entries come in batches (1,024 an exit call): ``first`` is the first
    answer, ``next_batch(handle)`` asks for the next, ``close(handle)`` gives up."""

    def __init__(
        self,
        first: Any,
        next_batch: Callable[[int], Any],
        close: Callable[[int], None],
        given: str | bytes | None,
    ) -> None:
        self._next_batch = next_batch
        self._close = close
        self._given = given
        batch, self._handle = listing_batch(first)
        self._batch: Iterator[Any] = iter(batch)

    def __iter__(self) -> Listing:
        return self

    def __next__(self) -> DirEntry:
        while True:
            for value in self._batch:
                return DirEntry.from_client(value, self._given)
            if not self._handle:
                raise StopIteration
            batch, self._handle = listing_batch(self._next_batch(self._handle))
            self._batch = iter(batch)

    def close(self) -> None:
        handle, self._handle = self._handle, 0
        self._batch = iter(())
        if handle:
            self._close(handle)

    def __enter__(self) -> Listing:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if self._handle:
            with contextlib.suppress(Exception):  # a finalizer on a thread that cannot call out
                self.close()


def listing_batch(value: Any) -> tuple[list[Any], int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], list)
        or type(value[1]) is not int
        or not 0 <= value[1] < 2**63
        or len(value[0]) > 4096
    ):
        raise bad_answer("directory listing")
    return value[0], value[1]


def portable_flags(flags: int, path: Any) -> tuple[str, list[str]]:
    """``open`` flags as names the client maps to its own system's numbers."""
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile and flags & tmpfile == tmpfile:
        raise OSError(errno.EOPNOTSUPP, "O_TMPFILE is not available for the client's files", path)
    access = _ACCESS.get(flags & os.O_ACCMODE)
    if access is None:
        raise OSError(errno.EINVAL, "Invalid argument", path)
    rest = flags & ~os.O_ACCMODE & ~_IGNORED
    options = []
    for bit, name in _OPTIONS:
        if rest & bit == bit:
            options.append(name)
            rest &= ~bit
    if rest:
        raise OSError(
            errno.EINVAL,
            f"open flags {rest:#o} are not available for the client's files inside an enclave",
            path,
        )
    return access, options
