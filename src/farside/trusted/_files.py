"""``host.open``: files on the client's machine, reached through exit calls.

A ``RemoteFileIO`` is a raw binary file whose every operation is an exit call
to the client's file service (``farside.fs.*``); ``open_on_host`` layers the
standard buffered and text wrappers on it exactly as the builtin ``open`` does.
The client confines paths to its allowed root; refusals arrive here as
``PermissionError`` or ``FileNotFoundError``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

__all__ = ["BUFFER_SIZE", "RemoteFileIO", "open_on_host"]

BUFFER_SIZE = 256 * 2**10
"""Buffered remote files move this many bytes per exit call."""

ExitCall = Callable[..., Any]


class RemoteFileIO(io.RawIOBase):
    """A raw file on the client's machine; each method is one exit call."""

    def __init__(self, exit_call: ExitCall, path: str, mode: str) -> None:
        super().__init__()
        self._exit = exit_call
        self.name = path
        self.mode = mode
        self._handle: int = exit_call("farside.fs.open", path, mode)
        self._readable = "r" in mode or "+" in mode
        self._writable = any(c in mode for c in "wax+")

    def readable(self) -> bool:
        return self._readable

    def writable(self) -> bool:
        return self._writable

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._exit("farside.fs.read", self._handle, len(view))
        if not isinstance(data, bytes) or len(data) > len(view):
            raise OSError("the host returned an invalid read")  # host input is untrusted
        view[: len(data)] = data
        return len(data)

    def write(self, data: Any) -> int:
        written = self._exit("farside.fs.write", self._handle, bytes(data))
        if not isinstance(written, int) or not 0 <= written <= len(data):
            raise OSError("the host returned an invalid write count")
        return written

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        position = self._exit("farside.fs.seek", self._handle, offset, whence)
        if not isinstance(position, int) or position < 0:
            raise OSError("the host returned an invalid position")
        return position

    def tell(self) -> int:
        return self.seek(0, io.SEEK_CUR)

    def close(self) -> None:
        if not self.closed:
            try:
                self._exit("farside.fs.close", self._handle)
            finally:
                super().close()


def open_on_host(
    exit_call: ExitCall,
    file: str,
    mode: str = "r",
    buffering: int = -1,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
) -> Any:
    """Open ``file`` on the client's machine, with the builtin ``open``'s signature."""
    if not isinstance(file, str):
        raise TypeError(f"host files are named by str paths, not {type(file).__name__}")
    modes = set(mode)
    if (
        len(modes) != len(mode)
        or not modes <= set("rwaxb+t")
        or len(modes & set("rwax")) != 1
        or {"b", "t"} <= modes
    ):
        raise ValueError(f"invalid mode: {mode!r}")
    binary = "b" in modes
    if binary and (encoding or errors or newline is not None):
        raise ValueError("binary mode doesn't take an encoding, errors or newline argument")
    raw_mode = "".join(c for c in mode if c in "rwax+")
    raw = RemoteFileIO(exit_call, file, raw_mode)
    if buffering == 0:
        if not binary:
            raw.close()
            raise ValueError("can't have unbuffered text I/O")
        return raw
    size = BUFFER_SIZE if buffering in (-1, 1) else buffering
    buffered: io.BufferedIOBase
    if "+" in modes:
        buffered = io.BufferedRandom(raw, size)
    elif "r" in modes:
        buffered = io.BufferedReader(raw, size)
    else:
        buffered = io.BufferedWriter(raw, size)
    if binary:
        return buffered
    text = io.TextIOWrapper(
        buffered, encoding or "utf-8", errors, newline, line_buffering=buffering == 1
    )
    text.mode = mode  # type: ignore[misc]
    return text
