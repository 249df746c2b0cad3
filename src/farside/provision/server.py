"""The provision server: a trusted machine's daemon that starts one proxy per enclave.

``ProvisionServer`` serves the ``Provisioner`` gRPC service (and the standard health
service). Each ``Provision`` authenticates the caller (mTLS client certificate and/or
bearer token), checks the limits (per client and in total), and has its backend
(``farside.provision.backend``) start a ``farside proxy``: on this machine
(``SingleHostBackend``) or, in fleet mode, on a host of a Ray cluster (``RayPlacer``).
Only the caller learns the proxy's one-time session token. A watcher thread per
proxy waits until it exited, whatever the reason (session ended, released, no client
in time, client gone, crashed), and frees its slot: the server keeps serving.

The server owns the table of enclaves; backends own their processes or slots. Proxies
do not die with the server: a crash or restart of it leaves running enclaves serving.
A clean shutdown (``stop``) asks every proxy to finalize, waits a grace period, then
ends them all.

It counts what it answers and what its proxies report (``farside.metrics.aggregate``:
monotonic totals, bounded labels); with ``metrics_address`` it asks its proxies for
their counters and serves everything on ``/metrics`` (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .._config import SandboxConfig, SandboxMode
from .._errors import EnclaveLoadError, StatusCode
from .._proto.v1 import provision_pb2 as pb, provision_pb2_grpc as pb_grpc
from .._tls import TLSConfig
from ..metrics.aggregate import Totals, counter_rows
from ..metrics.report import ProxyReport
from ..transport.factory import DEFAULT_TRANSPORT, TRANSPORTS
from ..transport.grpc import server_credentials
from .backend import Placement, ProvisionBackend, ProxySpec, RefusedError, Started
from .base import parse_node_label

__all__ = ["ProvisionServer", "ProvisionServerConfig"]

log = logging.getLogger("farside.provision")

SERVICE_NAME = "farside.v1.Provisioner"
MAX_REQUEST_BYTES = 64 * 2**10
RELEASE_WAIT = 3.0
"""The longest ``Release`` waits for the enclave's slot to be free."""
_NAME = re.compile(r"[A-Za-z0-9._\-]{1,128}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvisionServerConfig:
    """What ``farside provision-server`` is told on its command line."""

    host: str = "127.0.0.1"
    port: int = 4321
    advertise: str | None = None
    tls: TLSConfig | None = None
    token: str | None = None
    insecure: bool = False
    platform_dir: Path | None = None
    max_enclaves: int = 16
    max_per_client: int = 4
    workdir: Path | None = None
    proxy_ports: tuple[int, int] | None = None  # inclusive range; None: any free port
    proxy_idle_timeout: float = 30.0
    proxy_start_timeout: float = 30.0
    grace: float = 5.0
    python: str | None = None
    proxy_sandbox: SandboxMode = "best-effort"  # each proxy's --sandbox
    proxy_limits: SandboxConfig = field(default_factory=SandboxConfig)  # and its limit flags
    proxy_attester: str = "sim"  # each proxy's --attester: sim (the agent), tsm, nsm
    proxy_tsm_root: str | None = None  # and its --tsm-root
    proxy_nsm_device: str | None = None  # and its --nsm-device
    ray_address: str | None = None  # fleet mode: place proxies through this Ray cluster
    ray_node_ip: str | None = None  # this machine's address in the Ray cluster
    ray_allow_plaintext: bool = False  # development only: Ray without TLS
    placement_timeout: float = 30.0  # fleet mode: the longest a Provision waits for a slot
    operators: tuple[str, ...] = ()  # client identities ListEnclaves shows every enclave to
    metrics_address: str | None = None  # serve /metrics here (HOST:PORT); None: no metrics
    log_format: str = "text"  # the proxies' --log-format

    def __post_init__(self) -> None:
        # Proxies start in directories of their own, where a relative path means nothing.
        for name in ("platform_dir", "workdir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).absolute())
        self._check_attester()
        if self.ray_address is not None and self.platform_dir is not None:
            raise ValueError(
                "in fleet mode each host signs with its own platform key (farside fleet join "
                "--platform-dir); do not give --platform-dir to the server"
            )
        if self.placement_timeout <= 0:
            raise ValueError("--placement-timeout must be positive")
        if self.max_enclaves < 1 or self.max_per_client < 1:
            raise ValueError("--max-enclaves and --max-per-client must be at least 1")
        if not 0 <= self.port < 65536:
            raise ValueError(f"--port {self.port} is not a port number")
        if self.proxy_ports is not None:
            low, high = self.proxy_ports
            if not 0 < low <= high < 65536:
                raise ValueError(f"--proxy-ports {low}-{high} is not a range of ports")
        if self.tls is None and not self.insecure and not _is_loopback(self.host):
            raise ValueError(
                f"refusing to serve plaintext on {self.host}: give --tls-cert/--tls-key, "
                "or --insecure to accept it"
            )
        authenticated = self.token is not None or (
            self.tls is not None and self.tls.client_ca is not None
        )
        if not authenticated and not self.insecure and not _is_loopback(self.host):
            raise ValueError(
                "clients must authenticate: give --client-ca (mTLS) or --token-file, "
                "or --insecure to accept anyone"
            )

    def _check_attester(self) -> None:
        kind = self.proxy_attester
        if kind not in ("sim", "tsm", "nsm"):
            raise ValueError(f"--attester is one of sim, tsm, nsm, not {kind!r}")
        if (kind != "tsm" and self.proxy_tsm_root is not None) or (
            kind != "nsm" and self.proxy_nsm_device is not None
        ):
            raise ValueError(
                "--tsm-root goes with --attester tsm, --nsm-device with --attester nsm"
            )
        if kind == "sim":
            return
        if self.platform_dir is not None:
            raise ValueError(
                f"--attester {kind}: the TEE vouches for each enclave, no platform key is "
                "used; do not give --platform-dir"
            )
        if self.ray_address is not None:
            raise ValueError(
                f"--attester {kind} is for a server whose proxies run on this machine; in "
                "fleet mode each host's platform agent attests"
            )

    @property
    def attester_args(self) -> tuple[str, ...]:
        """The ``farside proxy`` flags that choose each proxy's attester (none for sim)."""
        if self.proxy_attester == "sim":
            return ()
        args = ["--attester", self.proxy_attester]
        if self.proxy_tsm_root is not None:
            args += ["--tsm-root", self.proxy_tsm_root]
        if self.proxy_nsm_device is not None:
            args += ["--nsm-device", self.proxy_nsm_device]
        return tuple(args)


WORKDIR_PREFIX = "farside-server-"
SWEEP_INTERVAL = 10.0
"""How often a server sweeps what dead servers left in its work directory's parent."""
_WORKDIR_LOCK = ".server.lock"


def _hold_workdir(workdir: Path) -> int:
    """Lock ``workdir`` as a live server's (an flock the kernel drops when we die)."""
    fd = os.open(workdir / _WORKDIR_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _in_use() -> set[bytes]:
    """Every word of every visible process's command line, and every working directory:
    a proxy names its private directory with ``--private-dir`` and runs in it."""
    words: set[bytes] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
                words.update(f.read().split(b"\0"))
            with contextlib.suppress(OSError):
                words.add(os.fsencode(os.readlink(f"/proc/{entry}/cwd")))
    return words


def _sweep(workdir: Path, in_use: set[bytes]) -> list[Path]:
    """Empty a dead server's work directory but for its proxies still running; remove it
    once empty. Returns what it removed."""
    removed: list[Path] = []
    left = False
    for entry in workdir.iterdir():
        if entry.name == _WORKDIR_LOCK:
            continue
        is_dir = entry.is_dir() and not entry.is_symlink()
        if is_dir and os.fsencode(entry) in in_use:
            left = True  # its proxy still serves
            continue
        if is_dir:
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    if not left:
        shutil.rmtree(workdir, ignore_errors=True)
        removed.append(workdir)
    return removed


def sweep_stale_workdirs(parent: Path, *, own: Path | None = None) -> list[Path]:
    """Remove what servers that died (kill -9, a crash) left in ``parent``; return it.

    A server's work directory is stale when its lock is free (its server is gone); in it,
    each proxy's directory is removed unless a live process names it (the proxy, which
    outlives its server, removes its own when it ends), and the work directory itself
    once it is empty. Directories of other users, links and live servers' are left alone.
    """
    removed: list[Path] = []
    try:
        candidates = [
            d
            for d in parent.glob(f"{WORKDIR_PREFIX}*")
            if d != own
            and not d.is_symlink()
            and d.is_dir()
            and d.stat().st_uid == os.getuid()
            and (d / _WORKDIR_LOCK).exists()
        ]
    except OSError:
        return removed
    in_use: set[bytes] | None = None
    for workdir in candidates:
        try:
            fd = os.open(workdir / _WORKDIR_LOCK, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if in_use is None:
                in_use = _in_use()
            removed += _sweep(workdir, in_use)
        except OSError:
            continue  # its server runs (the lock is held), or it went away meanwhile
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d directories that a stopped server left behind", len(removed))
    return removed


def _address_of(peer: str) -> str:
    """A gRPC peer (``ipv4:10.0.0.7:53211``) without its port: an unauthenticated client is
    one address, however many connections (source ports) it opens."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return f"{kind}:{rest.rpartition(':')[0]}"
    return peer


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


@dataclass(slots=True)
class _Enclave:
    enclave_id: str
    name: str
    client: str
    placement: Placement | None = None  # None while it starts
    transport: str = DEFAULT_TRANSPORT
    started: float = field(default_factory=time.monotonic)
    gone: threading.Event = field(default_factory=threading.Event)  # its slot is free


class ProvisionServer:
    """Serve ``Provisioner`` on ``config.host:config.port`` until ``stop``.

    ``backend`` is where proxies run; by default the one ``config`` implies
    (``RayPlacer`` with ``ray_address``, else ``SingleHostBackend``).
    """

    def __init__(
        self, config: ProvisionServerConfig, *, backend: ProvisionBackend | None = None
    ) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._enclaves: dict[str, _Enclave] = {}
        self._stopping = False
        self._stopped = threading.Event()
        self.sweep_interval = SWEEP_INTERVAL
        self.totals = Totals()
        self._metrics: Any = None  # the /metrics server, once started
        self._hosts_cache: tuple[float, list[pb.HostInfo]] = (0.0, [])
        self._workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=config.workdir))  # 0700
        self._workdir_lock = _hold_workdir(self._workdir)  # released when this process ends
        sweep_stale_workdirs(self._workdir.parent, own=self._workdir)
        try:
            self.backend = backend if backend is not None else self._default_backend()
            self._client_ca_pem = self._read_client_ca()
        except BaseException:
            shutil.rmtree(self._workdir, ignore_errors=True)
            os.close(self._workdir_lock)
            raise
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=8, thread_name_prefix="provision"),
            options=[
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        _add_servicer(_Servicer(self), self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self.address = ""

    def _default_backend(self) -> ProvisionBackend:
        """The backend the configuration names; fails now (key, Ray), not at a request."""
        config = self.config
        if config.ray_address is not None:
            from .fleet import RayPlacer

            return RayPlacer(
                config.ray_address,
                node_ip=config.ray_node_ip,
                allow_plaintext=config.ray_allow_plaintext,
            )
        from ._agent import PlatformAgent
        from .single_host import SingleHostBackend

        agent = None
        if config.proxy_attester == "sim":  # hardware attesters need no platform key
            try:
                agent = PlatformAgent.start(platform_dir=config.platform_dir, python=config.python)
            except EnclaveLoadError as exc:
                raise ValueError(str(exc)) from None
        if config.platform_dir is None and agent is not None:
            log.warning(
                "no --platform-dir: proxies sign their evidence with an ephemeral platform key "
                "that no remote client trusts (run farside platform init --dir DIR and pass "
                "--platform-dir DIR; clients pin DIR/platform.pub)"
            )
        return SingleHostBackend(
            host=config.advertise or config.host,
            workdir=self._workdir,
            slots=config.max_enclaves,
            ports=config.proxy_ports,
            python=config.python,
            agent=agent,
            platform_dir=config.platform_dir,
            grace=config.grace,
        )

    def _read_client_ca(self) -> bytes:
        """The CA proxies require client certificates from (public; handed to each proxy)."""
        tls = self.config.tls
        if tls is None:
            return b""
        return tls.pem("client_ca") or b""

    def _spec(self, enclave_id: str, name: str, transport: str) -> ProxySpec:
        """What a backend is told about the proxy to start: the server's settings only."""
        config = self.config
        args = ["--sandbox", config.proxy_sandbox]
        for flag, value in (
            ("--memory-limit", config.proxy_limits.memory),
            ("--open-files-limit", config.proxy_limits.open_files),
            ("--cpu-limit", config.proxy_limits.cpu_seconds),
        ):
            if value is not None:
                args += [flag, str(value)]
        return ProxySpec(
            enclave_id=enclave_id,
            name=name,
            tls=config.tls is not None,
            client_ca_pem=self._client_ca_pem,
            idle_timeout=config.proxy_idle_timeout,
            start_timeout=config.proxy_start_timeout,
            transport=transport,
            sandbox_args=tuple(args),
            attester_args=config.attester_args,
            report_metrics=config.metrics_address is not None,
            log_format=config.log_format,
        )

    # ----------------------------------------------------------- lifecycle

    def start(self) -> str:
        """Bind and serve; return ``host:port`` (the real port when ``port`` was 0)."""
        target = f"{self.config.host}:{self.config.port}"
        self.backend.connect()  # OSError naming the cluster if it cannot
        try:
            if self.config.tls is not None:
                port = self._server.add_secure_port(target, server_credentials(self.config.tls))
            else:
                port = self._server.add_insecure_port(target)
        except (RuntimeError, ValueError) as exc:  # ValueError: unreadable TLS files
            raise OSError(f"cannot listen on {target}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot listen on {target}")
        if self.config.metrics_address is not None:
            from ..metrics.exporter import serve_metrics

            self._metrics = serve_metrics(self.config.metrics_address, self._metric_families)
            if not self._metrics.loopback:
                log.warning(
                    "serving /metrics on %s without authentication: keep it on a monitoring "
                    "network (docs/operations.md)",
                    self._metrics.address,
                )
        self._server.start()
        threading.Thread(target=self._janitor, daemon=True, name="farside-janitor").start()
        self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self.address = f"{self.config.host}:{port}"
        return self.address

    def _janitor(self) -> None:
        """Sweep what dead servers left every ``sweep_interval`` s, also when no request
        comes (an orphaned proxy that dies uncleanly leaves its directory)."""
        while not self._stopped.wait(self.sweep_interval):
            try:
                sweep_stale_workdirs(self._workdir.parent, own=self._workdir)
            except Exception:  # never the end of the server
                log.exception("sweeping stale work directories failed")

    def stop(self) -> None:
        """Refuse new work, ask every proxy to finalize, then end what is left."""
        self._stopped.set()
        with self._lock:
            self._stopping = True
            placements = [e.placement for e in self._enclaves.values() if e.placement]
        self._health.enter_graceful_shutdown()
        stopped = self._server.stop(grace=1.0)
        for placement in placements:
            self.backend.release(placement)  # the proxy finalizes; its watcher frees the slot
        deadline = time.monotonic() + self.config.grace
        while time.monotonic() < deadline and self.enclave_count():
            time.sleep(0.05)
        for placement in placements:
            self.backend.end(placement)
        with self._lock:
            self._enclaves.clear()
        self.backend.close()
        stopped.wait(5.0)
        if self._metrics is not None:
            self._metrics.close()
        shutil.rmtree(self._workdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(self._workdir_lock)

    @property
    def metrics_address(self) -> str:
        """Where ``/metrics`` is served (``HOST:PORT``, the real port), or "" when it is not."""
        return self._metrics.address if self._metrics is not None else ""

    def enclave_count(self) -> int:
        """How many enclaves are starting or running."""
        with self._lock:
            return len(self._enclaves)

    # ----------------------------------------------------------- requests

    def authenticate(self, context: grpc.ServicerContext) -> str:
        """The caller's identity, or abort with PERMISSION_DENIED."""
        identity = ""
        auth = context.auth_context()
        names = auth.get("x509_common_name") or auth.get("x509_subject_alternative_name")
        if names:
            first: Any = names[0]
            identity = "cert:" + (
                first.decode("utf-8", "replace") if isinstance(first, bytes) else str(first)
            )
        elif self.config.tls is not None and self.config.tls.client_ca is not None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "a client certificate is required")
        if self.config.token is not None:
            header = dict(context.invocation_metadata()).get("authorization", "")
            presented = (
                header[7:] if isinstance(header, str) and header.startswith("Bearer ") else ""
            )
            if not presented or not hmac.compare_digest(
                presented.encode(), self.config.token.encode()
            ):
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "missing or wrong bearer token" if presented == "" else "wrong bearer token",
                )
            if not identity:
                digest = hashlib.sha256(self.config.token.encode()).hexdigest()[:12]
                identity = f"token:{digest}"
        return identity or f"peer:{_address_of(context.peer())}"

    def provision(
        self,
        name: str,
        client: str,
        *,
        label: str = "",
        timeout: float | None = None,
        transport: str = DEFAULT_TRANSPORT,
    ) -> tuple[str, Started]:
        """Start a proxy for ``client``; return its enclave id and what the client is told.

        ``label`` (fleet mode) asks for a host with that node label; ``timeout`` bounds
        the wait (for a free slot in the fleet); ``transport`` is the wire the proxy serves.
        ``RefusedError`` says why not.
        """
        try:
            parsed = parse_node_label(label) if label else None
        except ValueError as exc:
            raise RefusedError(StatusCode.INVALID_ARGUMENT, str(exc)) from None
        with self._lock:
            if self._stopping:
                raise RefusedError(StatusCode.UNAVAILABLE, "the provision server is shutting down")
            if len(self._enclaves) >= self.config.max_enclaves:
                raise RefusedError(
                    StatusCode.RESOURCE_EXHAUSTED,
                    f"this server runs its maximum of {self.config.max_enclaves} enclaves; "
                    "try again later or another server",
                )
            mine = sum(1 for e in self._enclaves.values() if e.client == client)
            if mine >= self.config.max_per_client:
                raise RefusedError(
                    StatusCode.RESOURCE_EXHAUSTED,
                    f"you already run {mine} enclaves here, the maximum per client; "
                    "destroy one first",
                )
            enclave = _Enclave(secrets.token_hex(8), name, client, transport=transport)
            self._enclaves[enclave.enclave_id] = enclave  # holds the slot while it starts
        sweep_stale_workdirs(self._workdir.parent, own=self._workdir)
        limit = self.config.placement_timeout
        try:
            placement = self.backend.place(
                self._spec(enclave.enclave_id, name, transport),
                parsed,
                limit if timeout is None else max(0.1, min(timeout, limit)),
            )
        except BaseException:
            self._forget(enclave)
            raise
        with self._lock:
            enclave.placement = placement
            enclave.started = time.monotonic()
            stopping = self._stopping
        if stopping:  # stop() ran while it started: it must not outlive the server
            self.backend.end(placement)
            self._forget(enclave)
            raise RefusedError(StatusCode.UNAVAILABLE, "the provision server is shutting down")
        threading.Thread(
            target=self._watch,
            args=(enclave, placement),
            daemon=True,
            name=f"farside-proxy-{enclave.enclave_id}",
        ).start()
        log.info(
            "provisioned %s (%s) for %s on %s at %s",
            enclave.enclave_id,
            name,
            client,
            placement.started.host,
            placement.started.address,
        )
        return enclave.enclave_id, placement.started

    def _forget(self, enclave: _Enclave) -> None:
        with self._lock:
            self._enclaves.pop(enclave.enclave_id, None)
        enclave.gone.set()

    def _watch(self, enclave: _Enclave, placement: Placement) -> None:
        """Wait until the proxy ended, then free its slot; nothing it does can stop this."""
        how = "its watcher failed"
        try:
            how = self.backend.wait(placement)
        except Exception:
            log.exception("watching enclave %s failed; freeing its slot", enclave.enclave_id)
        finally:
            try:
                self._count_end(enclave, placement)
                self.backend.end(placement)
            finally:
                self._forget(enclave)
        log.info("enclave %s on %s ended: %s", enclave.enclave_id, placement.started.host, how)
        sweep_stale_workdirs(self._workdir.parent, own=self._workdir)

    def _count_end(self, enclave: _Enclave, placement: Placement) -> None:
        """Add the proxy's last report to the totals, and its session (never raises)."""
        try:
            [report] = self.backend.reports([placement])
        except Exception:  # the slot is gone (fleet): its session still counts
            report = None
        self.totals.finish(enclave.enclave_id, report, enclave.transport)

    def _reports(self, placed: list[tuple[_Enclave, Placement]]) -> list[ProxyReport]:
        """What each proxy last reported, merged into the totals on the way."""
        reports = self.backend.reports([p for _, p in placed])
        for (enclave, _), report in zip(placed, reports, strict=True):
            self.totals.merge(enclave.enclave_id, report)
        return reports

    def _placed(self) -> list[tuple[_Enclave, Placement]]:
        with self._lock:
            return [(e, e.placement) for e in self._enclaves.values() if e.placement]

    def _metric_families(self) -> list[Any]:
        """What ``/metrics`` shows, current as of the proxies' last reports."""
        from ..metrics.exporter import fleet_families, totals_families

        self._reports(self._placed())
        families = totals_families(self.totals.snapshot(), self.enclave_count())
        if self.config.ray_address is not None:
            hosts = self._cached_hosts()
            families += fleet_families((h.alive, h.slots_free, dict(h.labels)) for h in hosts)
        return families

    def _cached_hosts(self) -> list[pb.HostInfo]:
        """The fleet's hosts, asked of Ray at most once a second (scrapes may come often)."""
        asked, hosts = self._hosts_cache
        if time.monotonic() - asked > 1.0:
            try:
                hosts = self.list_hosts()
            except RefusedError:
                hosts = []
            self._hosts_cache = (time.monotonic(), hosts)
        return hosts

    def count_provision(self, outcome: str) -> None:
        """One Provision request was answered (``farside_provisions_total``)."""
        self.totals.count_provision(outcome)

    def counters(self) -> list[pb.Counter]:
        """The server's totals, as ``ListEnclaves`` gives them to operators."""
        self._reports(self._placed())
        return [
            pb.Counter(name=name, labels=labels, value=value)
            for name, labels, value in self.totals.snapshot().rows()
        ]

    def release(self, enclave_id: str, client: str) -> None:
        """Stop the caller's proxy ``enclave_id`` (it finalizes); unknown ids are fine.

        Returns once its slot is free (at most ``RELEASE_WAIT`` s), so a client that
        destroys an enclave and loads another finds the slot again.
        """
        with self._lock:
            enclave = self._enclaves.get(enclave_id)
            if enclave is None or enclave.client != client or enclave.placement is None:
                return
            placement = enclave.placement
        self.backend.release(placement)
        enclave.gone.wait(RELEASE_WAIT)

    def is_operator(self, client: str) -> bool:
        """True when ``client`` is one of the identities ``--operator`` names."""
        return client in self.config.operators

    def list_enclaves(self, client: str | None = None) -> list[pb.EnclaveInfo]:
        """The running enclaves of ``client`` (every client's for None or an operator), with
        what their proxies last reported."""
        every = client is None or self.is_operator(client)
        placed = [(e, p) for e, p in self._placed() if every or e.client == client]
        reports = self._reports(placed)
        now = time.monotonic()
        return [
            pb.EnclaveInfo(
                enclave_id=e.enclave_id,
                name=e.name,
                client=e.client,
                measurement=report.measurement,
                uptime_seconds=now - e.started,
                calls_served=report.calls_served,
                address=p.started.address,
                pid=p.started.pid,
                host=p.started.host,
                counters=[
                    pb.Counter(name=name, labels=labels, value=value)
                    for name, labels, value in counter_rows(
                        report.calls, report.exits, report.received, report.sent
                    )
                ]
                if self.config.metrics_address is not None
                else [],
            )
            for (e, p), report in zip(placed, reports, strict=True)
        ]

    def list_hosts(self) -> list[pb.HostInfo]:
        """The trusted hosts and their slots; ``RefusedError`` if they cannot be listed."""
        with self._lock:
            placed = [e.placement for e in self._enclaves.values() if e.placement]
        return self.backend.hosts(placed)


class _Malformed:
    """What a request that does not parse becomes; the handler answers INVALID_ARGUMENT."""


def _lenient(message: type[Any]) -> Any:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError:
            return _Malformed()

    return parse


def _add_servicer(servicer: _Servicer, server: grpc.Server) -> None:
    """Register the Provisioner service, parsing requests ourselves.

    gRPC's generated registration answers a request that does not parse with
    INTERNAL; callers should learn that their request was invalid.
    """
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=_lenient(request),
            response_serializer=response.SerializeToString,
        )
        for name, request, response in (
            ("Provision", pb.ProvisionRequest, pb.ProvisionResponse),
            ("Release", pb.ReleaseRequest, pb.ReleaseResponse),
            ("ListEnclaves", pb.ListEnclavesRequest, pb.ListEnclavesResponse),
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


def _check_parsed(request: Any, context: Any) -> None:
    if isinstance(request, _Malformed):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request is not a valid message")


def _abort(context: Any, error: RefusedError) -> NoReturn:
    context.abort(grpc.StatusCode[error.code.name], str(error))
    raise AssertionError("context.abort raises")  # pragma: no cover


class _Servicer(pb_grpc.ProvisionerServicer):  # type: ignore[misc]
    def __init__(self, server: ProvisionServer) -> None:
        self._server = server

    def Provision(self, request: pb.ProvisionRequest, context: Any) -> pb.ProvisionResponse:  # noqa: N802
        outcome = "refused_auth"  # until authenticate returns (it aborts otherwise)
        try:
            client = self._server.authenticate(context)
            outcome = "failed"
            response = self._provision(client, request, context)
            outcome = "ok"
            return response
        except RefusedError as exc:
            if exc.code is StatusCode.RESOURCE_EXHAUSTED:
                outcome = "refused_capacity"
            _abort(context, exc)
        finally:
            self._server.count_provision(outcome)

    def _provision(
        self, client: str, request: pb.ProvisionRequest, context: Any
    ) -> pb.ProvisionResponse:
        _check_parsed(request, context)
        if not _NAME.fullmatch(request.name):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the enclave name must be 1-128 characters of letters, digits, '.', '_', '-'",
            )
        if request.transport not in ("", *TRANSPORTS):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the transport must be one of {', '.join(TRANSPORTS)}",
            )
        remaining = context.time_remaining()
        enclave_id, started = self._server.provision(
            request.name,
            client,
            label=request.node_label,
            # leave a moment to answer before the caller's deadline passes
            timeout=None if remaining is None else remaining - 0.5,
            transport=request.transport or "grpc",  # empty: an older client, before stream
        )
        return pb.ProvisionResponse(
            enclave_id=enclave_id,
            address=started.address,
            session_token=started.token,
            proxy_certificate=started.certificate,
        )

    def Release(self, request: pb.ReleaseRequest, context: Any) -> pb.ReleaseResponse:  # noqa: N802
        client = self._server.authenticate(context)
        _check_parsed(request, context)
        if not re.fullmatch(r"[0-9a-f]{16}", request.enclave_id):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed enclave id")
        self._server.release(request.enclave_id, client)
        return pb.ReleaseResponse()

    def ListEnclaves(  # noqa: N802
        self, request: pb.ListEnclavesRequest, context: Any
    ) -> pb.ListEnclavesResponse:
        client = self._server.authenticate(context)
        _check_parsed(request, context)
        try:
            hosts = self._server.list_hosts()
        except RefusedError as exc:
            _abort(context, exc)
        operator = self._server.is_operator(client)
        return pb.ListEnclavesResponse(
            enclaves=self._server.list_enclaves(client),
            hosts=hosts,
            caller=client,
            operator=operator,
            counters=self._server.counters() if operator else [],
        )
