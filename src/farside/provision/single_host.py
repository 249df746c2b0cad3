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
import shutil
import socket
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

PORT_ATTEMPTS = 8
"""How many ports of ``--proxy-ports`` one request tries (others may hold some)."""
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
        platform_dir: Path | None = None,
        grace: float = 5.0,
    ) -> None:
        self._host = host
        self._workdir = workdir
        self._slots = slots
        self._ports = ports
        self._python = python
        self._agent = agent
        self._agent_lock = threading.Lock()
        self._platform_dir = platform_dir  # the agent's, to start it again if it dies
        self._grace = grace
        self._lock = threading.Lock()
        self._ports_used: set[int] = set()

    def connect(self) -> None:
        """Nothing to connect to: proxies start here."""

    def close(self) -> None:
        """Stop the platform agent (running proxies have what they need from it)."""
        with self._agent_lock:
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
        tried: set[int] = set()
        for _ in range(PORT_ATTEMPTS if self._ports is not None else 1):
            port = self._take_port(tried)
            if port is None and self._ports is not None:
                break  # every port of the range is in use (or was tried)
            try:
                proxy = self._start_on(spec, token, timeout, port)
            except EnclaveLoadError as exc:
                self._give_back(port)
                error = exc
                if port is not None and "cannot listen" in str(exc):
                    tried.add(port)
                    continue  # that port is taken by someone else: try the next one
                break
            except BaseException:
                self._give_back(port)
                raise
            return proxy, port
        log.error("the proxy for %s failed to start: %s", spec.name, error)
        if self._ports is not None and (error is None or "cannot listen" in str(error)):
            raise RefusedError(
                StatusCode.RESOURCE_EXHAUSTED,
                "no free port is left in this server's proxy port range",
            )
        raise RefusedError(StatusCode.INTERNAL, "the enclave proxy failed to start")

    def _start_on(
        self, spec: ProxySpec, token: str, timeout: float, port: int | None
    ) -> ProxyProcess:
        """Start one proxy listening on ``port`` (None: any); ``EnclaveLoadError`` if not."""
        directory, extra = self._prepare(spec)
        command = proxy_command(
            f"{self._host}:{port or 0}",
            python=self._python,
            idle_timeout=spec.idle_timeout,
            transport=spec.transport,
            extra=[*extra, "--private-dir", str(directory)],
        )
        try:
            channel = self._agent_channel()
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        if channel is not None:
            command += ["--agent-fd", str(channel.fileno())]
        try:  # start_proxy removes the directory when it fails
            return start_proxy(
                command,
                token=token,
                directory=directory,
                timeout=min(timeout, spec.start_timeout),
                name=spec.name,
                pass_fds=(channel.fileno(),) if channel is not None else (),
            )
        finally:
            if channel is not None:
                channel.close()  # the proxy has its own copy

    def _agent_channel(self) -> socket.socket | None:
        """A channel to the platform agent for a new proxy; an agent that died (killed, or
        crashed) is started again first, so one death does not fail every later load."""
        if self._agent is None:
            return None
        with self._agent_lock:
            if not self._agent.alive:
                log.warning(
                    "the platform agent (pid %d) exited with code %s: starting it again",
                    self._agent.process.pid,
                    self._agent.process.returncode,
                )
                self._agent.close()
                self._agent = PlatformAgent.start(
                    platform_dir=self._platform_dir, python=self._python
                )
            return self._agent.channel()

    def _take_port(self, tried: set[int]) -> int | None:
        """A port of the range that no proxy of ours holds and was not tried, now taken for
        one proxy (None: any port, when there is no range; or none left)."""
        if self._ports is None:
            return None
        low, high = self._ports
        with self._lock:
            for port in range(low, high + 1):
                if port not in self._ports_used and port not in tried:
                    self._ports_used.add(port)
                    return port
        return None

    def _give_back(self, port: int | None) -> None:
        if port is not None:
            with self._lock:
                self._ports_used.discard(port)

    def ports_in_use(self) -> set[int]:
        """The ports of the range held by this server's proxies now (for tests)."""
        with self._lock:
            return set(self._ports_used)

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
        """SIGTERM the proxy (it finalizes) unless it ends by itself within RELEASE_GRACE;
        SIGKILL it if it still runs ``grace`` s later (a stopped or hung proxy)."""
        proxy, _ = placement.handle

        def stop() -> None:
            process = proxy.process.process
            try:  # after a clean session end the proxy is already on its way out
                process.wait(RELEASE_GRACE)
                return
            except subprocess.TimeoutExpired:
                process.terminate()
            try:  # it finalizes; one that cannot (stopped, hung: enclave code did it) dies
                process.wait(self._grace)
            except subprocess.TimeoutExpired:
                log.warning("the released proxy %d ignored SIGTERM: killing it", process.pid)
                process.kill()

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
