"""``LocalProvision``: the proxy as a child process on this machine (the default).

Each proxy listens on a Unix socket in a fresh private (0700) directory and gets
its one-time session token on stdin, so neither appears on a command line or in
the environment. It dies with this process: the kernel's parent-death signal
(armed from a spawner thread that lives as long as the process, because Linux
ties that signal to the forking thread) and the broken session stream each
suffice. Each client process has an ephemeral platform identity: its proxies sign
their evidence with it, and this process trusts it automatically (sealed data does
not outlive the process's platform key). ``release`` reaps the proxy: it waits for
it to exit after the session closed, then terminates and finally kills it.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import secrets
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .._config import SANDBOX_MODES, SandboxMode
from ..attestation.evidence import public_key_bytes
from ..attestation.platform import platform_key_pem
from ..transport.factory import choose_transport
from ._spawn import ProxyProcess, proxy_command, reap, start_proxy
from .base import ProxyLease

__all__ = ["LocalProvision"]


class _Spawner:
    """One long-lived thread that forks every local proxy (see the module docstring)."""

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
_platform: Ed25519PrivateKey | None = None
_platform_lock = threading.Lock()


def _platform_key() -> Ed25519PrivateKey:
    """This process's ephemeral platform identity: its local proxies sign evidence with it."""
    global _platform  # noqa: PLW0603 (one per process, made on first use)
    with _platform_lock:
        if _platform is None:
            _platform = Ed25519PrivateKey.generate()
        return _platform


class LocalProvision:
    """Provision each enclave's proxy as a child process of this application.

    ``python`` is the interpreter that runs the proxy (default: this one);
    ``idle_timeout`` is how long a proxy waits for its client before exiting;
    ``max_workers`` bounds the enclave's worker threads (one per client thread, beyond
    it a call gets ``RESOURCE_EXHAUSTED``), and a worker idle for
    ``worker_idle_timeout`` seconds (its client thread may have ended) exits.
    ``transport`` is the session's wire: "grpc" (the default, or
    ``$FARSIDE_TRANSPORT``) or "stream", length-prefixed frames on the Unix
    socket, which is several times faster (docs/performance.md).
    ``sandbox`` is the proxies' own sandbox mode (``farside proxy --sandbox``): the
    least they apply whatever a load config asks; ``"off"`` only for measurements and
    debugging.
    """

    def __init__(
        self,
        *,
        python: str | None = None,
        idle_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        max_workers: int = 256,
        worker_idle_timeout: float = 30.0,
        transport: str | None = None,
        sandbox: SandboxMode = "best-effort",
    ) -> None:
        if sandbox not in SANDBOX_MODES:
            raise ValueError(f"sandbox must be one of {', '.join(SANDBOX_MODES)}, not {sandbox!r}")
        self.sandbox: SandboxMode = sandbox
        if max_workers < 1 or worker_idle_timeout <= 0 or idle_timeout <= 0:
            raise ValueError("LocalProvision's limits and timeouts must be positive")
        self.transport = choose_transport(transport)
        self.max_workers = max_workers
        self.worker_idle_timeout = worker_idle_timeout
        self.python = python or sys.executable
        self.idle_timeout = idle_timeout
        self.stop_timeout = stop_timeout

    def __repr__(self) -> str:
        return f"LocalProvision(transport={self.transport!r})"

    def provision(self, *, name: str, timeout: float) -> ProxyLease:
        """Start a proxy and return its lease once it listens (within ``timeout`` s)."""
        directory = Path(tempfile.mkdtemp(prefix="farside-"))  # mode 0700
        token = secrets.token_urlsafe(32)
        key = _platform_key()
        command = proxy_command(
            f"unix:{directory / 'proxy.sock'}",
            python=self.python,
            idle_timeout=self.idle_timeout,
            parent_pid=os.getpid(),
            transport=self.transport,
            extra=[
                "--platform-key",
                "-",
                "--max-workers",
                str(self.max_workers),
                "--worker-idle-timeout",
                str(self.worker_idle_timeout),
                "--private-dir",
                str(directory),
                "--sandbox",
                self.sandbox,
            ],
        )
        proxy = start_proxy(
            command,
            token=token,
            directory=directory,
            timeout=timeout,
            name=name,
            launch=_spawner.run,
            secret_input=platform_key_pem(key),
        )
        return ProxyLease(
            address=proxy.address,
            token=token,
            platform_keys=(public_key_bytes(key),),
            transport=self.transport,
            handle=proxy,
        )

    def release(self, lease: ProxyLease) -> None:
        """Reap the proxy: wait for it to exit, then terminate, then kill it."""
        if isinstance(lease.handle, ProxyProcess):
            reap(lease.handle, grace=self.stop_timeout)
