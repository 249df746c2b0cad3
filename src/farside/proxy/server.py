"""The proxy process: ``RemoteEnclaveProxyServer`` hosts one enclave for one session.

It listens on one address, accepts exactly one session (the one presenting the
token its provisioner issued), loads the bundle that session sends, serves it,
and exits when the session ends, when no client arrives in time, when it is
signalled, or when the provisioner that started it dies.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import resource
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .._config import SandboxConfig, SandboxMode
from .._errors import EnclaveError, HostCallError
from .._process import set_parent_death_signal
from .._tls import TLSConfig
from ..attestation.agent import AgentAttester
from ..attestation.attester import Attester
from ..protocol import Role, SessionCore
from ..transport import factory
from ..transport.base import Admission, FrameSender, FrameSink
from ..transport.endpoint import Endpoint
from ..trusted.runtime import EnclaveRuntime
from .sandbox import Sandbox, enter_network_namespace

__all__ = ["RemoteEnclaveProxyServer"]

log = logging.getLogger("farside.proxy")

FINALIZE_GRACE = 5.0
_MAX_TOKEN_BYTES = 1024
MAX_FILE_BYTES = 16 * 2**20
"""The most any file the proxy writes may hold: its log, written by it or by enclave code."""


def tls_public_key_of(tls: TLSConfig) -> bytes:
    """DER SubjectPublicKeyInfo of the certificate a TLS config serves (the channel binding)."""
    pem = tls.cert if isinstance(tls.cert, bytes) else Path(str(tls.cert)).read_bytes()
    certificate = x509.load_pem_x509_certificate(pem)
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def ephemeral_tls(host: str, client_ca: str | None) -> TLSConfig:
    """A fresh key and self-signed certificate for this proxy alone (clients pin it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "farside proxy")])
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return TLSConfig(
        cert=certificate.public_bytes(serialization.Encoding.PEM),
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        client_ca=client_ca,
    )


class RemoteEnclaveProxyServer:
    """Serve one enclave session on ``listen`` (``unix:/path`` or ``host:port``)."""

    def __init__(
        self,
        listen: str,
        token: str,
        *,
        idle_timeout: float = 30.0,
        parent_pid: int | None = None,
        tls: TLSConfig | None = None,
        attester: Attester | None = None,
        max_workers: int = 256,
        worker_idle_timeout: float = 30.0,
        transport: str = "grpc",
        sandbox: Sandbox | None = None,
    ) -> None:
        self.sandbox = sandbox  # None: no sandbox at all (in-process tests)
        self._listen = listen
        self._tls = tls
        self._attester = attester  # the session's; None: a throwaway key (in-process tests)
        self._max_workers = max_workers
        self._worker_idle_timeout = worker_idle_timeout
        self.tls_public_key = tls_public_key_of(tls) if tls is not None else b""
        self._idle_timeout = idle_timeout
        self._parent_pid = parent_pid
        self._wake = threading.Event()
        self._stop_reason: str | None = None
        self._runtime: EnclaveRuntime | None = None
        self._endpoint: Endpoint | None = None
        self.transport = transport
        self._listener = factory.listen(
            transport,
            listen,
            admission=Admission(token),
            on_open=self._on_open,
            on_lost=self._on_lost,
            tls=tls,
        )
        self.address = ""

    def start(self) -> str:
        """Bind and start serving; return the address clients dial."""
        self.address = self._listener.start()
        if self._parent_pid is not None:
            set_parent_death_signal(signal.SIGTERM)
            if os.getppid() != self._parent_pid:  # it died before prctl took effect
                self.stop("the provisioner that started this proxy is gone")
        return self.address

    def stop(self, reason: str, *, from_signal: bool = False) -> None:
        """Ask the serving loop to end.

        From a signal handler, pass ``from_signal``: it only records the reason (the
        loop polls it within 0.25 s), because taking a lock there can deadlock when a
        second signal interrupts the first handler while it holds that lock.
        """
        if self._stop_reason is None:
            self._stop_reason = reason
        if not from_signal:
            self._wake.set()

    # ----------------------------------------------------------- session

    def _on_open(self, sender: FrameSender) -> FrameSink:
        attester, self._attester = self._attester, None  # one session, one attestation
        runtime = EnclaveRuntime(
            attester=attester,
            tls_public_key=self.tls_public_key,
            max_workers=self._max_workers,
            worker_idle_timeout=self._worker_idle_timeout,
            confine=self.sandbox.confine if self.sandbox is not None else None,
        )
        endpoint = Endpoint(
            SessionCore(Role.PROXY),
            sender,
            runtime,
            error_type=HostCallError,
            error_from_exception=runtime.error_from_exception,
        )
        runtime.install(endpoint)
        self._runtime, self._endpoint = runtime, endpoint
        log.info("session opened")
        self._wake.set()

        def feed(frames: list[Any]) -> None:
            endpoint.feed(frames)
            if endpoint.failure is not None:  # the client broke the protocol: end the session
                self.stop(f"the session failed: {endpoint.failure}")

        return feed

    def _on_lost(self, error: EnclaveError) -> None:
        if self._runtime is not None and self._runtime.close_received:
            return  # the client said goodbye, then hung up: that is the normal end
        log.warning("session lost: %s", error)
        if self._endpoint is not None:
            self._endpoint.fail(error)
        self.stop("the client's session stream broke")

    # ----------------------------------------------------------- lifecycle

    def status(self) -> tuple[str, int]:
        """(measurement hex once loaded, entry calls served so far), for the provisioner."""
        runtime = self._runtime
        if runtime is None:
            return "", 0
        return runtime.measurement.hex(), runtime.calls_served

    def serve(self) -> int:
        """Run until the session ends; return the process exit code."""
        started = time.monotonic()
        while True:
            runtime = self._runtime
            if self._stop_reason is not None:
                break
            if runtime is not None and runtime.ended.is_set():
                self._stop_reason = "the session ended"
                break
            if runtime is None and time.monotonic() - started > self._idle_timeout:
                self._stop_reason = f"no client connected within {self._idle_timeout:g} s"
                break
            if self._parent_pid is not None and os.getppid() != self._parent_pid:
                self._stop_reason = "the provisioner that started this proxy is gone"
                break
            self._wake.wait(0.25)
            self._wake.clear()
        log.info("shutting down: %s", self._stop_reason)
        self._finish()
        return 0 if runtime is not None or self._stop_reason == "the session ended" else 3

    def _finish(self) -> None:
        runtime = self._runtime
        if runtime is not None and self._endpoint is not None:
            if not runtime.close_received:
                self._finalize_abandoned(runtime)
            self._endpoint.flush_output()
        self._listener.finish()
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        self._listener.stop(grace=1.0)

    def _finalize_abandoned(self, runtime: EnclaveRuntime) -> None:
        """The client is gone without destroying us: give finalize() a bounded chance."""
        app = runtime.app
        if app is None or not runtime.initialized or runtime.finalized:
            return
        runtime.finalized = True

        def finalize() -> None:
            try:
                app.finalize(None)
            except Exception:
                log.exception("finalize() raised while the client was gone")

        done = threading.Event()

        def finalize_and_tell() -> None:
            try:
                finalize()
            finally:
                done.set()

        # On a thread inside the sandbox, like every thread that runs enclave code.
        runtime.start_enclave_thread(finalize_and_tell, "farside-finalize")
        if not done.wait(FINALIZE_GRACE):
            log.warning("finalize() did not return within %g s; exiting anyway", FINALIZE_GRACE)


def _cap_file_writes() -> None:
    """No file this process writes grows past ``MAX_FILE_BYTES``: its log (stderr) above all.

    Enclave code can write to the inherited stderr descriptor directly; without a cap it
    grew a provision server's ``proxy.log`` to 300 MB. With ``RLIMIT_FSIZE`` a write past
    the cap fails with ``EFBIG`` (``SIGXFSZ`` is ignored, so it does not kill the proxy);
    seccomp later refuses raising the limit again.
    """
    with contextlib.suppress(OSError, ValueError, AttributeError):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        cap = MAX_FILE_BYTES if hard == resource.RLIM_INFINITY else min(MAX_FILE_BYTES, hard)
        resource.setrlimit(resource.RLIMIT_FSIZE, (cap, cap))


def _read_token_line(fd: int) -> str:
    """The first line on ``fd``, read with ``os.read`` (no Python buffer keeps a copy of
    what follows), then the descriptor is pointed at /dev/null."""
    data = b""
    while not data.endswith(b"\n") and len(data) <= _MAX_TOKEN_BYTES:
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return data.decode("utf-8", "replace").strip() if len(data) <= _MAX_TOKEN_BYTES else ""


def _read_token(token_file: str | None, token_stdin: bool) -> str:
    if token_stdin:
        return _read_token_line(0)
    if token_file:
        with open(token_file, encoding="utf-8") as f:
            return f.read().strip()
    return os.environ.get("FARSIDE_SESSION_TOKEN", "")


def _announce_ready(address: str) -> None:
    """The line provisioners wait for, on the raw stdout descriptor."""
    os.write(1, f"farside-proxy ready {address}\n".encode())


def _report_status(server: RemoteEnclaveProxyServer, fd: int) -> None:
    """Tell the provisioner (on our stdout pipe) what it lists: measurement and calls served."""
    last: tuple[str, int] = ("", 0)
    while True:
        time.sleep(1.0)
        current = server.status()
        if current == last:
            continue
        measurement, calls = current
        try:
            os.write(fd, f"status {measurement or '-'} {calls}\n".encode())
        except OSError:
            return  # the provisioner is gone; the session goes on without it
        last = current


def run_proxy(
    listen: str,
    *,
    token_file: str | None,
    token_stdin: bool,
    idle_timeout: float,
    parent_pid: int | None,
    tls: TLSConfig | None = None,
    agent_fd: int | None = None,
    report_status: bool = False,
    tls_ephemeral: str | None = None,
    client_ca: str | None = None,
    max_workers: int = 256,
    worker_idle_timeout: float = 30.0,
    private_dir: str | None = None,
    transport: str = "grpc",
    sandbox: SandboxMode = "best-effort",
    limits: SandboxConfig | None = None,
) -> int:
    """``farside proxy``: serve one session, printing one ready line on stdout.

        With ``tls_ephemeral`` (the host clients dial), the proxy serves TLS with a fresh
        key and self-signed certificate of its own, written to ``tls-cert.pem`` in its
        working directory for the provisioner to hand to the client, which pins it.
        With ``report_status``, stdout stays open for status lines to the provisioner.
    ``agent_fd`` is this proxy's channel to the platform agent (inherited from the
    provisioner): the proxy never holds the platform key, and closes the channel once
    its evidence and sealing keys are made, before enclave code runs.
        ``sandbox`` and ``limits`` are the least confinement the enclave gets (a client may
        ask for more); a proxy on a Unix socket enters its own network namespace right away,
        while it has one thread. Returns only on a usage error; otherwise it ends the process
        itself.
    """
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"farside-proxy[{os.getpid()}] %(levelname)s %(message)s",
    )
    _cap_file_writes()
    token = _read_token(token_file, token_stdin)
    if not token:
        print(
            "farside proxy: no session token (use --token-stdin, --token-file or "
            "FARSIDE_SESSION_TOKEN)",
            file=sys.stderr,
        )
        return 2
    netns: str | None = None
    if sandbox != "off" and listen.startswith("unix:"):
        netns = enter_network_namespace()  # a path socket still reaches the client
        if netns:
            log.info("sandbox: no network namespace: %s", netns)
    confinement = Sandbox(
        mode=sandbox, limits=limits or SandboxConfig(), netns=netns, private_dir=private_dir
    )
    if tls_ephemeral:
        tls = ephemeral_tls(tls_ephemeral, client_ca)
        assert isinstance(tls.cert, bytes)
        Path("tls-cert.pem").write_bytes(tls.cert)
    attester = None
    if agent_fd is not None:
        try:
            attester = AgentAttester(socket.socket(fileno=agent_fd))
        except OSError as exc:
            print(f"farside proxy: --agent-fd {agent_fd} is not a socket: {exc}", file=sys.stderr)
            return 2
    server = RemoteEnclaveProxyServer(
        listen,
        token,
        idle_timeout=idle_timeout,
        parent_pid=parent_pid,
        tls=tls,
        attester=attester,
        max_workers=max_workers,
        worker_idle_timeout=worker_idle_timeout,
        transport=transport,
        sandbox=confinement,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.stop(f"received {signal.Signals(signum).name}", from_signal=True)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        address = server.start()
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"farside proxy: cannot listen on {listen}: {exc}", file=sys.stderr)
        return 2
    # The session may open (and the runtime take over sys.stdout/sys.stderr) as soon as
    # this line is out, so from here on only the raw descriptors 1 and 2 are used.
    _announce_ready(address)
    status_fd = os.dup(1)
    os.dup2(2, 1)  # stray writes to fd 1 go to the log
    code = 1
    try:
        if report_status:
            threading.Thread(
                target=_report_status,
                args=(server, status_fd),
                daemon=True,
                name="farside-status",
            ).start()
        else:
            os.close(status_fd)
        code = server.serve()
    finally:
        if private_dir:
            # Ours alone (the provisioner made it for us); it may be dead and unable to.
            shutil.rmtree(private_dir, ignore_errors=True)
        # Enclave threads may still be running enclave code: they must not keep us alive.
        logging.shutdown()
        os._exit(code)
