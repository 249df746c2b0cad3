"""``open()`` inside the enclave: files on the client's machine, as Python's own file objects.

A ``RemoteFileIO`` is a raw binary file over a virtual descriptor of the enclave's
view (``_fsview``): each of its methods is one exit call to the client's file service.
``open_file`` is the builtin ``open`` on that view: it takes the same arguments,
decides by the view's rule where the file is, and layers the standard buffered and
text wrappers on a client's file exactly as the builtin does on a local one; a file of
the trusted host's (the interpreter's own, read-only) is opened by the builtin itself.
"""

from __future__ import annotations

import _io
import contextlib
import errno
import io
import os
from typing import Any

from ._fsrule import CLIENT, Where
from ._fsview import EnclaveFiles

__all__ = ["BUFFER_SIZE", "RemoteFileIO", "open_file"]

BUFFER_SIZE = 256 * 2**10
"""Buffered client files move this many bytes per exit call."""


class RemoteFileIO(io.RawIOBase):
    """A raw file on the client's machine; each method is one exit call."""

    def __init__(
        self,
        files: EnclaveFiles,
        fd: int,
        name: Any,
        mode: str,
        *,
        readable: bool,
        writable: bool,
        closefd: bool = True,
    ) -> None:
        super().__init__()
        self._files = files
        self._fd = fd
        self.name = name
        self.mode = mode
        self._readable = readable
        self._writable = writable
        self._closefd = closefd

    def fileno(self) -> int:
        return self._fd  # a virtual descriptor: os.fstat(f.fileno()) works on it, C does not

    def readable(self) -> bool:
        return self._readable

    def writable(self) -> bool:
        return self._writable

    def seekable(self) -> bool:
        return self._fd > 2  # 0, 1, 2: the client's standard streams

    def isatty(self) -> bool:
        return False

    def readinto(self, buffer: Any) -> int:
        if not self._readable:
            raise io.UnsupportedOperation("File not open for reading")
        view = memoryview(buffer).cast("B")
        data = self._files.read(self._fd, len(view))
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        chunks = []
        while chunk := self.read(BUFFER_SIZE):
            chunks.append(chunk)
        return b"".join(chunks)

    def write(self, data: Any) -> int:
        if not self._writable:
            raise io.UnsupportedOperation("File not open for writing")
        return self._files.write(self._fd, data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if not self.seekable():
            raise io.UnsupportedOperation("the client's standard streams are not seekable")
        return self._files.lseek(self._fd, offset, whence)

    def tell(self) -> int:
        return self.seek(0, io.SEEK_CUR)

    def truncate(self, size: int | None = None) -> int:
        if size is None:
            size = self.tell()
        self._files.ftruncate(self._fd, size)
        return size

    def close(self) -> None:
        if not self.closed:
            try:
                if self._closefd:
                    self._files.close(self._fd)
            finally:
                super().close()

    def __del__(self) -> None:
        # A file left open is closed by the garbage collector, on whichever thread it
        # runs; one that cannot make exit calls leaves the client's handle to the end
        # of the session, quietly (IOBase would report the error on the client's stderr).
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return f"<farside RemoteFileIO name={self.name!r} mode={self.mode!r}>"


def _flags(
    mode: Any, buffering: int, encoding: str | None, errors: str | None, newline: str | None
) -> tuple[int, str, bool, bool]:
    """open()'s ``mode`` as os.open flags, the raw file's mode, readable, writable (and
    the checks of the arguments that the builtin makes)."""
    if not isinstance(mode, str):
        raise TypeError(f"open() argument 'mode' must be str, not {type(mode).__name__}")
    if "b" in mode and (encoding is not None or errors is not None or newline is not None):
        raise ValueError("binary mode doesn't take an encoding, errors or newline argument")
    if buffering == 0 and "b" not in mode:
        raise ValueError("can't have unbuffered text I/O")
    modes = set(mode)
    if (
        len(modes) != len(mode)
        or not modes <= set("rwaxb+t")
        or len(modes & set("rwax")) != 1
        or {"b", "t"} <= modes
    ):
        raise ValueError(f"invalid mode: {mode!r}")
    plus = "+" in modes
    if "r" in modes:
        flags, raw = (os.O_RDWR if plus else os.O_RDONLY), "rb+" if plus else "rb"
    elif "w" in modes:
        flags, raw = (os.O_RDWR if plus else os.O_WRONLY) | os.O_CREAT | os.O_TRUNC, "wb"
    elif "a" in modes:
        flags, raw = (os.O_RDWR if plus else os.O_WRONLY) | os.O_CREAT | os.O_APPEND, "ab"
    else:
        flags, raw = (os.O_RDWR if plus else os.O_WRONLY) | os.O_CREAT | os.O_EXCL, "xb"
    if plus and not raw.endswith("+"):
        raw += "+"
    readable = "r" in modes or plus
    writable = "r" not in modes or plus
    return flags | os.O_CLOEXEC, raw, readable, writable


def open_file(
    files: EnclaveFiles,
    file: Any,
    mode: str = "r",
    buffering: int = -1,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    closefd: bool = True,
    opener: Any = None,
    *,
    client_only: bool = False,
) -> Any:
    """The builtin ``open`` inside the enclave (``client_only``: ``host.open``, which
    never opens the trusted host's files)."""
    flags, raw_mode, readable, writable = _flags(mode, buffering, encoding, errors, newline)
    real = (mode, buffering, encoding, errors, newline)
    if isinstance(file, int) and not isinstance(file, bool):
        fd, name = file, file
        if not files.is_virtual(fd) and fd not in (0, 1, 2):  # 0-2: the client's stdio
            if client_only:
                raise PermissionError("host.open opens the client's files by path only")
            return _io.open(fd, *real, closefd, opener)
    else:
        name = os.fspath(file)
        if not closefd:
            raise ValueError("Cannot use closefd=False with file name")
        if opener is not None:
            fd = opener(name, flags)
            if type(fd) is not int or fd < 0:
                raise ValueError(f"opener returned {fd!r}")
            if not files.is_virtual(fd):
                return _io.open(name, *real, True, lambda *_: fd)
        else:
            opened = _by_path(files, name, flags, writable, client_only)
            if not isinstance(opened, int):
                return _io.open(opened.host, *real)
            fd = opened
    raw = RemoteFileIO(
        files, fd, name, raw_mode, readable=readable, writable=writable, closefd=closefd
    )
    return _layer(raw, mode, buffering, encoding, errors, newline)


def _by_path(
    files: EnclaveFiles, name: Any, flags: int, writable: bool, client_only: bool
) -> int | Where:
    """The enclave's descriptor of ``name`` (a client file, or the null device); or where
    it is on the trusted host, for the builtin to open (read-only)."""
    where = files.where(name)
    assert where is not None  # no dir_fd: the rule always answers
    if where.kind == CLIENT or (where.full == os.devnull and not client_only):
        return files.open(name, flags, 0o666)
    if client_only:
        raise PermissionError(errno.EACCES, "host.open opens only the client's files", name)
    if writable:
        raise files.read_only(name)
    return where


def _layer(
    raw: RemoteFileIO,
    mode: str,
    buffering: int,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
) -> Any:
    if buffering == 0:
        return raw
    size = BUFFER_SIZE if buffering in (-1, 1) else buffering
    buffered: io.BufferedIOBase
    try:
        if "+" in mode:
            buffered = io.BufferedRandom(raw, size)
        elif "r" in mode:
            buffered = io.BufferedReader(raw, size)
        else:
            buffered = io.BufferedWriter(raw, size)
    except BaseException:
        raw.close()
        raise
    if "b" in mode:
        return buffered
    text = io.TextIOWrapper(
        buffered, encoding or "utf-8", errors, newline, line_buffering=buffering == 1
    )
    text.mode = mode  # type: ignore[misc]
    return text
