"""Helpers and fixtures for the provision-server tests: certificates, servers, stubs, processes.

Test modules import the fixtures they use from here. Everything they make is
undone in finalizers, even when the test fails: servers are stopped, loaded
enclaves destroyed, channels closed, subprocesses killed, temporary directories
removed; and a server's finalizer fails the test if one of its proxies is still
running after ``stop`` or if it left anything in its work directory.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import farside
from farside._devcerts import make_dev_certs
from farside._proto.v1 import provision_pb2 as pb, provision_pb2_grpc as pb_grpc
from farside.attestation.platform import init_platform
from farside.provision._spawn import read_line
from farside.provision.server import ProvisionServer, ProvisionServerConfig
from farside.transport import factory
from farside.transport.grpc import channel_credentials
from farside.untrusted._client import ClientTransport

from ._support import QUICKSTART, wait_until

__all__ = [
    "PKI",
    "QUICKSTART",
    "CertSet",
    "ServerFactory",
    "closed_port",
    "pki",
    "reaped",
    "servers",
]

PROMPTLY = 3.0  # seconds within which failures must surface
SESSION_MARKER_VAR = "FARSIDE_TEST_SESSION"  # set by tests/conftest.py for every child
READY_LINE = re.compile(r"farside provision-server listening on (\S+):(\d+)")


# --------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class CertSet:
    """One ``make_dev_certs`` output directory: a CA, a server and a client certificate."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"

    def client_tls(self, *, mutual: bool = True) -> farside.TLSConfig:
        """A client trusting this CA, presenting this set's client certificate if ``mutual``."""
        if not mutual:
            return farside.TLSConfig(ca=self.ca)
        return farside.TLSConfig(ca=self.ca, cert=self.client_cert, key=self.client_key)

    def server_tls(self, *, mutual: bool = True) -> farside.TLSConfig:
        """This set's server certificate, requiring client certificates of this CA if ``mutual``."""
        return farside.TLSConfig(
            cert=self.server_cert, key=self.server_key, client_ca=self.ca if mutual else None
        )


@dataclass(frozen=True)
class PKI:
    """Two unrelated development CAs, a third for a second client identity, a platform key."""

    root: Path
    main: CertSet  # the server's CA; its client certificate is cert:farside-client
    other: CertSet  # an unrelated CA (wrong CA / client certificate from another CA)
    second: CertSet  # another CA (its own name) with only a client: cert:second-client
    platform: Path

    @property
    def platform_pub(self) -> Path:
        return self.platform / "platform.pub"

    def policy(self) -> farside.AttestationPolicy:
        """What the tests' clients require: a debug enclave on this PKI's trusted platform."""
        return farside.AttestationPolicy(platform_keys=(self.platform_pub,), allow_debug=True)


def make_client_ca(out: Path, ca_name: str, client_name: str) -> None:
    """Write ca.pem, client.pem and client.key: a CA named ``ca_name`` and one client."""
    out.mkdir(mode=0o700)
    now = datetime.datetime.now(datetime.UTC)

    def issue(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: Any, ca: bool
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue(ca_name, ca_key, ca_name, ca_key, ca=True)
    client = issue(client_name, client_key, ca_name, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (out / "ca.pem").write_bytes(ca.public_bytes(pem))
    (out / "client.pem").write_bytes(client.public_bytes(pem))
    key = client_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(out / "client.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)


@pytest.fixture(scope="module")
def pki() -> Iterator[PKI]:
    """Certificates and a platform identity for a module's tests, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="farside-test-pki-"))
    try:
        make_dev_certs(root / "main", ["127.0.0.1", "localhost"])
        make_dev_certs(root / "other", ["127.0.0.1", "localhost"])
        make_client_ca(root / "second", "second test CA", "second-client")
        init_platform(root / "platform")
        yield PKI(
            root,
            CertSet(root / "main"),
            CertSet(root / "other"),
            CertSet(root / "second"),
            root / "platform",
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------- processes


def _stat_fields(pid: int) -> list[str]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return []
    return stat.rpartition(")")[2].split()


def reaped(pid: int, parent: int | None = None) -> bool:
    """True once ``pid`` is gone for good: not running and not a zombie left to ``parent``.

    Without ``parent`` (an orphan, which init reaps), an exited zombie counts as gone.
    """
    fields = _stat_fields(pid)
    if not fields:
        return True
    if parent is None:
        return fields[0] in ("Z", "X")
    # A different parent means the pid was reused by someone else's process.
    return parent is not None and fields[1] != str(parent)


def farside_proxies(*, marker: bool = True) -> list[int]:
    """Live (non-zombie) farside proxy processes that this test session started.

    Children of this process, and any process carrying this session's marker in
    its environment (proxies of a provision server run as a subprocess).
    """
    me = os.getpid()
    tag = f"{SESSION_MARKER_VAR}={os.environ.get(SESSION_MARKER_VAR, '-')}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        try:
            args = entry.joinpath("cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"proxy" not in args or not any(b"farside" in a for a in args):
            continue
        fields = _stat_fields(pid)
        if not fields or fields[0] in ("Z", "X"):
            continue
        ours = fields[1] == str(me)
        if not ours and marker:
            with contextlib.suppress(OSError):
                ours = tag in entry.joinpath("environ").read_bytes().split(b"\0")
        if ours:
            found.append(pid)
    return found


def kill(pid: int) -> None:
    """SIGKILL ``pid`` (and reap it if it is our child)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
            time.sleep(0.01)


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def stop_process(process: subprocess.Popen[Any], *, grace: float = 10.0) -> int:
    """SIGTERM, wait ``grace`` s, then SIGKILL; close its pipes; return its exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    return process.returncode


class ServerProcess:
    """``python -m farside provision-server ...`` run as a subprocess (stderr to a file)."""

    def __init__(
        self,
        args: list[str],
        *,
        log: Path,
        prefix: list[str] | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.log = log
        self.workdir = workdir
        with log.open("wb") as stderr:  # the child has its own descriptor
            self.process: subprocess.Popen[bytes] = subprocess.Popen(
                [*(prefix or []), sys.executable, "-m", "farside", "provision-server", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        self.address = ""
        self.ready_line = ""

    def wait_ready(self, timeout: float = 20.0) -> str:
        """Read the one ready line; return ``host:port``."""
        assert self.process.stdout is not None
        line = read_line(self.process.stdout, timeout)
        match = READY_LINE.fullmatch(line or "")
        if match is None:
            code = self.stop()
            pytest.fail(
                f"provision-server did not become ready (line {line!r}, exit {code}):\n"
                + self.stderr()
            )
        self.ready_line = line or ""
        self.address = f"{match.group(1)}:{match.group(2)}"
        return self.address

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, grace: float = 10.0) -> int:
        return stop_process(self.process, grace=grace)


# --------------------------------------------------------------------- servers


class ServerFactory:
    """Start in-process provision servers; the finalizer undoes everything they did."""

    def __init__(self, pki: PKI, root: Path) -> None:
        self.pki = pki
        self.root = root
        self.servers: list[tuple[ProvisionServer, Path]] = []
        self.seen_pids: set[int] = set()
        self._provisioners: list[farside.RemoteProvision] = []
        self._channels: list[grpc.Channel] = []
        self._clients: list[farside.EnclaveClient] = []
        self._transports: list[ClientTransport] = []

    # servers and clients

    def __call__(self, **overrides: Any) -> ProvisionServer:
        """A started server: mTLS with the main CA, the PKI's platform key, port 0."""
        workdir = Path(tempfile.mkdtemp(prefix="work-", dir=self.root))
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "tls": self.pki.main.server_tls(),
            "platform_dir": self.pki.platform,
            "workdir": workdir,
            "proxy_start_timeout": 20.0,
            "grace": 3.0,
        }
        settings.update(overrides)
        server = ProvisionServer(ProvisionServerConfig(**settings))
        self.servers.append((server, workdir))
        server.start()
        return server

    def remote(
        self,
        server: ProvisionServer | str,
        tls: farside.TLSConfig | None = None,
        token: str | None = None,
        *,
        default_tls: bool = True,
    ) -> farside.RemoteProvision:
        """A ``RemoteProvision`` for ``server`` (mTLS with the main client cert by default)."""
        address = server if isinstance(server, str) else server.address
        if tls is None and default_tls:
            tls = self.pki.main.client_tls()
        provision = farside.RemoteProvision(address, tls=tls, token=token)
        self._provisioners.append(provision)
        return provision

    def load(self, provision: farside.Provisioner, **kwargs: Any) -> farside.EnclaveClient:
        """Load the quickstart enclave; the finalizer destroys it if the test did not."""
        kwargs.setdefault("policy", self.pki.policy())
        client = farside.load(QUICKSTART, provision=provision, **kwargs)
        self._clients.append(client)
        return client

    def channel(
        self, server: ProvisionServer | str, tls: farside.TLSConfig | None = None
    ) -> grpc.Channel:
        """A secure channel to ``server`` (main client certificate by default)."""
        address = server if isinstance(server, str) else server.address
        tls = tls if tls is not None else self.pki.main.client_tls()
        channel = grpc.secure_channel(address, channel_credentials(tls))
        self._channels.append(channel)
        return channel

    def stub(
        self, server: ProvisionServer | str, tls: farside.TLSConfig | None = None
    ) -> pb_grpc.ProvisionerStub:
        return pb_grpc.ProvisionerStub(self.channel(server, tls))

    def session(
        self, lease: pb.ProvisionResponse, token: str, lease_transport: str = "grpc"
    ) -> tuple[ClientTransport, list[BaseException], threading.Event]:
        """Open a raw session stream to a provisioned proxy, presenting ``token``.

        The channel pins the proxy's own certificate and presents the main client
        certificate; ``lease_transport`` is the wire the request asked for (a request
        that names none gets gRPC). Returns the transport, its loss record and its
        loss event.
        """
        lost: list[BaseException] = []
        done = threading.Event()

        def on_lost(error: BaseException) -> None:
            lost.append(error)
            done.set()

        tls = farside.TLSConfig(
            ca=lease.proxy_certificate,
            cert=self.pki.main.client_cert,
            key=self.pki.main.client_key,
        )
        transport = factory.connect(lease_transport, lease.address, token=token, tls=tls)
        self._transports.append(transport)
        transport.start(lambda frames: None, on_lost)
        return transport, lost, done

    # what a server says

    def listing(
        self, server: ProvisionServer, stub: pb_grpc.ProvisionerStub | None = None
    ) -> list[pb.EnclaveInfo]:
        """``ListEnclaves`` over the wire (or the server's own list without a stub)."""
        if stub is None:
            infos = server.list_enclaves()
        else:
            infos = list(stub.ListEnclaves(pb.ListEnclavesRequest(), timeout=10).enclaves)
        self.seen_pids.update(info.pid for info in infos)
        return infos

    def info(self, server: ProvisionServer, name: str) -> pb.EnclaveInfo | None:
        """The listing of the enclave called ``name``, or None."""
        for info in self.listing(server):
            if info.name == name:
                return info
        return None

    def assert_serves(
        self,
        server: ProvisionServer,
        tls: farside.TLSConfig | None = None,
        token: str | None = None,
    ) -> None:
        """A good client can still load, call and destroy an enclave; nothing is left."""
        before = server.enclave_count()
        provision = self.remote(server, tls, token)
        with self.load(provision) as client:
            sealed = client.call("encrypt", "still serving")
            assert client.call("decrypt", sealed) == "still serving"
            assert self.info(server, client.name) is not None
        assert wait_until(lambda: server.enclave_count() == before, 10), self.listing(server)

    # teardown

    def close(self) -> None:
        problems: list[str] = []
        for transport in self._transports:
            with contextlib.suppress(Exception):
                transport.close(timeout=1.0)
        for client in self._clients:
            if not client.closed:
                with contextlib.suppress(Exception):
                    farside.EnclaveManager.instance().destroy_enclave(client, skip_finalize=True)
        for server, workdir in self.servers:
            with contextlib.suppress(Exception):
                self.listing(server)
            server.stop()
            leftovers = [p.name for p in workdir.iterdir()] if workdir.exists() else []
            if leftovers:
                problems.append(f"server work directory {workdir} not empty: {leftovers}")
        for provision in self._provisioners:
            provision.close()
        for channel in self._channels:
            channel.close()
        me = os.getpid()
        running = [pid for pid in self.seen_pids if not wait_until(lambda p=pid: reaped(p, me), 5)]
        for pid in running:
            kill(pid)
        if running:
            problems.append(f"proxies still running after stop() (killed now): {running}")
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def servers(pki: PKI) -> Iterator[ServerFactory]:
    """Start provision servers with ``servers(**config)``; all are stopped and checked after."""
    root = Path(tempfile.mkdtemp(prefix="farside-test-servers-"))
    factory = ServerFactory(pki, root)
    try:
        yield factory
    finally:
        try:
            factory.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)
