"""The provision server: a trusted machine's daemon that spawns one proxy per enclave.

``ProvisionServer`` serves the ``Provisioner`` gRPC service (and the standard
health service). Each ``Provision`` authenticates the caller (mTLS client
certificate and/or bearer token), checks the limits, and starts a
``farside proxy`` listening with TLS on the advertised address; only the caller
learns the proxy's one-time session token. A monitor thread per proxy reads its
status lines and reaps it when it exits, whatever the reason (session ended,
released, no client in time, client gone, crashed): the server keeps serving.

Proxies run in their own sessions and do not die with the server: a crash or
restart of the server leaves running enclaves serving. A clean shutdown
(``stop``) asks every proxy to finalize, waits a grace period, then kills and
reaps them all.

In fleet mode (``ray_address``) the server spawns nothing itself: its
``FleetEnclaves`` (``provision._fleet_server``) has a ``RayPlacer``
(``provision.fleet``) place each proxy on one of the fleet's trusted hosts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .._config import SandboxConfig, SandboxMode
from .._errors import EnclaveLoadError
from .._proto.v1 import provision_pb2 as pb
from .._proto.v1 import provision_pb2_grpc as pb_grpc
from .._tls import TLSConfig
from ..attestation.platform import PLATFORM_KEY, load_platform_key, platform_key_pem
from ._base import TRANSPORTS
from ._spawn import ProxyProcess, proxy_command, reap, start_proxy

if TYPE_CHECKING:
    from ._fleet_server import FleetEnclaves
    from .fleet import Placement

__all__ = ["ProvisionServer", "ProvisionServerConfig"]

log = logging.getLogger("farside.provision")

SERVICE_NAME = "farside.v1.Provisioner"
MAX_REQUEST_BYTES = 64 * 2**10
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
    ray_address: str | None = None  # fleet mode: place proxies through this Ray cluster
    ray_node_ip: str | None = None  # this machine's address in the Ray cluster
    ray_allow_plaintext: bool = False  # development only: Ray without TLS
    placement_timeout: float = 30.0  # fleet mode: the longest a Provision waits for a slot

    def __post_init__(self) -> None:
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


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


@dataclass(slots=True)
class _Enclave:
    enclave_id: str
    name: str
    client: str
    proxy: ProxyProcess | None = None  # None while it starts
    started: float = field(default_factory=time.monotonic)
    measurement: str = ""
    calls: int = 0
    released: bool = False
    placement: Placement | None = None  # fleet mode, once placed


class ProvisionServer:
    """Serve ``Provisioner`` on ``config.host:config.port`` until ``stop``."""

    def __init__(self, config: ProvisionServerConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._enclaves: dict[str, _Enclave] = {}
        self._stopping = False
        self._platform_pem = b""
        if config.platform_dir is not None:  # fail now, not at the first Provision
            self._platform_pem = platform_key_pem(
                load_platform_key(config.platform_dir / PLATFORM_KEY)
            )
        self._fleet: FleetEnclaves | None = None
        if config.ray_address is not None:  # fail now (FleetConfigError), not at the first request
            from ._fleet_server import FleetEnclaves
            from .fleet import RayPlacer

            placer = RayPlacer(
                config.ray_address,
                node_ip=config.ray_node_ip,
                allow_plaintext=config.ray_allow_plaintext,
            )
            self._fleet = FleetEnclaves(self, placer)
        self._workdir = Path(tempfile.mkdtemp(prefix="farside-server-", dir=config.workdir))  # 0700
        self._proxy_tls = self._materialize_tls()
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

    def _materialize_tls(self) -> list[str]:
        """The proxy's TLS flags: a key and certificate of its own, and our client CA.

        Proxies never get the server's key: enclave code runs in them.
        """
        tls = self.config.tls
        if tls is None:
            return []
        flags = ["--tls-ephemeral", self.config.advertise or self.config.host]
        if tls.client_ca is not None:
            value = tls.client_ca
            path = self._workdir / "client-ca.pem" if isinstance(value, bytes) else Path(value)
            if isinstance(value, bytes):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(value)
            flags += ["--client-ca", str(path.resolve())]
        return flags

    # ----------------------------------------------------------- lifecycle

    def start(self) -> str:
        """Bind and serve; return ``host:port`` (the real port when ``port`` was 0)."""
        target = f"{self.config.host}:{self.config.port}"
        if self._fleet is not None:
            self._fleet.placer.connect()  # OSError naming the cluster if it cannot
        try:
            if self.config.tls is not None:
                port = self._server.add_secure_port(target, self.config.tls.server_credentials())
            else:
                port = self._server.add_insecure_port(target)
        except (RuntimeError, ValueError) as exc:  # ValueError: unreadable TLS files
            raise OSError(f"cannot listen on {target}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot listen on {target}")
        self._server.start()
        self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self.address = f"{self.config.host}:{port}"
        return self.address

    def stop(self) -> None:
        """Refuse new work, ask every proxy to finalize, then kill and reap what is left."""
        with self._lock:
            self._stopping = True
            enclaves = list(self._enclaves.values())
        self._health.enter_graceful_shutdown()
        stopped = self._server.stop(grace=1.0)
        if self._fleet is not None:
            self._fleet.stop(enclaves)
        proxies = [e.proxy for e in enclaves if e.proxy is not None]
        for proxy in proxies:
            if proxy.process.poll() is None:
                proxy.process.terminate()  # the proxy finalizes on SIGTERM
        deadline = time.monotonic() + self.config.grace
        for proxy in proxies:
            reap(proxy, grace=max(0.0, deadline - time.monotonic()))
        with self._lock:  # the monitors would forget them a moment later; do it now
            for enclave in enclaves:
                self._enclaves.pop(enclave.enclave_id, None)
        stopped.wait(5.0)
        shutil.rmtree(self._workdir, ignore_errors=True)

    def enclave_count(self) -> int:
        """How many proxies are running."""
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
        return identity or f"peer:{context.peer()}"

    def provision(
        self,
        name: str,
        client: str,
        *,
        label: str = "",
        timeout: float | None = None,
        transport: str = "grpc",
    ) -> tuple[str, str, str, bytes]:
        """Start a proxy for ``client``; return (enclave id, address, token, proxy cert PEM).

        ``label`` (fleet mode only) asks for a host with that node label; ``timeout``
        bounds the wait for a free slot in the fleet; ``transport`` is the wire the
        proxy serves ("grpc" or "stream").
        """
        parsed = self._parse_label(label)
        with self._lock:
            if self._stopping:
                raise RefusedError(
                    grpc.StatusCode.UNAVAILABLE, "the provision server is shutting down"
                )
            if len(self._enclaves) >= self.config.max_enclaves:
                raise RefusedError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this server runs its maximum of {self.config.max_enclaves} enclaves; "
                    "try again later or another server",
                )
            mine = sum(1 for e in self._enclaves.values() if e.client == client)
            if mine >= self.config.max_per_client:
                raise RefusedError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"you already run {mine} enclaves here, the maximum per client; "
                    "destroy one first",
                )
            enclave_id = secrets.token_hex(8)
            enclave = _Enclave(enclave_id, name, client)
            self._enclaves[enclave_id] = enclave  # holds the slot while the proxy starts
        if self._fleet is not None:
            return self._fleet.place(enclave, parsed, timeout, transport)
        try:
            proxy, token = self._start_proxy(enclave_id, name, transport)
        except BaseException:
            with self._lock:
                del self._enclaves[enclave_id]
            raise
        certificate = b""
        if self.config.tls is not None:  # read it before the monitor may reap the directory
            try:
                certificate = (proxy.directory / "tls-cert.pem").read_bytes()
            except OSError:
                certificate = b""
            if not certificate:
                reap(proxy, grace=0.0)
                with self._lock:
                    del self._enclaves[enclave_id]
                raise RefusedError(
                    grpc.StatusCode.UNAVAILABLE,
                    "the enclave proxy ended before it could be handed over",
                )
        with self._lock:
            enclave.proxy = proxy
            enclave.started = time.monotonic()
        threading.Thread(
            target=self._monitor,
            args=(enclave, proxy),
            daemon=True,
            name=f"farside-proxy-{enclave_id}",
        ).start()
        log.info("provisioned %s (%s) for %s at %s", enclave_id, name, client, proxy.address)
        return enclave_id, proxy.address, token, certificate

    def _parse_label(self, label: str) -> tuple[str, str] | None:
        if not label:
            return None
        if self._fleet is None:
            raise RefusedError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "this server runs enclaves on one host and has no node labels; "
                "node_label is for a server in fleet mode",
            )
        from .fleet import parse_node_label

        try:
            return parse_node_label(label)
        except ValueError as exc:
            raise RefusedError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

    # ----------------------------------------------------------- single host

    def _start_proxy(
        self, enclave_id: str, name: str, transport: str = "grpc"
    ) -> tuple[ProxyProcess, str]:
        token = secrets.token_urlsafe(32)
        host = self.config.advertise or self.config.host
        extra = [*self._proxy_tls, "--report-status", *self._proxy_sandbox_args()]
        if self.config.platform_dir is not None:
            extra += ["--platform-key", "-"]  # on stdin: proxies never see the key's file
        error: EnclaveLoadError | None = None
        for port in self._candidate_ports():
            directory = self._workdir / enclave_id
            directory.mkdir(mode=0o700, exist_ok=True)
            command = proxy_command(
                f"{host}:{port}",
                python=self.config.python,
                idle_timeout=self.config.proxy_idle_timeout,
                transport=transport,
                extra=extra,
            )
            try:
                proxy = start_proxy(
                    command,
                    token=token,
                    directory=directory,
                    timeout=self.config.proxy_start_timeout,
                    name=name,
                    secret_input=self._platform_pem,
                )
            except EnclaveLoadError as exc:
                error = exc
                if "cannot listen" in str(exc):
                    continue  # that port is taken by someone else: try the next one
                break
            return proxy, token
        log.error("proxy for %s failed to start: %s", enclave_id, error)
        if (
            self.config.proxy_ports is not None
            and error is not None
            and ("cannot listen" in str(error))
        ):
            raise RefusedError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "no free port is left in this server's proxy port range",
            )
        raise RefusedError(grpc.StatusCode.INTERNAL, "the enclave proxy failed to start")

    def _proxy_sandbox_args(self) -> list[str]:
        args = ["--sandbox", self.config.proxy_sandbox]
        limits = self.config.proxy_limits
        for flag, value in (
            ("--memory-limit", limits.memory),
            ("--open-files-limit", limits.open_files),
            ("--cpu-limit", limits.cpu_seconds),
        ):
            if value is not None:
                args += [flag, str(value)]
        return args

    def _candidate_ports(self) -> list[int]:
        """Ports to try for a new proxy: any (0), or the free ones of --proxy-ports."""
        if self.config.proxy_ports is None:
            return [0]
        low, high = self.config.proxy_ports
        with self._lock:
            used = {
                int(e.proxy.address.rsplit(":", 1)[1])
                for e in self._enclaves.values()
                if e.proxy is not None
            }
        return [p for p in range(low, high + 1) if p not in used][:8]

    def _monitor(self, enclave: _Enclave, proxy: ProxyProcess) -> None:
        """Read the proxy's status lines until it exits, then reap it."""
        process = proxy.process
        assert process.stdout is not None
        for raw in process.stdout:
            parts = raw.decode("utf-8", "replace").split()
            if len(parts) == 3 and parts[0] == "status":
                enclave.measurement = "" if parts[1] == "-" else parts[1][:64]
                enclave.calls = int(parts[2]) if parts[2].isdigit() else enclave.calls
        code = reap(proxy, grace=self.config.grace)
        with self._lock:
            self._enclaves.pop(enclave.enclave_id, None)
        if code == 0:
            log.info("enclave %s ended; its proxy was reaped", enclave.enclave_id)
        else:
            log.warning(
                "the proxy of enclave %s exited with code %s; reaped", enclave.enclave_id, code
            )

    def release(self, enclave_id: str, client: str) -> None:
        """Stop the caller's proxy ``enclave_id`` (finalize on SIGTERM); unknown ids are fine."""
        with self._lock:
            enclave = self._enclaves.get(enclave_id)
            if enclave is None or enclave.client != client:
                return
            if enclave.placement is not None:
                enclave.released = True
                placement = enclave.placement
            elif enclave.proxy is None:
                return
            else:
                placement = None
                enclave.released = True
                process = enclave.proxy.process
        if placement is not None:
            assert self._fleet is not None
            self._fleet.release(placement)  # the proxy finalizes; the monitor frees the slot
            return
        try:  # after a clean session end the proxy is already on its way out
            process.wait(1.0)
        except subprocess.TimeoutExpired:
            process.terminate()  # it finalizes on SIGTERM; the monitor reaps it

    def list_enclaves(self) -> list[pb.EnclaveInfo]:
        """The running enclaves, for ``ListEnclaves``."""
        if self._fleet is not None:
            return self._fleet.list_enclaves()
        now = time.monotonic()
        host = self.config.advertise or self.config.host
        with self._lock:
            return [
                pb.EnclaveInfo(
                    enclave_id=e.enclave_id,
                    name=e.name,
                    client=e.client,
                    measurement=e.measurement,
                    uptime_seconds=now - e.started,
                    calls_served=e.calls,
                    address=e.proxy.address,
                    pid=e.proxy.process.pid,
                    host=host,
                )
                for e in self._enclaves.values()
                if e.proxy is not None
            ]

    def list_hosts(self) -> list[pb.HostInfo]:
        """The trusted hosts and their slots: the fleet's, or this one host."""
        if self._fleet is not None:
            return self._fleet.hosts()
        with self._lock:
            running = len(self._enclaves)
        return [
            pb.HostInfo(
                address=self.config.advertise or self.config.host,
                alive=True,
                slots_total=self.config.max_enclaves,
                slots_free=max(0, self.config.max_enclaves - running),
            )
        ]


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


class RefusedError(Exception):
    """A request the server turns down, with the status code to answer it with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Servicer(pb_grpc.ProvisionerServicer):  # type: ignore[misc]
    def __init__(self, server: ProvisionServer) -> None:
        self._server = server

    def Provision(self, request: pb.ProvisionRequest, context: Any) -> pb.ProvisionResponse:  # noqa: N802
        client = self._server.authenticate(context)
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
        try:
            enclave_id, address, token, certificate = self._server.provision(
                request.name,
                client,
                label=request.node_label,
                # leave a moment to answer before the caller's deadline passes
                timeout=None if remaining is None else remaining - 0.5,
                transport=request.transport or "grpc",
            )
        except RefusedError as exc:
            context.abort(exc.code, str(exc))
        return pb.ProvisionResponse(
            enclave_id=enclave_id,
            address=address,
            session_token=token,
            proxy_certificate=certificate,
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
        self._server.authenticate(context)
        _check_parsed(request, context)
        try:
            hosts = self._server.list_hosts()
        except RefusedError as exc:
            context.abort(exc.code, str(exc))
        return pb.ListEnclavesResponse(enclaves=self._server.list_enclaves(), hosts=hosts)
