"""An enclave that tries to reach the trusted machine around its exit calls.

Each entry point attempts one thing the sandbox must refuse and reports what
happened as a value: ``{"ok": True}`` if it worked (a sandbox hole), else the
exception's type name and errno. The tests then check, from outside, that
nothing was written, reached, started or signalled.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from farside.trusted import TrustedApplication, ecall, host


def attempt(action: Callable[[], Any]) -> dict[str, Any]:
    try:
        result = action()
    except OSError as exc:
        return {"ok": False, "type": type(exc).__name__, "errno": exc.errno}
    return {"ok": True, "result": repr(result)}


class Escapee(TrustedApplication):
    @ecall
    def ping(self) -> str:
        return "pong"

    @ecall
    def write_file(self, path: str) -> dict[str, Any]:
        def write() -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, b"escaped")
            os.close(fd)

        return attempt(write)

    @ecall
    def read_file(self, path: str) -> dict[str, Any]:
        def read() -> bytes:
            fd = os.open(path, os.O_RDONLY)
            try:
                return os.read(fd, 100)
            finally:
                os.close(fd)

        return attempt(read)

    @ecall
    def connect(self, port: int) -> dict[str, Any]:
        return attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close())

    @ecall
    def run_program(self, marker: str) -> dict[str, Any]:
        script = f"open({marker!r}, 'w').write('started')"
        return attempt(lambda: subprocess.run([sys.executable, "-c", script], check=True))

    @ecall
    def fork(self) -> dict[str, Any]:
        def fork() -> int:
            pid = os.fork()
            if pid == 0:  # the child, had it been allowed: leave at once
                os._exit(0)
            os.waitpid(pid, 0)
            return pid

        return attempt(fork)

    @ecall
    def signal(self, pid: int, signum: int) -> dict[str, Any]:
        return attempt(lambda: os.kill(pid, signum))

    @ecall
    def signal_self(self) -> dict[str, Any]:
        return attempt(lambda: os.kill(os.getpid(), 0))

    @ecall
    def from_thread(self, path: str) -> dict[str, Any]:
        """A thread the enclave starts is confined like the enclave."""
        outcome: dict[str, Any] = {}

        def write() -> None:
            outcome.update(self.write_file(path))

        thread = threading.Thread(target=write)
        thread.start()
        thread.join()
        return outcome

    @ecall
    def burn(self, seconds: float) -> int:
        """Spend CPU time (past a CPU limit, the kernel ends the process)."""
        deadline = time.process_time() + seconds
        spins = 0
        while time.process_time() < deadline:
            spins += 1
        return spins

    @ecall
    def allocate(self, size: int) -> int:
        return len(bytearray(size))

    @ecall
    def limits(self) -> dict[str, int]:
        return {
            "open_files": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "memory": resource.getrlimit(resource.RLIMIT_AS)[0],
            "cpu_seconds": resource.getrlimit(resource.RLIMIT_CPU)[0],
            "core": resource.getrlimit(resource.RLIMIT_CORE)[0],
        }

    @ecall
    def exits(self, name: str) -> dict[str, Any]:
        """print, open() and host.call, the enclave's ways out, still work."""
        print("hello from the sandbox")
        with open(name, "w") as f:
            f.write("written through the client")
        with open(name) as f:
            back = f.read()
        return {"read_back": back, "host": host.call("double", 21)}


def build_trusted_application() -> TrustedApplication:
    return Escapee()
