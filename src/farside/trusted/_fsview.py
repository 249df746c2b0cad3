"""The enclave's file system: the client's files, and the interpreter's own, read-only.

One rule decides where a path leads (docs/architecture.md, "What an enclave sees"):

1. A relative path is the client's: it is relative to the enclave's working
   directory, which starts at the client's ``files_root`` and stays below it.
2. An absolute path at or below the files root, as the client spells it (its real
   path, or the path it was given when that differs), is the client's.
3. Any other absolute path at or below the interpreter's own files (its prefixes,
   the absolute entries of ``sys.path`` but the proxy's working directory, farside's
   install, the time zone database, ``/dev/urandom``) is the trusted host's,
   read-only: a change is ``OSError(EROFS)``; ``/dev/null`` is a sink kept here.
4. Anything else is refused with ``PermissionError``, asking nobody.

Paths are made absolute against the working directory and normalized the way
``os.path.normpath`` does before the rule applies (``a/link/..`` is ``a``); a path
ending in ``/`` keeps it, so it still names a directory. The client's files are
reached with exit calls (``farside.fs.*``), one per operation; the client confines
them again on its side. Descriptors of the client's files are *virtual*: numbers
from ``VIRTUAL_FD_BASE`` up, which only this view understands; 0, 1 and 2 are the
client's standard input, output and error for ``os.read``/``os.write``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posix
import posixpath
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .. import _filestat as filestat
from ._fsvalues import MAX_PATH, DirEntry, Mount, answer, bad_answer, check_name, stat_result

__all__ = ["CLIENT", "HOST", "VIRTUAL_FD_BASE", "EnclaveFiles", "Where", "interpreter_paths"]

VIRTUAL_FD_BASE = 1 << 30
"""The first descriptor number of a client file: above any real descriptor of the proxy."""
MAX_READ = 64 * 2**20  # as the client's own cap: a longer read returns less, as read may
MAX_WRITE = 16 * 2**20  # per exit call: a longer write is partial, as write may be
CLIENT, HOST = "client", "host"

_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
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

ExitCall = Callable[..., Any]


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


@dataclass(slots=True)
class _Virtual:
    handle: int | None  # the client's handle; None: the null device, kept here
    path: str  # the absolute path the enclave opened it by
    flags: int


class EnclaveFiles:
    """The enclave's view: the rule above, and every file operation under it.

    ``call(name, *args)`` makes an exit call (``farside.fs.*``); ``read_stdin(n)`` and
    ``write_output(fd, data)`` serve descriptors 0, 1 and 2.
    """

    def __init__(
        self,
        call: ExitCall,
        mount: Mount,
        interpreter: tuple[str, ...],
        *,
        read_stdin: Callable[[int], bytes],
        write_output: Callable[[int, bytes], None],
    ) -> None:
        self._call = call
        self.mount = mount
        self.interpreter = interpreter
        self.read_stdin = read_stdin
        self.write_output = write_output
        self.cwd = mount.root if mount.root is not None else "/"
        self._fds: dict[int, _Virtual] = {}
        self._next_fd = VIRTUAL_FD_BASE
        self._lock = threading.Lock()

    # ------------------------------------------------------------- the rule

    def where(self, path: Any, dir_fd: int | None = None) -> Where | None:
        """Apply the rule to ``path`` (relative to ``dir_fd`` if given); None: ``dir_fd``
        is a real descriptor of the trusted host, so the call is the real one."""
        text = os.fsdecode(os.fspath(path))
        if "\x00" in text:
            raise ValueError("embedded null byte")
        if not text:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if len(text) > MAX_PATH:
            raise OSError(errno.ENAMETOOLONG, "File name too long", path)
        if text.startswith("/"):
            base = "/"
        elif dir_fd is not None:
            opened = self._virtual(dir_fd)
            if opened is None:
                return None
            base = opened.path
        elif self.mount.root is None:
            raise self._no_files(path)
        else:
            base = self.cwd
        full = posixpath.normpath(posixpath.join(base, text))
        if full.startswith("//"):
            full = "/" + full.lstrip("/")
        trailing = "/" if text.endswith("/") and full != "/" else ""
        rel = self._below_root(full)
        if rel is not None:
            return Where(CLIENT, full, filestat.name_to_wire(rel + trailing if rel else ""))
        if any(_under(full, base) for base in self.interpreter):
            return Where(HOST, full, host=path if text.startswith("/") else full + trailing)
        if self.mount.root is None:
            raise self._no_files(path)
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
    def _no_files(path: Any) -> OSError:
        return PermissionError(
            errno.EACCES, "the client gave this enclave no files (files_root=None)", path
        )

    @staticmethod
    def read_only(path: Any) -> OSError:
        return OSError(
            errno.EROFS, "the trusted host's files are read-only inside an enclave", path
        )

    def _client(self, name: str, *args: Any, paths: tuple[Any, ...] = ()) -> Any:
        return answer(self._call(f"farside.fs.{name}", *args), *paths)

    # ------------------------------------------------------------- descriptors

    def _virtual(self, fd: Any) -> _Virtual | None:
        if type(fd) is not int or fd < VIRTUAL_FD_BASE:
            return None
        with self._lock:
            opened = self._fds.get(fd)
        if opened is None:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return opened

    def is_virtual(self, fd: Any) -> bool:
        """True if ``fd`` is a descriptor of a client file (or one that was)."""
        return type(fd) is int and fd >= VIRTUAL_FD_BASE

    def _add(self, handle: Any, path: str, flags: int) -> int:
        if handle is not None and (type(handle) is not int or not 0 < handle < 2**63):
            raise bad_answer("file handle")
        with self._lock:
            fd = self._next_fd
            self._next_fd += 1
            self._fds[fd] = _Virtual(handle, path, flags)
        return fd

    def open(self, path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        where = self.where(path, dir_fd)
        if where is None:
            return posix.open(path, flags, mode, dir_fd=dir_fd)
        if where.kind == HOST:
            if where.full == os.devnull:  # a sink everyone writes to, kept here
                return self._add(None, where.full, flags)
            if flags & _WRITING:
                raise self.read_only(path)
            return posix.open(where.host, flags, mode)
        access, options = _portable_flags(flags, path)
        handle = self._client(
            "open", where.rel, access, options, mode & 0o7777, paths=(os.fspath(path),)
        )
        return self._add(handle, where.full, flags)

    def read(self, fd: int, size: int) -> bytes:
        if fd == 0:
            return self.read_stdin(size)
        opened = self._virtual(fd)
        if opened is None:
            return posix.read(fd, size)
        if size < 0:
            raise ValueError("negative count")  # os.read's own message
        if opened.handle is None:
            return b""
        size = min(size, MAX_READ)
        data = self._client("read", opened.handle, size)
        if not isinstance(data, bytes) or len(data) > size:
            raise bad_answer("read")
        return data

    def write(self, fd: int, data: Any) -> int:
        if fd in (1, 2):
            chunk = bytes(data)
            self.write_output(fd, chunk)
            return len(chunk)
        opened = self._virtual(fd)
        if opened is None:
            return posix.write(fd, data)
        if opened.handle is None:
            return memoryview(data).nbytes
        chunk = bytes(memoryview(data).cast("B")[:MAX_WRITE])
        written = self._client("write", opened.handle, chunk)
        if type(written) is not int or not 0 <= written <= len(chunk):
            raise bad_answer("write count")
        return written

    def lseek(self, fd: int, position: int, whence: int) -> int:
        opened = self._virtual(fd)
        if opened is None:
            return posix.lseek(fd, position, whence)
        if whence not in (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END):
            raise OSError(errno.EINVAL, "Invalid argument")
        if opened.handle is None:
            return 0
        offset = self._client("seek", opened.handle, position, whence)
        if type(offset) is not int or not 0 <= offset < 2**63:
            raise bad_answer("position")
        return offset

    def fstat(self, fd: int) -> os.stat_result:
        opened = self._virtual(fd)
        if opened is None:
            return posix.fstat(fd)
        if opened.handle is None:
            return posix.stat(os.devnull)
        return stat_result(self._client("fstat", opened.handle))

    def ftruncate(self, fd: int, length: int) -> None:
        opened = self._virtual(fd)
        if opened is None:
            posix.ftruncate(fd, length)
            return
        if length < 0:
            raise OSError(errno.EINVAL, "Invalid argument")
        if opened.handle is not None:
            self._client("truncate", opened.handle, length)

    def fsync(self, fd: Any) -> None:
        if not isinstance(fd, int):
            fd = fd.fileno()
        opened = self._virtual(fd)
        if opened is None:
            posix.fsync(fd)
            return
        if opened.handle is not None:
            self._client("fsync", opened.handle)

    def close(self, fd: int) -> None:
        if fd in (0, 1, 2):
            return  # the client's standard streams: nothing of the proxy's to close
        opened = self._virtual(fd)
        if opened is None:
            posix.close(fd)
            return
        with self._lock:
            self._fds.pop(fd, None)
        if opened.handle is not None:
            self._client("close", opened.handle)

    def isatty(self, fd: int) -> bool:
        if self._virtual(fd) is not None or fd in (0, 1, 2):
            return False
        return posix.isatty(fd)

    # ------------------------------------------------------------- paths

    def stat(
        self, path: Any, *, dir_fd: int | None = None, follow_symlinks: bool = True
    ) -> os.stat_result:
        if isinstance(path, int):
            return self.fstat(path)
        where = self.where(path, dir_fd)
        if where is None:
            return posix.stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        if where.kind == HOST:
            return posix.stat(where.host, follow_symlinks=follow_symlinks)
        value = self._client("stat", where.rel, follow_symlinks, paths=(os.fspath(path),))
        return stat_result(value)

    def lstat(self, path: Any, *, dir_fd: int | None = None) -> os.stat_result:
        return self.stat(path, dir_fd=dir_fd, follow_symlinks=False)

    def access(
        self,
        path: Any,
        mode: int,
        *,
        dir_fd: int | None = None,
        effective_ids: bool = False,
        follow_symlinks: bool = True,
    ) -> bool:
        if isinstance(path, int):
            self.fstat(path)
            return True
        where = self.where(path, dir_fd)
        if where is None:
            return posix.access(
                path, mode, dir_fd=dir_fd, effective_ids=effective_ids,
                follow_symlinks=follow_symlinks,
            )  # fmt: skip
        if where.kind == HOST:
            if mode & os.W_OK:
                return False
            return posix.access(where.host, mode, follow_symlinks=follow_symlinks)
        allowed = self._client("access", where.rel, mode & 7, follow_symlinks)
        if not isinstance(allowed, bool):
            raise bad_answer("access answer")
        return allowed

    def mkdir(self, path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        where = self._changing(path, dir_fd)
        if where is None:
            posix.mkdir(path, mode, dir_fd=dir_fd)
            return
        self._client("mkdir", where.rel, mode & 0o7777, paths=(os.fspath(path),))

    def rmdir(self, path: Any, *, dir_fd: int | None = None) -> None:
        where = self._changing(path, dir_fd)
        if where is None:
            posix.rmdir(path, dir_fd=dir_fd)
            return
        self._client("rmdir", where.rel, paths=(os.fspath(path),))

    def unlink(self, path: Any, *, dir_fd: int | None = None) -> None:
        where = self._changing(path, dir_fd)
        if where is None:
            posix.unlink(path, dir_fd=dir_fd)
            return
        self._client("unlink", where.rel, paths=(os.fspath(path),))

    def rename(
        self,
        src: Any,
        dst: Any,
        *,
        src_dir_fd: int | None = None,
        dst_dir_fd: int | None = None,
        replace: bool = False,
    ) -> None:
        old = self._changing(src, src_dir_fd, also=dst)
        new = self._changing(dst, dst_dir_fd, also=src)
        if old is None or new is None:
            real = posix.replace if replace else posix.rename
            real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            return
        names = (os.fspath(src), os.fspath(dst))
        self._client("rename", old.rel, new.rel, replace, paths=names)

    def replace(
        self, src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None
    ) -> None:
        self.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, replace=True)

    def _changing(self, path: Any, dir_fd: int | None, also: Any = None) -> Where | None:
        where = self.where(path, dir_fd)
        if where is not None and where.kind == HOST:
            raise self.read_only(path) if also is None else OSError(
                errno.EROFS, "the trusted host's files are read-only inside an enclave",
                path, None, also,
            )  # fmt: skip
        return where

    def readlink(self, path: Any, *, dir_fd: int | None = None) -> Any:
        where = self.where(path, dir_fd)
        if where is None:
            return posix.readlink(path, dir_fd=dir_fd)
        if where.kind == HOST:
            return posix.readlink(where.host)
        target = self._client("readlink", where.rel, paths=(os.fspath(path),))
        if isinstance(target, bytes) and len(target) <= MAX_PATH:
            target = filestat.name_from_wire(target)
        if not isinstance(target, str) or not target or len(target) > MAX_PATH or "\x00" in target:
            raise bad_answer("link target")
        return os.fsencode(target) if isinstance(os.fspath(path), bytes) else target

    def utime(
        self,
        path: Any,
        times: tuple[float, float] | None = None,
        *,
        ns: tuple[int, int] | None = None,
        dir_fd: int | None = None,
        follow_symlinks: bool = True,
    ) -> None:
        if times is not None and ns is not None:
            raise ValueError("utime: you may specify either 'times' or 'ns' but not both")
        if isinstance(path, int):
            if self._virtual(path) is not None:
                raise unavailable("os.utime of a descriptor")
            posix.utime(path, times, ns=ns) if ns is not None else posix.utime(path, times)
            return
        where = self._changing(path, dir_fd)
        if where is None:
            raise unavailable("os.utime with a descriptor of the trusted host")
        if times is not None:
            pair: list[int] | None = [int(t // 1) * 10**9 + int(t % 1 * 10**9) for t in times]
        else:
            pair = list(ns) if ns is not None else None
        self._client("utime", where.rel, pair, follow_symlinks, paths=(os.fspath(path),))

    def truncate(self, path: Any, length: int) -> None:
        if isinstance(path, int):
            self.ftruncate(path, length)
            return
        fd = self.open(path, os.O_WRONLY)
        try:
            self.ftruncate(fd, length)
        finally:
            self.close(fd)

    # ------------------------------------------------------------- directories

    def getcwd(self) -> str:
        return self.cwd

    def getcwdb(self) -> bytes:
        return os.fsencode(self.cwd)

    def chdir(self, path: Any) -> None:
        if isinstance(path, int):
            self.fchdir(path)
            return
        where = self.where(path)
        if where is None or where.kind == HOST:
            raise PermissionError(
                errno.EACCES, "the enclave's working directory stays in the client's files", path
            )
        st = stat_result(self._client("stat", where.rel, True, paths=(os.fspath(path),)))
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        self.cwd = where.full

    def fchdir(self, fd: Any) -> None:
        if not isinstance(fd, int):
            fd = fd.fileno()
        opened = self._virtual(fd)
        if opened is None:
            raise PermissionError(
                errno.EACCES, "the enclave's working directory stays in the client's files"
            )
        self.chdir(opened.path)

    def _directory(self, path: Any) -> Where | None:
        """Where a listing of ``path`` (a path or a descriptor) leads; None: a real one."""
        if isinstance(path, int):
            opened = self._virtual(path)
            return self.where(opened.path) if opened is not None else None
        where = self.where(path)
        return where if where is not None and where.kind == CLIENT else None

    def listdir(self, path: Any = None) -> list[Any]:
        if path is None:
            path = "."
        where = self._directory(path)
        if where is None:
            return posix.listdir(self._host_path(path))
        batch, handle = _batch(self._client("scandir", where.rel, True, paths=(path,)))
        names = list(batch)
        while handle:
            batch, handle = _batch(self._client("scandir_next", handle))
            names += batch
        checked = [check_name(name) for name in names]
        if not isinstance(path, int) and isinstance(os.fspath(path), bytes):
            return [os.fsencode(name) for name in checked]
        return checked

    def scandir(self, path: Any = None) -> Any:
        if path is None:
            path = "."
        where = self._directory(path)
        if where is None:
            return posix.scandir(self._host_path(path))
        return Listing(self, where.rel, path, None if isinstance(path, int) else os.fspath(path))

    def _host_path(self, path: Any) -> Any:
        """A path (or descriptor) of the trusted host's, as the real call takes it."""
        if isinstance(path, int):
            return path
        where = self.where(path)
        assert where is not None
        return where.host

    def _scan(self, rel: str | bytes, path: Any) -> tuple[list[Any], int]:
        return _batch(self._client("scandir", rel, False, paths=(path,)))

    def _scan_next(self, handle: int) -> tuple[list[Any], int]:
        return _batch(self._client("scandir_next", handle))

    def _scan_close(self, handle: int) -> None:
        self._client("scandir_close", handle)


class Listing:
    """``os.scandir`` of a client directory: an iterator of ``DirEntry`` and a context
    manager. Entries come in batches (``SCAN_BATCH`` per exit call, on the client)."""

    def __init__(self, files: EnclaveFiles, rel: str | bytes, path: Any, given: str | bytes | None):
        self._files = files
        self._given = given
        batch, self._handle = files._scan(rel, path)
        self._batch: Iterator[Any] = iter(batch)

    def __iter__(self) -> Listing:
        return self

    def __next__(self) -> DirEntry:
        while True:
            for value in self._batch:
                return DirEntry.from_client(value, self._given)
            if not self._handle:
                raise StopIteration
            batch, self._handle = self._files._scan_next(self._handle)
            self._batch = iter(batch)

    def close(self) -> None:
        handle, self._handle = self._handle, 0
        self._batch = iter(())
        if handle:
            self._files._scan_close(handle)

    def __enter__(self) -> Listing:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if self._handle:
            with contextlib.suppress(Exception):  # a finalizer on a thread that cannot call out
                self.close()


def _batch(value: Any) -> tuple[list[Any], int]:
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


def unavailable(what: str) -> OSError:
    """The error of a call the enclave's file system does not have."""
    return OSError(
        errno.ENOSYS,
        f"{what} is not available inside an enclave (its files are the client's, "
        "reached through the calls docs/architecture.md lists)",
    )


def _portable_flags(flags: int, path: Any) -> tuple[str, list[str]]:
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
