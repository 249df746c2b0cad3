"""``farside.fs.*``: the enclave's file system, served on this machine and confined to a root.

Everything the enclave asks is hostile input: paths, sizes, counts and handles are
checked before anything touches the disk. Paths arrive relative to the root (the
enclave's side resolves its working directory and normalizes them) and are walked
one component at a time from a descriptor of the root (``_confine``), so nothing can
step out between a check and its use. Only regular files and directories are opened;
devices, FIFOs and sockets are refused before they are opened, and checked again on
the descriptor.

Results travel as values: ``["ok", value]``, or ``["error", ERRNO_NAME, text]`` for an
``OSError``, so that the enclave raises the matching ``OSError`` with this machine's
error by name (errno numbers differ between systems). Anything else that goes wrong
(a malformed request) raises, and reaches the enclave as ``HostCallError``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import _filestat as filestat
from ._confine import Found, Root, checked_path, refused

__all__ = ["DEFAULT_MAX_OPEN_FILES", "MAX_READ", "SCAN_BATCH", "FileService"]

DEFAULT_MAX_OPEN_FILES = 64
"""Host files one enclave may hold open at once, unless its load config says otherwise.

Each is a descriptor of the client process: without a cap an enclave could take them
all, and the client could then open neither a file nor a socket of its own. A
directory listing that does not fit in one answer holds one too."""
MAX_READ = 64 * 2**20
"""The most bytes one ``read`` returns."""
SCAN_BATCH = 1024
"""Directory entries per answer: a directory of up to this many costs one exit call."""
_ACCESS = {"read": os.O_RDONLY, "write": os.O_WRONLY, "readwrite": os.O_RDWR}
_OPTIONS = {
    "create": os.O_CREAT,
    "exclusive": os.O_EXCL,
    "truncate": os.O_TRUNC,
    "append": os.O_APPEND,
    "nofollow": os.O_NOFOLLOW,
    "directory": os.O_DIRECTORY,
    "nonblock": os.O_NONBLOCK,
    "sync": os.O_SYNC,
    "dsync": getattr(os, "O_DSYNC", os.O_SYNC),
}
_MODIFYING = {"create", "truncate", "append"}


def _error_value(exc: OSError) -> list[Any]:
    name = errno.errorcode.get(exc.errno or 0, "EIO")
    return ["error", name, exc.strerror or str(exc)]


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool")
    return value


class _Open:
    """An open file, or a directory listing too long for one answer, behind a handle.

    ``users`` counts the calls using its descriptor right now: closing it while one
    runs only marks it, and the last user closes the descriptor. Otherwise a read racing
    a close could use the number after the kernel gave it to another file of ours.
    """

    __slots__ = ("closed", "entries", "fd", "lock", "names_only", "prefix", "users")

    def __init__(
        self,
        fd: int,
        entries: Any = None,
        prefix: str = "",
        names_only: bool = False,
    ) -> None:
        self.fd = fd
        self.entries = entries  # a listing's iterator (it holds a duplicate of fd)
        self.prefix = prefix
        self.names_only = names_only
        self.lock = threading.Lock()  # one batch of a listing at a time
        self.users = 0
        self.closed = False

    def release(self) -> None:
        close = getattr(self.entries, "close", None)  # the listing's own duplicate
        with contextlib.suppress(OSError):
            if close is not None:
                close()
            os.close(self.fd)


class FileService:
    """``farside.fs.*``: the enclave's files, confined to ``root`` on this machine.

    ``root`` None gives the enclave no files: every call is refused. ``readonly``
    refuses every call that would change something. At most ``max_open_files`` files
    (and unfinished directory listings) are open at once; one more is an ``OSError``
    (``EMFILE``) inside the enclave that says so.
    """

    def __init__(
        self,
        root: Path | None,
        max_open_files: int = DEFAULT_MAX_OPEN_FILES,
        *,
        readonly: bool = False,
    ) -> None:
        self.root = Root(root) if root is not None else None
        self.readonly = readonly
        self.max_open_files = max_open_files
        self._open: dict[int, _Open] = {}  # handle -> open file or listing
        self._opening = 0  # opens under way, counted against the cap
        self._next = 1
        self._lock = threading.Lock()

    # ------------------------------------------------------------- the rule

    def describe(self) -> dict[str, Any]:
        """What the enclave needs to know to present the files: the root as this machine
        spells it (its real path, and the path it was given when that differs)."""
        root = self.root
        return {
            "root": root.path if root is not None else None,
            "aliases": [root.given] if root is not None and root.given != root.path else [],
            "readonly": self.readonly,
        }

    def _check_writable(self) -> None:
        if self.readonly:
            raise refused("the client's files are read-only for this enclave", errno.EROFS)

    def _at(self, rel: Any, *, follow: bool) -> contextlib.AbstractContextManager[Found]:
        if self.root is None:
            raise refused("the client gave this enclave no files (files_root=None)")
        return self.root.at(rel, follow=follow)

    # ------------------------------------------------------------- handles

    def _reserve(self) -> None:
        with self._lock:
            if len(self._open) + self._opening >= self.max_open_files:
                raise OSError(
                    errno.EMFILE,
                    f"the enclave has {self.max_open_files} host files open, the most this "
                    "client allows: close one, or load the enclave with a higher "
                    "max_open_files (farside.load(..., max_open_files=N))",
                )
            self._opening += 1  # opening may take a while: not under the lock

    def _keep(self, entry: _Open | None) -> int:
        """Give ``entry`` a handle (0 for None), ending the reservation ``_reserve`` made."""
        with self._lock:
            self._opening -= 1
            if entry is None:
                return 0
            handle = self._next
            self._next += 1
            self._open[handle] = entry
            return handle

    @contextlib.contextmanager
    def _use(self, handle: Any, *, listing: bool = False) -> Iterator[_Open]:
        with self._lock:
            entry = self._open.get(handle) if type(handle) is int else None
            if entry is None or (entry.entries is not None) != listing:
                what = "directory listing" if listing else "host file"
                raise OSError(errno.EBADF, f"no open {what} with handle {handle!r}")
            entry.users += 1
        try:
            yield entry
        finally:
            with self._lock:
                entry.users -= 1
                last = entry.closed and entry.users == 0
            if last:
                entry.release()

    def _forget(self, handle: Any, *, listing: bool = False) -> None:
        with self._lock:
            entry = self._open.get(handle) if type(handle) is int else None
            if entry is None or (entry.entries is not None) != listing:
                what = "directory listing" if listing else "host file"
                raise OSError(errno.EBADF, f"no open {what} with handle {handle!r}")
            del self._open[handle]
            entry.closed = True
            now = entry.users == 0
        if now:
            entry.release()

    def close_all(self) -> None:
        """Close everything the enclave left open (the session ended)."""
        with self._lock:
            entries, self._open = list(self._open.values()), {}
            idle = []
            for entry in entries:
                entry.closed = True
                if entry.users == 0:
                    idle.append(entry)
        for entry in idle:
            entry.release()
        if self.root is not None:
            self.root.close()

    # ------------------------------------------------------------- paths

    def stat(self, rel: Any, follow: Any) -> os.stat_result:
        with self._at(rel, follow=_flag(follow, "follow")) as found:
            if found.st is None:
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            return found.st

    def access(self, rel: Any, mode: Any, follow: Any) -> bool:
        if type(mode) is not int or not 0 <= mode <= 7:
            raise ValueError("access mode must be an int in [0, 7]")
        try:
            with self._at(rel, follow=_flag(follow, "follow")) as found:
                if found.st is None:
                    return False
                if mode & os.W_OK and self.readonly:
                    return False
                return os.access(found.name, mode, dir_fd=found.dir_fd, follow_symlinks=False)
        except OSError:
            return False

    def open(self, rel: Any, access: Any, options: Any, mode: Any) -> int:
        flags = _ACCESS.get(access) if isinstance(access, str) else None
        if flags is None or not isinstance(options, list) or len(options) > len(_OPTIONS):
            raise ValueError("invalid open flags")
        for option in options:
            if option not in _OPTIONS:
                raise ValueError(f"invalid open flag {option!r}")
            flags |= _OPTIONS[option]
        if type(mode) is not int or not 0 <= mode <= 0o7777:
            raise ValueError("mode must be an int in [0, 0o7777]")
        if access != "read" or _MODIFYING & set(options):
            self._check_writable()
        self._reserve()
        entry = None
        try:
            entry = _Open(self._open_fd(rel, flags, mode & 0o666, nofollow="nofollow" in options))
        finally:
            handle = self._keep(entry)
        return handle

    def _open_fd(self, rel: str, flags: int, mode: int, *, nofollow: bool) -> int:
        with self._at(rel, follow=not nofollow) as found:
            kind = stat.S_IFMT(found.st.st_mode) if found.st is not None else None
            if kind not in (None, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):  # a link: ELOOP
                raise self._not_a_file(kind)
            if found.st is None and found.must_be_dir and flags & os.O_CREAT:
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
            # O_NONBLOCK: a FIFO swapped in since the check must not block us.
            fd = os.open(
                found.name,
                flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK,
                mode,
                dir_fd=found.dir_fd,
            )
        try:
            kind = stat.S_IFMT(os.fstat(fd).st_mode)
            if kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise self._not_a_file(kind)
            if not flags & os.O_NONBLOCK:
                os.set_blocking(fd, True)
            if flags & os.O_APPEND:
                os.lseek(fd, 0, os.SEEK_END)  # where the enclave's tell() starts, as natively
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _not_a_file(kind: int) -> OSError:
        return refused(
            f"it is a {_kind(kind)}: an enclave opens only regular files and directories"
        )

    def mkdir(self, rel: Any, mode: Any) -> None:
        if type(mode) is not int or not 0 <= mode <= 0o7777:
            raise ValueError("mode must be an int in [0, 0o7777]")
        self._check_writable()
        with self._at(rel, follow=False) as found:
            if found.st is not None:
                raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
            os.mkdir(found.name, mode & 0o777, dir_fd=found.dir_fd)

    def rmdir(self, rel: Any) -> None:
        self._check_writable()
        with self._at(rel, follow=False) as found:
            self._not_the_root(found)
            os.rmdir(found.name, dir_fd=found.dir_fd)

    def unlink(self, rel: Any) -> None:
        self._check_writable()
        with self._at(rel, follow=False) as found:
            self._not_the_root(found)
            os.unlink(found.name, dir_fd=found.dir_fd)

    def rename(self, src: Any, dst: Any, replace: Any) -> None:
        _flag(replace, "replace")  # POSIX rename replaces too; the flag keeps Python's name
        self._check_writable()
        with self._at(src, follow=False) as old, self._at(dst, follow=False) as new:
            self._not_the_root(old)
            self._not_the_root(new)
            os.rename(old.name, new.name, src_dir_fd=old.dir_fd, dst_dir_fd=new.dir_fd)

    def readlink(self, rel: Any) -> str | bytes:
        with self._at(rel, follow=False) as found:
            return filestat.name_to_wire(os.readlink(found.name, dir_fd=found.dir_fd))

    def utime(self, rel: Any, ns: Any, follow: Any) -> None:
        if ns is not None and not (
            isinstance(ns, list) and len(ns) == 2 and all(type(n) is int for n in ns)
        ):
            raise ValueError("utime takes None or [atime_ns, mtime_ns]")
        self._check_writable()
        with self._at(rel, follow=_flag(follow, "follow")) as found:
            if found.st is None:
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            if ns is None:
                os.utime(found.name, dir_fd=found.dir_fd, follow_symlinks=False)
            else:
                os.utime(found.name, ns=(ns[0], ns[1]), dir_fd=found.dir_fd, follow_symlinks=False)

    @staticmethod
    def _not_the_root(found: Found) -> None:
        if found.at_root:
            raise refused("the files root itself cannot be removed or renamed", errno.EBUSY)

    # ------------------------------------------------------------- listings

    def scandir(self, rel: Any, names_only: Any) -> list[Any]:
        """The first batch of entries, and a handle for the rest (0: there is no rest)."""
        names_only = _flag(names_only, "names_only")
        prefix = checked_path(rel).strip("/")
        self._reserve()
        listing = None
        try:
            with self._at(rel, follow=True) as found:
                if found.st is None:
                    raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
                if not stat.S_ISDIR(found.st.st_mode):
                    raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
                fd = os.open(
                    found.name,
                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=found.dir_fd,
                )
            try:
                opened = _Open(fd, os.scandir(fd), prefix, names_only)
            except BaseException:
                os.close(fd)
                raise
            try:
                batch, done = self._batch(opened)
            except BaseException:
                opened.release()
                raise
            if done:
                opened.release()
            else:
                listing = opened
        finally:
            handle = self._keep(listing)
        return [batch, handle]

    def scandir_next(self, handle: Any) -> list[Any]:
        with self._use(handle, listing=True) as listing, listing.lock:
            batch, done = self._batch(listing)
        if done:
            self.scandir_close(handle)
            handle = 0
        return [batch, handle]

    def scandir_close(self, handle: Any) -> None:
        with contextlib.suppress(OSError):  # closing twice is harmless
            self._forget(handle, listing=True)

    def _batch(self, listing: _Open) -> tuple[list[Any], bool]:
        assert listing.entries is not None
        batch: list[Any] = []
        for entry in listing.entries:
            if listing.names_only:
                batch.append(filestat.name_to_wire(entry.name))
            else:
                batch.append(self._entry(listing, entry))
            if len(batch) >= SCAN_BATCH:
                return batch, False
        return batch, True

    def _entry(self, listing: _Open, entry: os.DirEntry[str]) -> list[Any]:
        """[name, its lstat, and for a symbolic link what it leads to: a stat or an error]."""
        lstat = entry.stat(follow_symlinks=False)
        target: Any = None
        if stat.S_ISLNK(lstat.st_mode):
            child = f"{listing.prefix}/{entry.name}" if listing.prefix else entry.name
            try:
                target = filestat.pack(self.stat(child, True))
            except OSError as exc:
                target = _error_value(exc)
        return [filestat.name_to_wire(entry.name), filestat.pack(lstat), target]

    # ------------------------------------------------------------- open files

    def read(self, handle: Any, size: Any) -> bytes:
        if type(size) is not int or not 0 <= size <= MAX_READ:
            raise ValueError(f"read size must be an int in [0, {MAX_READ}]")
        with self._use(handle) as file:
            return os.read(file.fd, size)

    def write(self, handle: Any, data: Any) -> int:
        if not isinstance(data, bytes):
            raise TypeError("write takes bytes")
        with self._use(handle) as file:
            return os.write(file.fd, data)

    def seek(self, handle: Any, offset: Any, whence: Any) -> int:
        if type(offset) is not int or whence not in (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END):
            raise ValueError("invalid seek")
        with self._use(handle) as file:
            return os.lseek(file.fd, offset, whence)

    def fstat(self, handle: Any) -> os.stat_result:
        with self._use(handle) as file:
            return os.fstat(file.fd)

    def truncate(self, handle: Any, length: Any) -> None:
        if type(length) is not int or length < 0:
            raise ValueError("length must be a non-negative int")
        with self._use(handle) as file:
            os.ftruncate(file.fd, length)

    def fsync(self, handle: Any) -> None:
        with self._use(handle) as file:
            os.fsync(file.fd)

    def close(self, handle: Any) -> None:
        self._forget(handle)

    # ------------------------------------------------------------- serving

    def handlers(self) -> dict[str, Callable[..., Any]]:
        """The ``farside.fs.*`` exit handlers, each answering ``["ok", value]`` or an error."""
        ops: dict[str, Callable[..., Any]] = {
            "stat": lambda *a: filestat.pack(self.stat(*a)),
            "fstat": lambda *a: filestat.pack(self.fstat(*a)),
            "access": self.access,
            "open": self.open,
            "read": self.read,
            "write": self.write,
            "seek": self.seek,
            "truncate": self.truncate,
            "fsync": self.fsync,
            "close": self.close,
            "mkdir": self.mkdir,
            "rmdir": self.rmdir,
            "unlink": self.unlink,
            "rename": self.rename,
            "readlink": self.readlink,
            "utime": self.utime,
            "scandir": self.scandir,
            "scandir_next": self.scandir_next,
            "scandir_close": self.scandir_close,
        }
        return {f"farside.fs.{name}": _answering(op) for name, op in ops.items()}


def _answering(op: Callable[..., Any]) -> Callable[..., Any]:
    def handler(*args: Any) -> list[Any]:
        try:
            return ["ok", op(*args)]
        except OSError as exc:
            return _error_value(exc)

    return handler


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISLNK, "symbolic link"),
    ):
        if test(mode):
            return name
    return "special file"
