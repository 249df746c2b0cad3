"""What the client's file service answers, checked and turned into Python's own types.

Everything here is untrusted input: the client may be hostile to the enclave. A
malformed answer is an ``OSError`` (``EIO``) that says the client sent it; nothing the
client sends becomes anything but a checked int, str, bytes or ``os.stat_result``.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_PATH",
    "DirEntry",
    "Mount",
    "answer",
    "bad_answer",
    "check_name",
    "stat_result",
]

MAX_PATH = 4096
MAX_NAME = 1024  # a name of 255 bytes, in the worst case of UTF-8 and escapes
MAX_TEXT = 1024  # an error's text
_INT64 = 2**63
_UINT64 = 2**64


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
    """A stat as the client sent it: [mode, ino, dev, nlink, uid, gid, size, atime_ns,
    mtime_ns, ctime_ns, blksize, blocks, rdev]."""
    if not isinstance(value, list) or len(value) != 13 or any(type(v) is not int for v in value):
        raise bad_answer("stat")
    mode, ino, dev, nlink, uid, gid, size, atime, mtime, ctime, blksize, blocks, rdev = value
    if not 0 <= mode < 2**32 or not all(
        0 <= v < _UINT64 for v in (ino, dev, nlink, uid, gid, size, blksize, blocks, rdev)
    ):
        raise bad_answer("stat")
    if not all(-_INT64 <= t < _INT64 for t in (atime, mtime, ctime)):
        raise bad_answer("stat")
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


class DirEntry:
    """``os.DirEntry`` for an entry of the client's directory, with what the client
    already said about it: asking costs no exit call (``os.DirEntry`` cannot be made
    from Python, so this is a look-alike; ``isinstance(e, os.DirEntry)`` is False)."""

    __slots__ = ("_lstat", "_target", "name", "path")

    def __init__(self, name: Any, path: Any, lstat: os.stat_result, target: Any) -> None:
        self.name = name
        self.path = path
        self._lstat = lstat
        self._target = target  # for a symbolic link: its target's stat, or the OSError

    @classmethod
    def from_client(cls, value: Any, directory: str | bytes | None) -> DirEntry:
        """An entry ``[name, lstat, target]`` of the listing of ``directory`` (None: a
        listing by descriptor, whose entries' paths are their names)."""
        if not isinstance(value, list) or len(value) != 3:
            raise bad_answer("directory entry")
        name = check_name(value[0])
        lstat = stat_result(value[1])
        target: Any = None
        if stat.S_ISLNK(lstat.st_mode):
            raw = value[2]
            if isinstance(raw, list) and len(raw) == 3 and raw[0] == "error":
                target = error_from(raw[1], raw[2])
            else:
                target = stat_result(raw)
        elif value[2] is not None:
            raise bad_answer("directory entry")
        shown: str | bytes = os.fsencode(name) if isinstance(directory, bytes) else name
        if directory is None:
            path: str | bytes = shown
        else:
            path = posixpath.join(directory, shown)  # type: ignore[arg-type]
        return cls(shown, path, lstat, target)

    def _followed(self) -> os.stat_result | None:
        if not stat.S_ISLNK(self._lstat.st_mode):
            return self._lstat
        return self._target if isinstance(self._target, os.stat_result) else None

    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self._lstat.st_mode)

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        st = self._followed() if follow_symlinks else self._lstat
        return st is not None and stat.S_ISDIR(st.st_mode)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        st = self._followed() if follow_symlinks else self._lstat
        return st is not None and stat.S_ISREG(st.st_mode)

    def is_junction(self) -> bool:
        return False

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        if not follow_symlinks or not self.is_symlink():
            return self._lstat
        if isinstance(self._target, OSError):
            error = self._target
            raise OSError(error.errno, error.strerror, self.path)
        assert isinstance(self._target, os.stat_result)
        return self._target

    def inode(self) -> int:
        return int(self._lstat.st_ino)

    def __fspath__(self) -> Any:
        return self.path

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"
