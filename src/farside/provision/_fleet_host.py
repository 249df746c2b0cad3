"""The trusted-host side of fleet mode: one ``EnclaveSlot`` actor owns one proxy.

Ray runs an ``EnclaveSlot`` on the host it chose (the actor holds one unit of
that host's ``enclave`` resource for as long as it lives). ``start`` spawns the
proxy there, with a channel to a platform agent of the slot's own that signs with
*this host's* platform key: the agent reads it from the directory ``farside fleet
join --platform-dir`` named (``FARSIDE_FLEET_PLATFORM_DIR`` in the node's
environment). No key travels through Ray, and neither the actor nor the proxy ever
holds it. ``wait`` returns
once the proxy has exited (session end, release, client gone), after which the
provision server ends the actor and the slot is free again.

The proxy never outlives this actor: it is forked from one long-lived thread of
the actor's worker with ``--parent-pid``, so the kernel's parent-death signal
(and the proxy's ``getppid`` check) end it when the worker dies, which Ray does
to every worker of a node that dies or of an actor it kills.

This module must not import ray: the actor class is plain Python, wrapped with
``ray.remote`` by ``provision.fleet`` on the server side only.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._errors import EnclaveLoadError
from ..metrics.report import ProxyReport
from ._agent import PlatformAgent
from ._spawn import ProxyProcess, proxy_command, read_statuses, reap, start_proxy
from .backend import ProxySpec, Started
from .local import _spawner

__all__ = [
    "PLATFORM_DIR_VAR",
    "WORKDIR_VAR",
    "EnclaveSlot",
    "HostError",
    "RayEnclaveSlot",
    "proxy_environment",
    "remove_stale_directories",
    "running_proxies",
]

PLATFORM_DIR_VAR = "FARSIDE_FLEET_PLATFORM_DIR"
WORKDIR_VAR = "FARSIDE_FLEET_WORKDIR"
STOP_GRACE = 5.0
DIRECTORY_PREFIX = "farside-fleet-"
STALE_AFTER = 60.0  # seconds: younger proxy directories may still be getting their proxy


class HostError(Exception):
    """The chosen host could not start the proxy (its message is the host's reason)."""


def remove_stale_directories(workdir: Path, *, min_age: float = STALE_AFTER) -> list[Path]:
    """Remove the private directories of this host's proxies that are gone; return them.

    A proxy removes its own directory when it exits, but Ray kills a dead actor's
    child processes with SIGKILL (a node's death, a server that stopped), and then
    nobody did. A directory is stale when it is ours, older than ``min_age`` seconds
    (a new one may not have its proxy yet) and no live process names it on its
    command line (every proxy has ``--private-dir DIR`` there).
    """
    try:
        candidates = [
            d
            for d in workdir.glob(f"{DIRECTORY_PREFIX}*")
            if d.is_dir() and not d.is_symlink() and d.stat().st_uid == os.getuid()
        ]
    except OSError:
        return []
    now = time.time()
    candidates = [d for d in candidates if now - d.stat().st_mtime > min_age]
    if not candidates:
        return []
    in_use: set[bytes] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                in_use.update((entry / "cmdline").read_bytes().split(b"\0"))
            except OSError:
                continue
    stale = [d for d in candidates if str(d).encode() not in in_use]
    for directory in stale:
        shutil.rmtree(directory, ignore_errors=True)
    return stale


def running_proxies(workdir: Path) -> int:
    """How many proxies of this host's slots run now (``fleet join --metrics-address``).

    A slot's proxy names its private directory, ``WORKDIR/farside-fleet-*``, on its
    command line (``--private-dir``); the processes of other users are not counted.
    """
    prefix = str(workdir.resolve() / DIRECTORY_PREFIX).encode()
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"proxy" in args and any(a.startswith(prefix) for a in args):
            count += 1
    return count


def proxy_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The Ray worker's environment without what enclave code must not see.

    Ray's variables (``RAY_AUTH_TOKEN`` opens the whole cluster) and where this
    host keeps its platform key stay behind; the proxy gets the key on stdin.
    """
    hidden = (PLATFORM_DIR_VAR, WORKDIR_VAR)
    return {k: v for k, v in environ.items() if not k.startswith("RAY_") and k not in hidden}


class EnclaveSlot:
    """One enclave slot on one trusted host: spawns, watches and stops one proxy."""

    def __init__(self, host: str, node_id: str) -> None:
        # Given by the Ray wrapper (it knows this node's address); tests pass their own.
        self._host = host
        self._node_id = node_id
        self._proxy: ProxyProcess | None = None
        self._ended = threading.Event()
        self._code: int | None = None
        self._report = ProxyReport()
        self._agent: PlatformAgent | None = None

    def start(self, spec: ProxySpec) -> Started:
        """Spawn the proxy on this host; ``HostError`` with the reason if it cannot."""
        if self._proxy is not None:
            raise HostError("this slot already runs a proxy")
        platform_dir = os.environ.get(PLATFORM_DIR_VAR, "")
        if not platform_dir:
            raise HostError(
                f"host {self._host} joined the fleet without a platform key "
                f"(farside fleet join --platform-dir DIR sets {PLATFORM_DIR_VAR})"
            )
        try:
            agent = PlatformAgent.start(
                platform_dir=Path(platform_dir),
                launch=_spawner.run,
                environ=proxy_environment(os.environ),
            )
        except EnclaveLoadError as exc:
            raise HostError(f"host {self._host} cannot sign evidence: {exc}") from None
        try:
            started = self._start(spec, agent)
        except BaseException:
            agent.close()
            raise
        self._agent = agent  # until the proxy exits: it attests when its client arrives
        threading.Thread(target=self._watch, daemon=True, name="farside-slot-watch").start()
        return started

    def _start(self, spec: ProxySpec, agent: PlatformAgent) -> Started:
        workdir = Path(os.environ.get(WORKDIR_VAR) or tempfile.gettempdir())
        remove_stale_directories(workdir)
        try:
            directory = Path(tempfile.mkdtemp(prefix=DIRECTORY_PREFIX, dir=workdir))  # 0700
        except OSError as exc:
            raise HostError(f"host {self._host} cannot make a proxy directory: {exc}") from None
        channel = agent.channel()
        extra = [
            *spec.proxy_flags(),
            "--agent-fd",
            str(channel.fileno()),
            "--private-dir",
            str(directory),
        ]
        if spec.tls:
            extra += ["--tls-ephemeral", self._host]
            if spec.client_ca_pem:
                ca_path = directory / "client-ca.pem"
                ca_path.write_bytes(spec.client_ca_pem)
                extra += ["--client-ca", str(ca_path)]
        token = secrets.token_urlsafe(32)
        command = proxy_command(
            f"{self._host}:0",
            idle_timeout=spec.idle_timeout,
            parent_pid=os.getpid(),  # the proxy dies with this worker
            transport=spec.transport,
            extra=extra,
        )
        try:
            proxy = start_proxy(
                command,
                token=token,
                directory=directory,
                timeout=spec.start_timeout,
                name=spec.name,
                launch=_spawner.run,  # a long-lived thread: see the module docstring
                pass_fds=(channel.fileno(),),
                environ=proxy_environment(os.environ),
            )
        except EnclaveLoadError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            raise HostError(str(exc)) from None
        finally:
            channel.close()
        certificate = b""
        if spec.tls:
            try:
                certificate = (directory / "tls-cert.pem").read_bytes()
            except OSError:
                certificate = b""
            if not certificate:
                reap(proxy, grace=0.0)
                raise HostError("the enclave proxy ended before it could be handed over")
        self._proxy = proxy
        return Started(
            address=proxy.address,
            token=token,
            certificate=certificate,
            host=self._host,
            node_id=self._node_id,
            pid=proxy.process.pid,
        )

    def _watch(self) -> None:
        """Read the proxy's status lines until its pipe closes, then reap it."""
        proxy = self._proxy
        assert proxy is not None
        assert proxy.process.stdout is not None
        try:
            read_statuses(proxy.process.stdout, into=self._report)
        finally:
            self._code = reap(proxy, grace=STOP_GRACE)
            if self._agent is not None:
                self._agent.close()
            self._ended.set()

    def wait(self) -> int:
        """Block until the proxy has exited and was reaped; return its exit code."""
        if self._proxy is None:
            return 0
        self._ended.wait()
        return self._code if self._code is not None else 1

    def stop(self) -> None:
        """Ask the proxy to finalize and exit (SIGTERM); ``wait`` returns once it did."""
        proxy = self._proxy
        if proxy is not None and proxy.process.poll() is None:
            proxy.process.terminate()

    def status(self) -> list[bytes]:
        """What the proxy last reported, as the lines of its grammar (the server reads them
        as it reads a local proxy's: ``farside.metrics.report``)."""
        return self._report.lines()


class RayEnclaveSlot(EnclaveSlot):
    """The class ``provision.fleet`` hands to ``ray.remote``: a slot on the node Ray chose."""

    def __init__(self) -> None:
        import ray  # only ever constructed inside a Ray worker

        util: Any = ray.util  # partly untyped
        super().__init__(util.get_node_ip_address(), ray.get_runtime_context().get_node_id())
