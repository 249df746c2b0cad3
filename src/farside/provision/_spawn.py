"""Starting a proxy process and waiting until it listens: shared by every provisioner.

A proxy gets its one-time session token on stdin (never on a command line or in
the environment), prints ``farside-proxy ready ADDRESS`` once it listens, and
logs to a private file in its own 0700 directory. Reaping waits, then
terminates, then kills, so no proxy outlives its provisioner's decision.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .._errors import EnclaveLoadError
from ..metrics.report import ProxyReport
from ..transport.factory import DEFAULT_TRANSPORT

__all__ = [
    "READY_PREFIX",
    "ProxyProcess",
    "proxy_command",
    "quoted",
    "read_line",
    "read_statuses",
    "reap",
    "start_proxy",
]

READY_PREFIX = "farside-proxy ready "
_STDERR_TAIL = 4000
QUOTE_CHARS = 2000
"""The most of a proxy's stderr an error message quotes (its end)."""
QUOTE_LINES = 20
MAX_LINE = 4096
"""The longest line read from a proxy's pipe; a longer one is dropped, never buffered."""


@dataclass(slots=True)
class ProxyProcess:
    """A started proxy: its process, private directory and the address it listens on."""

    process: subprocess.Popen[bytes]
    directory: Path
    address: str = ""
    started: float = field(default_factory=time.monotonic)

    @property
    def log_path(self) -> Path:
        return self.directory / "proxy.log"


def proxy_command(
    listen: str,
    *,
    python: str | None = None,
    idle_timeout: float = 30.0,
    parent_pid: int | None = None,
    transport: str = DEFAULT_TRANSPORT,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of ``farside proxy`` (the token goes to its stdin)."""
    command = [
        python or sys.executable,
        "-m",
        "farside",
        "proxy",
        "--listen",
        listen,
        "--token-stdin",
        "--idle-timeout",
        str(idle_timeout),
    ]
    if parent_pid is not None:
        command += ["--parent-pid", str(parent_pid)]
    command += ["--transport", transport]
    return command + list(extra)


def tail(path: Path) -> str:
    """The end of a log file, for error messages."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _STDERR_TAIL))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def quoted(text: str, limit: int = QUOTE_CHARS, lines: int = QUOTE_LINES) -> str:
    """``text`` fit to quote in an error message or a log: its last ``lines`` lines and
    ``limit`` characters, every control or non-ASCII character escaped (``\\x1b``), so
    what a process wrote cannot fake log lines, drive a terminal or grow a message."""
    kept = text.split("\n")[-lines:]
    escaped = [
        "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in line)
        for line in kept
    ]
    joined = "\n".join(escaped)
    return joined if len(joined) <= limit else "..." + joined[-limit:]


def read_line(stream: IO[bytes], timeout: float) -> str | None:
    """Read one line from a pipe within ``timeout`` s, or None on EOF or when it passes.

    Byte by byte, so that later lines (a proxy's status lines) stay in the pipe.
    """
    deadline = time.monotonic() + timeout
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(line) > MAX_LINE or not selector.select(remaining):
                return None
            chunk = os.read(stream.fileno(), 1)
            if not chunk:
                return None
            line += chunk
    return line.decode("utf-8", "replace").strip()


def read_statuses(
    stream: IO[bytes],
    report: Callable[[str, int], None] | None = None,
    *,
    into: ProxyReport | None = None,
) -> None:
    """Read a proxy's status lines until its pipe closes, taking each well-formed one.

    Lines go ``into`` a ``ProxyReport`` (the grammar of ``farside.metrics.report``), and
    ``report(measurement hex or "", entry calls served)`` hears each ``status`` line. The
    proxy runs enclave code, which may write anything here: a line is at most
    ``MAX_LINE`` bytes (a longer one is dropped without being kept), only ASCII lines of
    the exact grammar count, and nothing read can raise.
    """
    target = into if into is not None else ProxyReport()
    fd = stream.fileno()
    pending = b""
    dropping = False  # inside a line that was already too long
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        pending += chunk
        while (newline := pending.find(b"\n")) >= 0:
            line, pending = pending[:newline], pending[newline + 1 :]
            if dropping:
                dropping = False
                continue
            if target.read(line) and report is not None and line.startswith(b"status "):
                report(target.measurement, target.calls_served)
        if len(pending) > MAX_LINE:
            pending, dropping = b"", True


Launcher = Callable[[Callable[[], "subprocess.Popen[bytes]"]], "subprocess.Popen[bytes]"]


def start_proxy(
    command: list[str],
    *,
    token: str,
    directory: Path,
    timeout: float,
    name: str,
    launch: Launcher | None = None,
    pass_fds: Sequence[int] = (),
    environ: Mapping[str, str] | None = None,
) -> ProxyProcess:
    """Start ``command`` in ``directory`` and wait until it listens (``EnclaveLoadError`` if not).

    The directory must exist (mode 0700); it is removed by ``reap``. ``launch``
    runs the fork (``LocalProvision`` forks from one long-lived thread); ``pass_fds``
    are descriptors the proxy inherits (its channel to the platform agent).
    ``environ`` replaces this process's environment for the proxy (enclave code
    runs there and can read it).
    """
    log_fd = os.open(directory / "proxy.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_fd,
            start_new_session=True,
            close_fds=True,
            pass_fds=tuple(pass_fds),
            cwd=directory,
            env={**(os.environ if environ is None else environ), "PYTHONUNBUFFERED": "1"},
        )

    try:
        process = launch(popen) if launch is not None else popen()
    except OSError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise EnclaveLoadError(f"cannot start the enclave proxy ({command[0]}): {exc}") from exc
    finally:
        os.close(log_fd)
    proxy = ProxyProcess(process, directory)
    try:
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(token.encode() + b"\n")
        process.stdin.close()
        line = read_line(process.stdout, timeout)
    except OSError:
        line = None
    if line is not None and line.startswith(READY_PREFIX):
        proxy.address = line[len(READY_PREFIX) :]
        return proxy
    reap(proxy, grace=0.0, remove=False)  # its log is in the directory: read it first
    if line is None:
        code = process.returncode
        status = "did not start" if code is None else f"exited with code {code}"
        message = (
            f"the enclave proxy for {name!r} {status} within {timeout:g} s; its stderr "
            f"ends with:\n{quoted(tail(proxy.log_path)) or '(nothing)'}"
        )
    else:
        message = f"the enclave proxy for {name!r} said {quoted(line, 200)} instead of being ready"
    shutil.rmtree(directory, ignore_errors=True)
    raise EnclaveLoadError(message)


def reap(proxy: ProxyProcess, *, grace: float, remove: bool = True) -> int:
    """Wait up to ``grace`` s for the proxy to exit, then SIGTERM, then SIGKILL; return its code."""
    process = proxy.process
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
    if remove:
        shutil.rmtree(proxy.directory, ignore_errors=True)
    return process.returncode
