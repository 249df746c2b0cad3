"""The client's side of exit calls: output, the file service, stdin and user handlers.

Exit calls run on the client thread whose entry call is waiting; output runs on
the session's reader thread, in arrival order, before the result it precedes. The
file service (``farside.fs.*``) lives in ``_fileservice.py``.
"""

from __future__ import annotations

import codecs
import errno
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .. import tracing
from .._errors import EnclaveError, StatusCode
from ..protocol import CallKind, CallReceived, Event, OutputReceived, Stream
from ._fileservice import DEFAULT_MAX_OPEN_FILES, FileService

__all__ = [
    "DEFAULT_MAX_OPEN_FILES",
    "MAX_PARTIAL_LINE",
    "MAX_STDIN_READ",
    "ExitHandlers",
    "FileService",
    "OutputSink",
    "RESERVED_PREFIX",
]

RESERVED_PREFIX = "farside."
MAX_STDIN_READ = 2**20
"""The most bytes of standard input one exit call returns."""
MAX_PARTIAL_LINE = 64 * 2**10
"""Characters of one thread's unfinished line the client holds before writing them anyway.

Past it, a line without a newline is written in pieces of about this size, which the
lines of other threads' calls may then come between."""


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


class ExitHandlers:
    """The client's exit-call dispatcher: the endpoint's handler on the client side.

    ``files_root`` None gives the enclave no files; ``files_readonly`` lets it only read
    them; ``stdin`` lets it read this process's standard input (``farside.io.read_stdin``).
    """

    def __init__(
        self,
        files_root: Path | None,
        handlers: dict[str, Callable[..., Any]],
        *,
        max_open_files: int = DEFAULT_MAX_OPEN_FILES,
        files_readonly: bool = False,
        stdin: bool = False,
    ) -> None:
        self.files = FileService(files_root, max_open_files, readonly=files_readonly)
        self.output = OutputSink()
        self.stdin = stdin
        self._builtin: dict[str, Callable[..., Any]] = {
            "farside.client.describe": self.describe,
            "farside.io.read_stdin": self.read_stdin,
            **self.files.handlers(),
        }
        self._user: dict[str, Callable[..., Any]] = {}
        for name, fn in handlers.items():
            self.register(name, fn)

    def describe(self) -> dict[str, Any]:
        """What the enclave's runtime asks once, at ``initialize``: how to present the
        client's files, and whether it may read standard input."""
        return {**self.files.describe(), "stdin": self.stdin}

    def read_stdin(self, size: Any) -> bytes:
        """Up to ``size`` bytes of this process's standard input (b"" at its end)."""
        if type(size) is not int or not 0 <= size <= MAX_STDIN_READ:
            raise ValueError(f"read size must be an int in [0, {MAX_STDIN_READ}]")
        if not self.stdin:
            raise PermissionError(
                errno.EACCES,
                "the client did not give this enclave its standard input (load it with "
                "farside.load(..., stdin=True), or farside run --stdin)",
            )
        stream = sys.stdin
        if stream is None or size == 0:
            return b""
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            return bytes(buffer.read1(size))
        return str(stream.read(max(1, size // 4))).encode()  # UTF-8: at most 4 bytes a char

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not name or name.startswith(RESERVED_PREFIX):
            raise ValueError(
                f"exit handler names are non-empty str not starting with "
                f"{RESERVED_PREFIX!r}, got {name!r}"
            )
        if not callable(fn):
            raise TypeError(f"exit handler {name!r} must be callable")
        self._user[name] = fn

    def lookup(self, name: str) -> tuple[Callable[..., Any] | None, bool]:
        """The function serving exit call ``name`` (None if none), and whether it is a
        built-in service (files, stdin: they may block, so an event loop runs them in a
        thread)."""
        fn = self._builtin.get(name)
        if fn is not None:
            return fn, True
        return self._user.get(name), False

    def handle_call(self, event: CallReceived) -> Any:
        fn = self._builtin.get(event.name) or self._user.get(event.name)
        tracer = tracing.TRACER
        if tracer is not None:  # the handler's span, inside the enclave's exit call span
            method = event.name if fn is not None else "other"  # names the enclave made up
            with tracer.server_span(tracing.EXIT_SERVICE, method, event.trace):
                return self._run_handler(fn, event)
        return self._run_handler(fn, event)

    @staticmethod
    def missing(name: str) -> EnclaveError:
        """The error for an exit call no handler serves."""
        # This crosses into the enclave (as HostCallError) and maybe back: the fix in
        # both the terms the client may be using goes in the message itself.
        return EnclaveError(
            f"no exit handler is registered for {name!r}: register one on the "
            f"client, with farside.load(..., exit_handlers={{{name!r}: function}}) "
            f"or client.register_exit_handler({name!r}, function); farside run "
            f"takes --exit-handler {name}=MODULE:FUNCTION",
            code=StatusCode.NOT_FOUND,
        )

    @classmethod
    def _run_handler(cls, fn: Callable[..., Any] | None, event: CallReceived) -> Any:
        if fn is None:
            raise cls.missing(event.name)
        return fn(*event.args, **event.kwargs)

    def handle_event(self, event: Event) -> None:
        if isinstance(event, OutputReceived):
            self.output.write(event)

    def start_thread(self, thread: int, kind: CallKind) -> bool:
        raise AssertionError("the core routes exit calls only to waiting client threads")
