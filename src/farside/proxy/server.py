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

from .. import tracing
from .._config import SandboxConfig, SandboxMode
from .._errors import EnclaveError, HostCallError
from .._logging import configure_logging
from .._process import set_parent_death_signal
from .._tls import TLSConfig
from ..attestation.agent import AgentAttester
from ..attestation.attester import Attester
from ..metrics.counters import ProxyCounters
from ..metrics.frames import CountingSender, counting_sink
from ..metrics.report import REPORT_PERIOD, report_lines
from ..protocol import Role, SessionCore
from ..transport import factory
from ..transport.base import Admission, FrameSender, FrameSink
from ..transport.endpoint import Endpoint
from ..trusted.runtime import EnclaveRuntime
from .sandbox import Sandbox, enter_network_namespace

__all__ = ["ATTESTERS", "RemoteEnclaveProxyServer", "make_attester"]

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
        transport: str = factory.DEFAULT_TRANSPORT,
        sandbox: Sandbox | None = None,
        counters: ProxyCounters | None = None,
    ) -> None:
        self.sandbox = sandbox  # None: no sandbox at all (in-process tests)
        self.counters = counters  # None: nothing is counted (no one asked for metrics)
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
        self._outcome = "stopped"  # how the session ended, for metrics (SESSION_OUTCOMES)
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

    def stop(self, reason: str, *, from_signal: bool = False, outcome: str = "stopped") -> None:
        """Ask the serving loop to end.

        From a signal handler, pass ``from_signal``: it only records the reason (the
        loop polls it within 0.25 s), because taking a lock there can deadlock when a
        second signal interrupts the first handler while it holds that lock.
        ``outcome`` is how the session ended, for metrics.
        """
        if self._stop_reason is None:
            self._stop_reason = reason
            self._outcome = outcome
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
            counters=self.counters,
        )
        if self.counters is not None:
            sender = CountingSender(sender, self.counters.add_sent)
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

        def feed(frames: list[Any], blobs: Any = ()) -> None:
            endpoint.feed(frames, blobs)
            if endpoint.failure is not None:  # the client broke the protocol: end the session
                outcome = "closed" if runtime.close_received else "lost"
                self.stop(f"the session failed: {endpoint.failure}", outcome=outcome)

        if self.counters is not None:
            return counting_sink(feed, self.counters.add_received)
        return feed

    def _on_lost(self, error: EnclaveError) -> None:
        if self._runtime is not None and self._runtime.close_received:
            return  # the client said goodbye, then hung up: that is the normal end
        log.warning("session lost: %s", error)
        if self._endpoint is not None:
            self._endpoint.fail(error)
        self.stop("the client's session stream broke", outcome="lost")

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
                self._outcome = "closed" if runtime.close_received else "lost"
                break
            if runtime is None and time.monotonic() - started > self._idle_timeout:
                self._stop_reason = f"no client connected within {self._idle_timeout:g} s"
                self._outcome = "no_client"
                break
            if self._parent_pid is not None and os.getppid() != self._parent_pid:
                self._stop_reason = "the provisioner that started this proxy is gone"
                break
            self._wake.wait(0.25)
            self._wake.clear()
        log.info("shutting down: %s", self._stop_reason)
        if self.counters is not None:
            self.counters.end_session(self._outcome)
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


class _StatusReporter:
    """Tells the provisioner, on our stdout pipe, what it lists and counts.

    Every ``REPORT_PERIOD`` s, the lines of ``farside.metrics.report``'s grammar that
    changed since the last report; ``final`` writes the last ones before the proxy exits.
    """

    def __init__(self, server: RemoteEnclaveProxyServer, fd: int) -> None:
        self._server = server
        self._fd = fd
        self._lock = threading.Lock()
        self._written: dict[str, bytes] = {}
        self._gone = False

    def run(self) -> None:
        while not self._gone:
            time.sleep(REPORT_PERIOD)
            self.report()

    def report(self) -> None:
        measurement, calls = self._server.status()
        counters = self._server.counters
        lines = report_lines(
            counters.snapshot() if counters is not None else None, measurement, calls
        )
        with self._lock:
            changed = {k: v for k, v in lines.items() if self._written.get(k) != v}
            if not changed or self._gone:
                return
            try:
                os.write(self._fd, b"".join(changed.values()))
            except OSError:
                self._gone = True  # the provisioner is gone; the session goes on without it
                return
            self._written.update(changed)

    def final(self) -> None:
        self.report()
        with self._lock:
            self._gone = True


def _bind_metrics(
    address: str | None,
    counters: ProxyCounters | None,
    holder: list[RemoteEnclaveProxyServer],
) -> Any:
    """The proxy's ``/metrics`` server, bound but not serving yet (None without an address)."""
    if address is None or counters is None:
        return None
    from ..metrics.exporter import MetricsServer, proxy_families

    def collect() -> list[Any]:
        running = bool(holder) and holder[0]._runtime is not None
        return proxy_families(counters.snapshot(), running=running)

    return MetricsServer(address, collect)


def _configure_tracing() -> None:
    """Spans to the exporter ``OTEL_TRACES_EXPORTER`` names, if any (``farside.tracing``)."""
    try:
        traced = tracing.configure_from_environment("farside-proxy")
    except (ImportError, ValueError) as exc:
        log.warning("tracing is off: %s", exc)
        return
    if traced:
        log.info("tracing: spans go to the %s exporter", traced)


def _last_words(reporter: _StatusReporter | None) -> None:
    """The last report (how the session ended) and the last spans, each within 2 s."""
    for last in (reporter.final if reporter is not None else None, tracing.shutdown):
        if last is not None:
            ending = threading.Thread(target=last, daemon=True, name="farside-last-words")
            ending.start()
            ending.join(2.0)


def _serve_and_exit(
    server: RemoteEnclaveProxyServer,
    address: str,
    report_status: bool,
    exporter: Any,
    private_dir: str | None,
) -> None:
    """Announce the address, serve the session, then end the process."""
    # The session may open (and the runtime take over sys.stdout/sys.stderr) as soon as
    # this line is out, so from here on only the raw descriptors 1 and 2 are used.
    _announce_ready(address)
    status_fd = os.dup(1)
    os.dup2(2, 1)  # stray writes to fd 1 go to the log
    code = 1
    reporter = None
    if exporter is not None:
        exporter.start()
        log.info("serving metrics on http://%s/metrics", exporter.address)
    try:
        if report_status:
            reporter = _StatusReporter(server, status_fd)
            threading.Thread(target=reporter.run, daemon=True, name="farside-status").start()
        else:
            os.close(status_fd)
        code = server.serve()
    finally:
        _last_words(reporter)
        if private_dir:
            # Ours alone (the provisioner made it for us); it may be dead and unable to.
            shutil.rmtree(private_dir, ignore_errors=True)
        # Enclave threads may still be running enclave code: they must not keep us alive.
        logging.shutdown()
        os._exit(code)


ATTESTERS = ("sim", "tsm", "nsm")
"""``farside proxy --attester``: the platform agent, configfs-tsm (TDX, SEV-SNP), the Nitro NSM."""


def make_attester(
    kind: str,
    *,
    agent_fd: int | None = None,
    tsm_root: str | None = None,
    nsm_device: str | None = None,
) -> Attester | None:
    """The attester ``farside proxy --attester KIND`` uses; ``ValueError`` saying what is wrong.

    ``sim``: the platform agent's channel ``agent_fd`` (None without one: evidence
    signed by a throwaway key no client trusts). ``tsm``/``nsm``: a
    ``HardwareAttester`` over configfs-tsm at ``tsm_root`` or the NSM at
    ``nsm_device``; it asks the TEE what it is now, so a machine without one fails
    here and not at a client's load.
    """
    if kind not in ATTESTERS:
        raise ValueError(f"--attester is one of {', '.join(ATTESTERS)}, not {kind!r}")
    if kind == "sim":
        if tsm_root is not None or nsm_device is not None:
            raise ValueError("--tsm-root and --nsm-device go with --attester tsm or nsm")
        if agent_fd is None:
            return None
        try:
            return AgentAttester(socket.socket(fileno=agent_fd))
        except OSError as exc:
            raise ValueError(f"--agent-fd {agent_fd} is not a socket: {exc}") from None
    if agent_fd is not None:
        raise ValueError(
            f"--agent-fd is the sim attester's channel to a platform agent; --attester {kind} "
            "takes its evidence from the TEE itself"
        )
    from .._errors import AttestationError
    from ..attestation.hardware.attester import HardwareAttester
    from ..attestation.hardware.nsm import DEFAULT_NSM_DEVICE, NsmAttester
    from ..attestation.hardware.tsm import DEFAULT_TSM_ROOT, TsmAttester

    if (kind == "tsm" and nsm_device is not None) or (kind == "nsm" and tsm_root is not None):
        raise ValueError("--tsm-root goes with --attester tsm, --nsm-device with --attester nsm")
    device = nsm_device or DEFAULT_NSM_DEVICE
    if kind == "nsm" and not os.path.exists(device):
        raise ValueError(f"--attester nsm: there is no NSM at {device} (is this a Nitro enclave?)")
    try:
        if kind == "tsm":
            hardware = HardwareAttester(TsmAttester(tsm_root or DEFAULT_TSM_ROOT))
        else:
            hardware = HardwareAttester(NsmAttester(device))
    except AttestationError as exc:
        raise ValueError(f"--attester {kind}: {exc}") from None
    log.info("attester %s: this machine gives %s evidence", kind, hardware.format)
    return hardware


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
    transport: str = factory.DEFAULT_TRANSPORT,
    sandbox: SandboxMode = "best-effort",
    limits: SandboxConfig | None = None,
    attester: str = "sim",
    tsm_root: str | None = None,
    nsm_device: str | None = None,
    report_metrics: bool = False,
    metrics_address: str | None = None,
    log_level: str = "info",
    log_format: str = "text",
) -> int:
    """``farside proxy``: serve one session, printing one ready line on stdout.

        With ``tls_ephemeral`` (the host clients dial), the proxy serves TLS with a fresh
        key and self-signed certificate of its own, written to ``tls-cert.pem`` in its
        working directory for the provisioner to hand to the client, which pins it.
        With ``report_status``, stdout stays open for status lines to the provisioner.
    ``agent_fd`` is this proxy's channel to the platform agent (inherited from the
    provisioner): the proxy never holds the platform key, and closes the channel once
    its evidence and sealing keys are made, before enclave code runs. ``attester``
    is ``make_attester``'s choice: "sim" (that channel), "tsm" or "nsm" (the TEE's
    own evidence; ``tsm_root``/``nsm_device`` say where its interface is).
        ``sandbox`` and ``limits`` are the least confinement the enclave gets (a client may
        ask for more); a proxy on a Unix socket enters its own network namespace right away,
        while it has one thread. Returns only on a usage error; otherwise it ends the process
        itself.
    ``report_metrics`` adds the session's counters to the status lines (a provision server
    with metrics asks for them); ``metrics_address`` serves them on ``/metrics`` as well.
    Tracing is configured from ``OTEL_TRACES_EXPORTER`` (``farside.tracing``).
    """
    configure_logging(log_level, log_format, name=f"farside-proxy[{os.getpid()}]")
    _cap_file_writes()
    token = _read_token(token_file, token_stdin)
    if not token:
        print(
            "farside proxy: no session token (use --token-stdin, --token-file or "
            "FARSIDE_SESSION_TOKEN)",
            file=sys.stderr,
        )
        return 2
    counters = ProxyCounters(transport=transport) if report_metrics or metrics_address else None
    holder: list[RemoteEnclaveProxyServer] = []  # the server, once it exists
    try:  # bound now, in the network namespace the scraper reaches; served later
        exporter = _bind_metrics(metrics_address, counters, holder)
    except (OSError, ValueError) as exc:
        print(f"farside proxy: {exc}", file=sys.stderr)
        return 2
    netns: str | None = None
    if sandbox != "off" and listen.startswith("unix:"):
        netns = enter_network_namespace()  # a path socket still reaches the client
        if netns:
            log.info("sandbox: no network namespace: %s", netns)
    _configure_tracing()  # after the namespace: an exporter may start threads
    confinement = Sandbox(
        mode=sandbox, limits=limits or SandboxConfig(), netns=netns, private_dir=private_dir
    )
    if tls_ephemeral:
        tls = ephemeral_tls(tls_ephemeral, client_ca)
        assert isinstance(tls.cert, bytes)
        Path("tls-cert.pem").write_bytes(tls.cert)
    try:
        chosen = make_attester(
            attester, agent_fd=agent_fd, tsm_root=tsm_root, nsm_device=nsm_device
        )
    except ValueError as exc:
        print(f"farside proxy: {exc}", file=sys.stderr)
        return 2
    server = RemoteEnclaveProxyServer(
        listen,
        token,
        idle_timeout=idle_timeout,
        parent_pid=parent_pid,
        tls=tls,
        attester=chosen,
        max_workers=max_workers,
        worker_idle_timeout=worker_idle_timeout,
        transport=transport,
        sandbox=confinement,
        counters=counters,
    )
    holder.append(server)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.stop(f"received {signal.Signals(signum).name}", from_signal=True)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        address = server.start()
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"farside proxy: cannot listen on {listen}: {exc}", file=sys.stderr)
        return 2
    _serve_and_exit(server, address, report_status, exporter, private_dir)
    return 1  # not reached: _serve_and_exit ends the process
