"""The enclave's file system: every file call, by the rule of ``_fsrule``.

The client's files are reached with exit calls (``farside.fs.*``), one per operation;
the client confines them again on its side (``untrusted/_fileservice.py``). The
interpreter's own files are read with the real calls, read-only. Descriptors of the
client's files are *virtual*: numbers from ``VIRTUAL_FD_BASE`` up, which only this view
understands; 0, 1 and 2 are the client's standard input, output and error for
``os.read``/``os.write``; ``/dev/null`` is a sink kept here.
"""

from __future__ import annotations

import errno
import os
import posix
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._fsrule import CLIENT, HOST, Rule, Where, read_only, unavailable
from ._fsvalues import (
    Listing,
    Mount,
    answer,
    bad_answer,
    check_name,
    check_target,
    listing_batch,
    portable_flags,
    stat_result,
)

__all__ = ["VIRTUAL_FD_BASE", "EnclaveFiles"]

VIRTUAL_FD_BASE = 1 << 30
"""The first descriptor number of a client file: above any real descriptor of the proxy."""
MAX_READ = 64 * 2**20  # as the client's own cap: a longer read returns less, as read may
MAX_WRITE = 16 * 2**20  # per exit call: a longer write is partial, as write may be

_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
ExitCall = Callable[..., Any]


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
        self.rule = Rule(mount, interpreter)
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
        text = self.rule.text(path)
        if text.startswith("/"):
            base = "/"
        elif dir_fd is not None:
            opened = self._virtual(dir_fd)
            if opened is None:
                return None
            base = opened.path
        else:
            base = self.cwd
        return self.rule.where(path, text, base)

    @property
    def mount(self) -> Mount:
        return self.rule.mount

    @staticmethod
    def read_only(path: Any) -> OSError:
        return read_only(path)

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

    def _add(self, handle: Any, path: str, flags: int, *, null: bool = False) -> int:
        """A new virtual descriptor for the client's ``handle`` (``null``: /dev/null's)."""
        if null:
            handle = None
        elif type(handle) is not int or not 0 < handle < 2**63:
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
                return self._add(None, where.full, flags, null=True)
            if flags & _WRITING:
                raise self.read_only(path)
            return posix.open(where.host, flags, mode)
        access, options = portable_flags(flags, path)
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
        target = check_target(self._client("readlink", where.rel, paths=(os.fspath(path),)))
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
        batch, handle = listing_batch(self._client("scandir", where.rel, True, paths=(path,)))
        names = list(batch)
        while handle:
            batch, handle = listing_batch(self._client("scandir_next", handle))
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
        return Listing(
            self._client("scandir", where.rel, False, paths=(path,)),
            lambda handle: self._client("scandir_next", handle),
            lambda handle: self._client("scandir_close", handle),
            None if isinstance(path, int) else os.fspath(path),
        )

    def _host_path(self, path: Any) -> Any:
        """A path (or descriptor) of the trusted host's, as the real call takes it."""
        if isinstance(path, int):
            return path
        where = self.where(path)
        assert where is not None
        return where.host
