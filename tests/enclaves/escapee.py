"""An enclave that tries to reach the trusted machine around its exit calls.

Each entry point attempts one thing the sandbox must refuse and reports what
happened as a value: ``{"ok": True}`` if it worked (a sandbox hole), else the
exception's type name and errno. The tests then check, from outside, that
nothing was written, reached, started or signalled. File calls go through the
``posix`` module, around the enclave's view of the client's files (``os`` and
``open`` inside an enclave): what the sandbox must stop is code that does that.
"""

from __future__ import annotations

import ctypes
import os
import posix
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from farside.trusted import TrustedApplication, ecall, host


def _raw_argument(value: int | str | bytes | None) -> Any:
    if value is None:
        return None  # NULL
    if isinstance(value, str):
        return value.encode()  # a NUL-terminated path or name
    if isinstance(value, bytes):
        return ctypes.create_string_buffer(value, len(value))  # a buffer the kernel may write
    return ctypes.c_long(value)


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
            fd = posix.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            posix.write(fd, b"escaped")
            posix.close(fd)

        return attempt(write)

    @ecall
    def read_file(self, path: str) -> dict[str, Any]:
        def read() -> bytes:
            fd = posix.open(path, os.O_RDONLY)
            try:
                return posix.read(fd, 100)
            finally:
                posix.close(fd)

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
    def change_metadata(self, path: str, xattr: str) -> dict[str, dict[str, Any]]:
        """Change a file's metadata every way Python offers, by path and by descriptor.

        Landlock's rights are about contents and names, not metadata: only seccomp
        refuses these. The descriptor is opened read-only, which the file's directory
        being readable allows.
        """
        stat = posix.stat(path)
        ways: dict[str, Callable[[Any], Any]] = {
            "chmod": lambda f: posix.chmod(f, 0o666),
            "chown": lambda f: posix.chown(f, stat.st_uid, stat.st_gid),
            "utime": lambda f: posix.utime(f, ns=(10**9, 10**9)),
            "setxattr": lambda f: posix.setxattr(f, xattr, b"changed"),
            "setxattr-new": lambda f: posix.setxattr(f, "user.farside-new", b"added"),
            "removexattr": lambda f: posix.removexattr(f, xattr),
        }
        outcomes = {name: attempt(lambda way=way: way(path)) for name, way in ways.items()}
        fd = posix.open(path, os.O_RDONLY)
        try:
            for name, way in ways.items():
                outcomes[f"f{name}"] = attempt(lambda way=way: way(fd))
        finally:
            posix.close(fd)
        return outcomes

    @ecall
    def syscall(
        self, number: int, args: list[int | str | bytes | None], fd_of: str | None = None
    ) -> dict[str, Any]:
        """Make system call ``number`` itself, past the C library's wrappers.

        A str argument is passed as a NUL-terminated string, bytes as a buffer the
        kernel may write, None as NULL; with ``fd_of``, a read-only descriptor of that
        file is the first argument.
        """
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long

        def call() -> int:
            fd = posix.open(fd_of, os.O_RDONLY) if fd_of is not None else None
            try:
                first = [] if fd is None else [ctypes.c_long(fd)]
                result: int = libc.syscall(ctypes.c_long(number), *first, *map(_raw_argument, args))
                if result == -1:
                    code = ctypes.get_errno()
                    raise OSError(code, os.strerror(code))
                return result
            finally:
                if fd is not None:
                    posix.close(fd)

        return attempt(call)

    @ecall
    def touch_process(self, pid: int, how: str) -> dict[str, Any]:
        """Change another process's scheduling or limits (as its owner may)."""
        ways: dict[str, Callable[[], Any]] = {
            "setpriority": lambda: os.setpriority(os.PRIO_PROCESS, pid, 19),
            "sched_setaffinity": lambda: os.sched_setaffinity(pid, {0}),
            "sched_setscheduler": lambda: os.sched_setscheduler(
                pid, os.SCHED_IDLE, os.sched_param(0)
            ),
            "prlimit": lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE, (16, 16)),
        }
        return attempt(ways[how])

    @ecall
    def change_own_limit(self) -> dict[str, Any]:
        """Change its own open-files limit (the proxy's rlimits are its operator's)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # prlimit, not setrlimit, whose EPERM Python reports as a ValueError
        return attempt(lambda: resource.prlimit(0, resource.RLIMIT_NOFILE, (soft - 1, hard)))

    @ecall
    def ordinary(self) -> dict[str, Any]:
        """What enclave code does all the time keeps working under the deny list."""
        import decimal
        import mmap
        import tempfile  # noqa: F401 (an import that reads the standard library)

        with mmap.mmap(-1, 4096) as region:
            region[:5] = b"hello"
            mapped = bytes(region[:5])
        results: list[int] = []
        workers = [threading.Thread(target=results.append, args=(n,)) for n in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        os.sched_setaffinity(0, os.sched_getaffinity(0))  # its own threads' affinity
        return {
            "random": len(os.urandom(32)),
            "mapped": mapped.decode(),
            "threads": sorted(results),
            "decimal": str(decimal.Decimal(1) / 8),
            "nice": os.nice(0),  # its own priority: setpriority on itself
            "clock": time.clock_gettime(time.CLOCK_MONOTONIC) > 0,
            "limits": resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 0,
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
