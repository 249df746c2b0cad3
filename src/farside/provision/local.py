"""``LocalProvision``: the proxy as a child process on this machine (the default).

Each proxy listens on a Unix socket in a fresh private (0700) directory and gets
its one-time session token on stdin, so neither appears on a command line or in
the environment. It dies with this process: the kernel's parent-death signal
(armed from a spawner thread that lives as long as the process, because Linux
ties that signal to the forking thread) and the broken session stream each
suffice. ``release`` reaps the proxy: it waits for it to exit after the session
closed, then terminates and finally kills it.

The platform key is held by a platform agent this process starts on first use
(``farside.attestation.agent``), never by this process or a proxy: each proxy gets a
channel to the agent for its evidence and sealing keys. By default the agent makes an
ephemeral key, which this process trusts automatically (sealed data does not outlive
the agent); ``platform_dir`` makes it sign with a platform key on disk instead.
"""

from __future__ import annotations

import atexit
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

from .._config import SANDBOX_MODES, SandboxMode
from ..transport.factory import choose_transport
from ._agent import PlatformAgent
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
_agents: dict[Path | None, PlatformAgent] = {}
_agents_lock = threading.Lock()


@atexit.register
def _close_agents() -> None:
    """Stop this process's agents (they would exit with it anyway) and reap them."""
    with _agents_lock:
        agents = list(_agents.values())
        _agents.clear()
    for agent in agents:
        agent.close()


def _agent(platform_dir: Path | None, python: str) -> PlatformAgent:
    """This process's platform agent for ``platform_dir`` (None: ephemeral), started once
    (again if it died)."""
    with _agents_lock:
        agent = _agents.get(platform_dir)
        if agent is None or not agent.alive:
            if agent is not None:  # it died (killed, crashed): reap it, close its channel
                agent.close()
            agent = PlatformAgent.start(
                platform_dir=platform_dir, python=python, launch=_spawner.run
            )
            _agents[platform_dir] = agent
        return agent


class LocalProvision:
    """Provision each enclave's proxy as a child process of this application.

    ``python`` is the interpreter that runs the proxy (default: this one);
    ``idle_timeout`` is how long a proxy waits for its client before exiting;
    ``max_workers`` bounds the enclave's worker threads (one per client thread, beyond
    it a call gets ``RESOURCE_EXHAUSTED``), and a worker idle for
    ``worker_idle_timeout`` seconds (its client thread may have ended) exits.
    ``transport`` is the session's wire: "stream" (the default, or
    ``$FARSIDE_TRANSPORT``), length-prefixed frames on the Unix socket, or "grpc",
    a gRPC stream, several times slower (docs/performance.md).
    ``sandbox`` is the proxies' own sandbox mode (``farside proxy --sandbox``): the
    least they apply whatever a load config asks; ``"off"`` only for measurements and
    debugging. ``platform_dir`` (``farside platform init``) makes the platform agent sign
    with that key, so sealed data outlives this process; by default it makes an
    ephemeral key of its own.
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
        platform_dir: str | os.PathLike[str] | None = None,
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
        self.platform_dir = Path(platform_dir).resolve() if platform_dir is not None else None

    def __repr__(self) -> str:
        return f"LocalProvision(transport={self.transport!r})"

    def provision(self, *, name: str, timeout: float) -> ProxyLease:
        """Start a proxy and return its lease once it listens (within ``timeout`` s)."""
        agent = _agent(self.platform_dir, self.python)
        directory = Path(tempfile.mkdtemp(prefix="farside-"))  # mode 0700
        token = secrets.token_urlsafe(32)
        channel = agent.channel()
        command = proxy_command(
            f"unix:{directory / 'proxy.sock'}",
            python=self.python,
            idle_timeout=self.idle_timeout,
            parent_pid=os.getpid(),
            transport=self.transport,
            extra=[
                "--agent-fd",
                str(channel.fileno()),
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
        with channel:  # the proxy has its own copy once started
            proxy = start_proxy(
                command,
                token=token,
                directory=directory,
                timeout=timeout,
                name=name,
                launch=_spawner.run,
                pass_fds=(channel.fileno(),),
            )
        return ProxyLease(
            address=proxy.address,
            token=token,
            platform_keys=(agent.public_key,),
            transport=self.transport,
            handle=proxy,
        )

    def release(self, lease: ProxyLease) -> None:
        """Reap the proxy: wait for it to exit, then terminate, then kill it."""
        if isinstance(lease.handle, ProxyProcess):
            reap(lease.handle, grace=self.stop_timeout)
