"""The provision server's backend for one machine: each proxy a child process here.

``SingleHostBackend`` starts a ``farside proxy`` listening with TLS on the server's
advertised address (a port of ``--proxy-ports``, or any free one), in a private 0700
directory under the server's work directory, and reads its status lines until it
exits. Proxies run in their own sessions and do not die with the server: a crash or
restart of the server leaves running enclaves serving.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import EnclaveLoadError, StatusCode
from .._proto.v1 import provision_pb2 as pb
from ..metrics.report import ProxyReport
from ._agent import PlatformAgent
from ._spawn import ProxyProcess, proxy_command, read_statuses, reap, start_proxy
from .backend import Placement, ProxySpec, RefusedError, Started

__all__ = ["SingleHostBackend"]

log = logging.getLogger("farside.provision")

RELEASE_GRACE = 1.0
"""A released proxy gets this long to end by itself (its session closed) before SIGTERM."""


@dataclass(slots=True)
class _Proxy:
    process: ProxyProcess
    report: ProxyReport = field(default_factory=ProxyReport)
    reaped: threading.Event = field(default_factory=threading.Event)


class SingleHostBackend:
    """Start each proxy on this machine (see the module docstring).

    ``host`` is the address clients dial (``--advertise``); ``workdir`` holds the
    proxies' private directories; ``ports`` is ``--proxy-ports`` (None: any free port);
    ``agent`` the machine's platform agent, to which each proxy gets a channel (it never
    gets the key); ``slots`` the server's ``--max-enclaves`` (for listings); ``grace``
    how long a proxy told to stop may take.
    """

    def __init__(
        self,
        *,
        host: str,
        workdir: Path,
        slots: int,
        ports: tuple[int, int] | None = None,
        python: str | None = None,
        agent: PlatformAgent | None = None,
        grace: float = 5.0,
    ) -> None:
        self._host = host
        self._workdir = workdir
        self._slots = slots
        self._ports = ports
        self._python = python
        self._agent = agent
        self._grace = grace
        self._lock = threading.Lock()
        self._ports_used: set[int] = set()

    def connect(self) -> None:
        """Nothing to connect to: proxies start here."""

    def close(self) -> None:
        """Stop the platform agent (running proxies have what they need from it)."""
        if self._agent is not None:
            self._agent.close()

    # ----------------------------------------------------------- placing

    def place(self, spec: ProxySpec, label: tuple[str, str] | None, timeout: float) -> Placement:
        """Start a proxy here; ``RefusedError`` if it cannot (or a node label is asked)."""
        if label is not None:
            raise RefusedError(
                StatusCode.INVALID_ARGUMENT,
                "this server runs enclaves on one host and has no node labels; "
                "node_label is for a server in fleet mode",
            )
        token = secrets.token_urlsafe(32)
        proxy, port = self._start(spec, token, timeout)
        certificate = b""
        if spec.tls:  # read it before anything may remove the directory
            try:
                certificate = (proxy.directory / "tls-cert.pem").read_bytes()
            except OSError:
                certificate = b""
            if not certificate:
                self._reap(proxy, port, grace=0.0)
                raise RefusedError(
                    StatusCode.UNAVAILABLE, "the enclave proxy ended before it could be handed over"
                )
        started = Started(
            address=proxy.address,
            token=token,
            certificate=certificate,
            host=self._host,
            pid=proxy.process.pid,
        )
        return Placement(started, (_Proxy(proxy), port))

    def _prepare(self, spec: ProxySpec) -> tuple[Path, list[str]]:
        """A fresh private directory for one proxy, and the flags that point into it."""
        directory = Path(self._workdir) / spec.enclave_id
        directory.mkdir(mode=0o700)  # start_proxy removes it again if the proxy fails
        extra = [*spec.proxy_flags(), *spec.attester_args]
        if spec.tls:
            extra += ["--tls-ephemeral", self._host]
            if spec.client_ca_pem:
                ca_path = directory / "client-ca.pem"
                fd = os.open(ca_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(spec.client_ca_pem)
                extra += ["--client-ca", str(ca_path)]
        return directory, extra

    def _start(
        self, spec: ProxySpec, token: str, timeout: float
    ) -> tuple[ProxyProcess, int | None]:
        error: EnclaveLoadError | None = None
        for port in self._free_ports():
            directory, extra = self._prepare(spec)
            command = proxy_command(
                f"{self._host}:{port or 0}",
                python=self._python,
                idle_timeout=spec.idle_timeout,
                transport=spec.transport,
                extra=extra,
            )
            channel = self._agent.channel() if self._agent is not None else None
            if channel is not None:
                command += ["--agent-fd", str(channel.fileno())]
            try:  # start_proxy removes the directory when it fails
                proxy = start_proxy(
                    command,
                    token=token,
                    directory=directory,
                    timeout=min(timeout, spec.start_timeout),
                    name=spec.name,
                    pass_fds=(channel.fileno(),) if channel is not None else (),
                )
            except EnclaveLoadError as exc:
                self._give_back(port)
                error = exc
                if "cannot listen" in str(exc):
                    continue  # that port is taken by someone else: try the next one
                break
            finally:
                if channel is not None:
                    channel.close()  # the proxy has its own copy
            return proxy, port
        log.error("the proxy for %s failed to start: %s", spec.name, error)
        if self._ports is not None and (error is None or "cannot listen" in str(error)):
            raise RefusedError(
                StatusCode.RESOURCE_EXHAUSTED,
                "no free port is left in this server's proxy port range",
            )
        raise RefusedError(StatusCode.INTERNAL, "the enclave proxy failed to start")

    def _free_ports(self) -> list[int | None]:
        """Ports to try for a new proxy, taken for it: any (None), or free ones of the range."""
        if self._ports is None:
            return [None]
        low, high = self._ports
        with self._lock:
            free = [p for p in range(low, high + 1) if p not in self._ports_used][:8]
            self._ports_used.update(free)
        return list(free)

    def _give_back(self, port: int | None) -> None:
        if port is not None:
            with self._lock:
                self._ports_used.discard(port)

    # ----------------------------------------------------------- watching

    def wait(self, placement: Placement) -> str:
        """Read the proxy's status lines until it exits, then reap it."""
        proxy, port = placement.handle
        stdout = proxy.process.process.stdout
        try:
            if stdout is not None:
                read_statuses(stdout, into=proxy.report)
        finally:
            code = self._reap(proxy.process, port, grace=self._grace)
            proxy.reaped.set()
        return f"its proxy exited with code {code}"

    def _reap(self, proxy: ProxyProcess, port: int | None, *, grace: float) -> int:
        code = reap(proxy, grace=grace)
        self._give_back(port)
        return code

    def release(self, placement: Placement) -> None:
        """SIGTERM the proxy (it finalizes) unless it ends by itself within RELEASE_GRACE."""
        proxy, _ = placement.handle

        def stop() -> None:
            try:  # after a clean session end the proxy is already on its way out
                proxy.process.process.wait(RELEASE_GRACE)
            except subprocess.TimeoutExpired:
                proxy.process.process.terminate()

        threading.Thread(target=stop, daemon=True, name="farside-release").start()

    def end(self, placement: Placement) -> None:
        """Kill the proxy if it still runs, and wait until ``wait`` has reaped it."""
        proxy, _ = placement.handle
        if proxy.process.process.poll() is None:
            proxy.process.process.kill()
        proxy.reaped.wait(self._grace + 5.0)

    # ----------------------------------------------------------- listing

    def reports(self, placements: Sequence[Placement]) -> list[ProxyReport]:
        """What each proxy last reported."""
        return [placement.handle[0].report.copy() for placement in placements]

    def hosts(self, placements: Sequence[Placement]) -> list[pb.HostInfo]:
        """This one host, with the server's slots."""
        return [
            pb.HostInfo(
                address=self._host,
                alive=True,
                slots_total=self._slots,
                slots_free=max(0, self._slots - len(placements)),
            )
        ]
