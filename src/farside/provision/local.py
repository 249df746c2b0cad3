"""``LocalProvision``: the proxy as a child process on this machine (the default).

Each proxy listens on a Unix socket in a fresh private (0700) directory and gets
its one-time session token on stdin, so neither appears on a command line or in
the environment. It dies with this process: the kernel's parent-death signal
(armed from a spawner thread that lives as long as the process, because Linux
ties that signal to the forking thread) and the broken session stream each
suffice. ``release`` reaps it: it waits for the proxy to exit after the session
closed, then terminates and finally kills it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import secrets
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .._errors import EnclaveLoadError
from ._base import ProxyLease

__all__ = ["LocalProvision"]

READY_PREFIX = "farside-proxy ready "
_STDERR_TAIL = 4000


@dataclass(slots=True)
class _Child:
    process: subprocess.Popen[bytes]
    directory: Path


class _Spawner:
    """One long-lived thread that forks every proxy (see the module docstring)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._jobs = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, job: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, daemon=True, name="farside-proxy-spawner"
                )
                self._thread.start()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((job, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            job, future = self._jobs.get()
            try:
                future.set_result(job())
            except BaseException as exc:
                future.set_exception(exc)


_spawner = _Spawner()


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _STDERR_TAIL))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _read_ready_line(stream: IO[bytes], deadline: float) -> str | None:
    """Read the proxy's first stdout line, or None on EOF or when the deadline passes."""
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return None
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                return None
            line += chunk
    return line.decode("utf-8", "replace").strip()


class LocalProvision:
    """Provision each enclave's proxy as a child process of this application.

    ``python`` is the interpreter that runs the proxy (default: this one);
    ``idle_timeout`` is how long a proxy waits for its client before exiting.
    """

    def __init__(
        self, *, python: str | None = None, idle_timeout: float = 30.0, stop_timeout: float = 5.0
    ) -> None:
        self.python = python or sys.executable
        self.idle_timeout = idle_timeout
        self.stop_timeout = stop_timeout

    def __repr__(self) -> str:
        return "LocalProvision()"

    def provision(self, *, name: str, timeout: float) -> ProxyLease:
        """Start a proxy and return its lease once it listens (within ``timeout`` s)."""
        directory = Path(tempfile.mkdtemp(prefix="farside-"))  # mode 0700
        socket_path = directory / "proxy.sock"
        log_path = directory / "proxy.log"
        token = secrets.token_urlsafe(32)
        command = [
            self.python,
            "-m",
            "farside",
            "proxy",
            "--listen",
            f"unix:{socket_path}",
            "--token-stdin",
            "--idle-timeout",
            str(self.idle_timeout),
            "--parent-pid",
            str(os.getpid()),
        ]

        def spawn() -> subprocess.Popen[bytes]:
            with log_path.open("wb") as log:
                return subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    start_new_session=True,
                    close_fds=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )

        try:
            process: subprocess.Popen[bytes] = _spawner.run(spawn)
        except OSError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            raise EnclaveLoadError(
                f"cannot start the enclave proxy ({self.python}): {exc}"
            ) from exc
        child = _Child(process, directory)
        try:
            assert process.stdin is not None
            assert process.stdout is not None
            process.stdin.write(token.encode() + b"\n")
            process.stdin.close()
            line = _read_ready_line(process.stdout, time.monotonic() + timeout)
        except OSError:
            line = None
        if line is None or not line.startswith(READY_PREFIX):
            self._reap(child, grace=0.0)
            code = process.returncode
            status = "did not start" if code is None else f"exited with code {code}"
            raise EnclaveLoadError(
                f"the enclave proxy for {name!r} {status} within {timeout:g} s; "
                f"its stderr ends with:\n{_tail(log_path) or '(nothing)'}"
                if line is None
                else f"the enclave proxy said {line!r} instead of being ready"
            )
        return ProxyLease(address=line[len(READY_PREFIX) :], token=token, handle=child)

    def release(self, lease: ProxyLease) -> None:
        """Reap the proxy: wait for it to exit, then terminate, then kill it."""
        child = lease.handle
        if isinstance(child, _Child):
            self._reap(child, grace=self.stop_timeout)

    @staticmethod
    def _reap(child: _Child, *, grace: float) -> None:
        process = child.process
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(2.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        shutil.rmtree(child.directory, ignore_errors=True)
