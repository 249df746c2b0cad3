"""The client's side of exit calls: output, the file service and user handlers.

Exit calls run on the client thread whose entry call is waiting; output runs on
the session's reader thread, in arrival order, before the result it precedes.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .. import tracing
from .._errors import EnclaveError, StatusCode
from ..protocol import CallKind, CallReceived, Event, OutputReceived, Stream

__all__ = [
    "DEFAULT_MAX_OPEN_FILES",
    "MAX_PARTIAL_LINE",
    "ExitHandlers",
    "FileService",
    "OutputSink",
    "RESERVED_PREFIX",
]

RESERVED_PREFIX = "farside."
MAX_READ = 64 * 2**20
DEFAULT_MAX_OPEN_FILES = 64
"""Host files one enclave may hold open at once, unless its load config says otherwise.

Each is a descriptor of the client process: without a cap an enclave could take them
all, and the client could then open neither a file nor a socket of its own."""
MAX_PARTIAL_LINE = 64 * 2**10
"""Characters of one thread's unfinished line the client holds before writing them anyway.

Past it, a line without a newline is written in pieces of about this size, which the
lines of other threads' calls may then come between."""
_FLAGS = {
    "r": os.O_RDONLY,
    "r+": os.O_RDWR,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "x+": os.O_RDWR | os.O_CREAT | os.O_EXCL,
}


class _Unfinished:
    """The pieces of one thread's unfinished line, joined only when it is written."""

    __slots__ = ("pieces", "size")

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.size = 0


class OutputSink:
    """Writes the enclave's stdout/stderr to this process's ``sys.stdout``/``sys.stderr``.

    Output is written a whole line at a time per client thread, so the lines of
    calls running at once never mix (``print`` writes its text and its newline
    separately); a thread's unfinished line is written when its call returns
    (``flush(thread)``), the session ends (``flush()``), or it reaches
    ``MAX_PARTIAL_LINE`` characters. Each byte is handled a bounded number of times,
    so output costs time linear in its size and memory bounded per thread.
    """

    def __init__(self) -> None:
        self._decoders: dict[tuple[int, Stream], codecs.IncrementalDecoder] = {}
        self._partial: dict[tuple[int, Stream], _Unfinished] = {}
        self._lock = threading.Lock()

    def write(self, event: OutputReceived) -> None:
        key = (event.thread, event.stream)
        with self._lock:
            decoder = self._decoders.get(key)
            if decoder is None:
                decoder = self._decoders[key] = codecs.getincrementaldecoder("utf-8")("replace")
            text = decoder.decode(event.data)
            cut = text.rfind("\n") + 1
            if cut:
                line = self._partial.pop(key, None)
                head = text[:cut]
                self._emit(event.stream, "".join([*line.pieces, head]) if line else head)
            if cut < len(text):
                line = self._partial.setdefault(key, _Unfinished())
                line.pieces.append(text[cut:])
                line.size += len(text) - cut
                if line.size >= MAX_PARTIAL_LINE:  # written as it is; the line goes on
                    del self._partial[key]
                    self._emit(event.stream, "".join(line.pieces))

    def flush(self, thread: int | None = None) -> None:
        """Write the unfinished lines of ``thread`` (of every thread if None)."""
        if not self._partial:  # the common case, after every call: no lock taken
            return
        with self._lock:
            for key in [k for k in self._partial if thread is None or k[0] == thread]:
                self._emit(key[1], "".join(self._partial.pop(key).pieces))

    def forget(self, thread: int) -> None:
        """The client thread ``thread`` ended: write what it left unfinished, drop its state."""
        self.flush(thread)
        with self._lock:
            for key in [k for k in self._decoders if k[0] == thread]:
                del self._decoders[key]

    @staticmethod
    def _emit(stream: Stream, text: str) -> None:
        target: IO[str] = sys.stdout if stream is Stream.STDOUT else sys.stderr
        if target is not None:
            target.write(text)
            target.flush()


class FileService:
    """``farside.fs.*``: the enclave's files, confined to ``root`` on this machine.

    At most ``max_open_files`` are open at once; one more is an ``OSError`` (``EMFILE``)
    inside the enclave that says so.
    """

    def __init__(self, root: Path, max_open_files: int = DEFAULT_MAX_OPEN_FILES) -> None:
        self.root = root.resolve()
        self.max_open_files = max_open_files
        self._files: dict[int, int] = {}  # handle -> fd
        self._opening = 0  # opens under way, counted against the cap
        self._next = 1
        self._lock = threading.Lock()

    def _resolve(self, path: Any) -> Path:
        if not isinstance(path, str) or not path or "\x00" in path:
            raise ValueError("a file path must be a non-empty str")
        full = (self.root / path).resolve()
        if full != self.root and self.root not in full.parents:
            raise PermissionError(
                errno.EACCES, f"{path!r} is outside the directory the client allows"
            )
        return full

    def _fd(self, handle: Any) -> int:
        with self._lock:
            fd = self._files.get(handle) if isinstance(handle, int) else None
        if fd is None:
            raise ValueError(f"no open host file with handle {handle!r}")
        return fd

    def open(self, path: Any, mode: Any) -> int:
        flags = _FLAGS.get(mode) if isinstance(mode, str) else None
        if flags is None:
            raise ValueError(f"invalid file mode {mode!r}")
        full = self._resolve(path)
        with self._lock:
            if len(self._files) + self._opening >= self.max_open_files:
                raise OSError(
                    errno.EMFILE,
                    f"the enclave has {self.max_open_files} host files open, the most this "
                    "client allows: close one, or load the enclave with a higher "
                    "max_open_files (farside.load(..., max_open_files=N))",
                )
            self._opening += 1  # os.open may block (a FIFO): not under the lock
        try:
            fd = os.open(full, flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
        except BaseException:
            with self._lock:
                self._opening -= 1
            raise
        with self._lock:
            self._opening -= 1
            handle = self._next
            self._next += 1
            self._files[handle] = fd
        return handle

    def read(self, handle: Any, size: Any) -> bytes:
        if not isinstance(size, int) or not 0 <= size <= MAX_READ:
            raise ValueError(f"read size must be an int in [0, {MAX_READ}]")
        return os.read(self._fd(handle), size)

    def write(self, handle: Any, data: Any) -> int:
        if not isinstance(data, bytes):
            raise TypeError("write takes bytes")
        return os.write(self._fd(handle), data)

    def seek(self, handle: Any, offset: Any, whence: Any) -> int:
        if not isinstance(offset, int) or whence not in (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END):
            raise ValueError("invalid seek")
        return os.lseek(self._fd(handle), offset, whence)

    def close(self, handle: Any) -> None:
        fd = self._fd(handle)
        with self._lock:
            self._files.pop(handle, None)
        os.close(fd)

    def close_all(self) -> None:
        with self._lock:
            fds, self._files = list(self._files.values()), {}
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


class ExitHandlers:
    """The client's exit-call dispatcher: the endpoint's handler on the client side."""

    def __init__(
        self,
        files_root: Path,
        handlers: dict[str, Callable[..., Any]],
        *,
        max_open_files: int = DEFAULT_MAX_OPEN_FILES,
    ) -> None:
        self.files = FileService(files_root, max_open_files)
        self.output = OutputSink()
        self._builtin: dict[str, Callable[..., Any]] = {
            "farside.fs.open": self.files.open,
            "farside.fs.read": self.files.read,
            "farside.fs.write": self.files.write,
            "farside.fs.seek": self.files.seek,
            "farside.fs.close": self.files.close,
        }
        self._user: dict[str, Callable[..., Any]] = {}
        for name, fn in handlers.items():
            self.register(name, fn)

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not name or name.startswith(RESERVED_PREFIX):
            raise ValueError(
                f"exit handler names are non-empty str not starting with "
                f"{RESERVED_PREFIX!r}, got {name!r}"
            )
        if not callable(fn):
            raise TypeError(f"exit handler {name!r} must be callable")
        self._user[name] = fn

    def handle_call(self, event: CallReceived) -> Any:
        fn = self._builtin.get(event.name) or self._user.get(event.name)
        tracer = tracing.TRACER
        if tracer is not None:  # the handler's span, inside the enclave's exit call span
            method = event.name if fn is not None else "other"  # names the enclave made up
            with tracer.server_span(tracing.EXIT_SERVICE, method, event.trace):
                return self._run_handler(fn, event)
        return self._run_handler(fn, event)

    @staticmethod
    def _run_handler(fn: Callable[..., Any] | None, event: CallReceived) -> Any:
        if fn is None:
            # This crosses into the enclave (as HostCallError) and maybe back: the fix in
            # both the terms the client may be using goes in the message itself.
            raise EnclaveError(
                f"no exit handler is registered for {event.name!r}: register one on the "
                f"client, with farside.load(..., exit_handlers={{{event.name!r}: function}}) "
                f"or client.register_exit_handler({event.name!r}, function); farside run "
                f"takes --exit-handler {event.name}=MODULE:FUNCTION",
                code=StatusCode.NOT_FOUND,
            )
        return fn(*event.args, **event.kwargs)

    def handle_event(self, event: Event) -> None:
        if isinstance(event, OutputReceived):
            self.output.write(event)

    def start_thread(self, thread: int, kind: CallKind) -> bool:
        raise AssertionError("the core routes exit calls only to waiting client threads")
