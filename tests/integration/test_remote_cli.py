"""The remote-provisioning commands, run as the operator and the user run them.

``farside certs``, ``farside platform init``, ``farside provision-server`` as a
subprocess (its proxies carry the test session's marker, so the suite's leak
check covers them; each test also checks explicitly), and ``farside demo
--remote``. Every server is stopped, and every file removed, in finalizers.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

import farside
from farside._proto.v1 import provision_pb2 as pb, provision_pb2_grpc as pb_grpc
from farside.transport.grpc import channel_credentials

from ._provision import (
    PROMPTLY,
    READY_LINE,
    CertSet,
    ServerProcess,
    closed_port,
    farside_proxies,
    reaped,
)
from ._support import QUICKSTART, wait_until

HEX_LINE = re.compile(r"[0-9a-f]+")
TOKEN = "a-shared-bearer-token-for-the-cli-tests"


def farside_cli(
    *args: str, cwd: Path | None = None, timeout: float = 45
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m farside ARGS`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "farside", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A private temporary directory, removed after the test whatever happened."""
    root = Path(tempfile.mkdtemp(prefix="farside-test-cli-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def keys() -> Iterator[tuple[CertSet, Path]]:
    """Certificates and a platform identity made with the CLI, shared by the module."""
    root = Path(tempfile.mkdtemp(prefix="farside-test-cli-keys-"))
    try:
        done = farside_cli("certs", "--out", str(root / "certs"), "--host", "127.0.0.1")
        assert done.returncode == 0, done.stderr
        done = farside_cli("platform", "init", "--dir", str(root / "platform"))
        assert done.returncode == 0, done.stderr
        (root / "token").write_text(TOKEN + "\n")
        (root / "wrong-token").write_text("not-" + TOKEN + "\n")
        yield CertSet(root / "certs"), root / "platform"
    finally:
        shutil.rmtree(root, ignore_errors=True)


ServerStarter = Callable[..., ServerProcess]


@pytest.fixture
def start_server(keys: tuple[CertSet, Path], scratch: Path) -> Iterator[ServerStarter]:
    """Start ``farside provision-server`` subprocesses (mTLS by default); stop them after."""
    certs, platform = keys
    started: list[ServerProcess] = []

    def start(*extra: str, mtls: bool = True, token: bool = False) -> ServerProcess:
        workdir = Path(tempfile.mkdtemp(prefix="work-", dir=scratch))
        args = ["--port", "0", "--tls-cert", str(certs.server_cert)]
        args += ["--tls-key", str(certs.server_key), "--platform-dir", str(platform)]
        args += ["--workdir", str(workdir)]
        if mtls:
            args += ["--client-ca", str(certs.ca)]
        if token:
            args += ["--token-file", str(platform.parent / "token")]
        log = scratch / f"server-{len(started)}.log"
        server = ServerProcess([*args, *extra], log=log, workdir=workdir)
        started.append(server)
        server.wait_ready()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
        left = [p for s in started if s.workdir for p in s.workdir.iterdir()]
        assert left == [], f"the provision server left files behind: {left}"


def demo_args(certs: CertSet, platform: Path, *, mtls: bool = True) -> list[str]:
    args = ["--tls-ca", str(certs.ca), "--platform-key", str(platform / "platform.pub")]
    if mtls:
        args += ["--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key)]
    return args


def assert_demo_output(done: subprocess.CompletedProcess[str], message: str) -> None:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Encrypted message:"
    assert HEX_LINE.fullmatch(lines[1])
    assert len(bytes.fromhex(lines[1])) == 12 + len(message.encode()) + 16
    assert lines[2] == f"Decrypted inside the enclave: {message}"
    assert "Traceback" not in done.stderr


def server_proxies(server: ServerProcess) -> list[int]:
    """Running proxies whose parent is ``server``."""
    parent = str(server.process.pid)
    found = []
    for pid in farside_proxies():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[1] == parent:
            found.append(pid)
    return found


# ----------------------------------------------------------------------- certs and keys


def test_certs_command(scratch: Path) -> None:
    out = scratch / "certs"
    done = farside_cli("certs", "--out", str(out), "--host", "127.0.0.1", "--host", "farside.test")
    assert done.returncode == 0, done.stderr
    names = {"ca.pem", "server.pem", "server.key", "client.pem", "client.key"}
    assert {p.name for p in out.iterdir()} == names
    for name in ("server.key", "client.key"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["farside.test"]
    client = x509.load_pem_x509_certificate((out / "client.pem").read_bytes())
    [common_name] = client.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert common_name.value == "farside-client"
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    assert server.issuer == ca.subject
    assert client.issuer == ca.subject

    before = (out / "ca.pem").read_bytes()
    again = farside_cli("certs", "--out", str(out), "--host", "127.0.0.1")
    assert again.returncode == 1
    assert "--force" in again.stderr
    assert "Traceback" not in again.stderr
    assert (out / "ca.pem").read_bytes() == before
    forced = farside_cli("certs", "--out", str(out), "--host", "127.0.0.1", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (out / "ca.pem").read_bytes() != before


def test_platform_init_command(scratch: Path) -> None:
    directory = scratch / "platform"
    done = farside_cli("platform", "init", "--dir", str(directory))
    assert done.returncode == 0, done.stderr
    key, pub = directory / "platform.key", directory / "platform.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) & 0o077 in (0, 0o044)
    assert b"PRIVATE KEY" in key.read_bytes()
    assert b"PUBLIC KEY" in pub.read_bytes()
    assert sorted(p.name for p in directory.iterdir()) == ["platform.key", "platform.pub"]

    before = key.read_bytes()
    again = farside_cli("platform", "init", "--dir", str(directory))
    assert again.returncode == 1
    assert "--force" in again.stderr
    assert "Traceback" not in again.stderr
    assert key.read_bytes() == before
    forced = farside_cli("platform", "init", "--dir", str(directory), "--force")
    assert forced.returncode == 0, forced.stderr
    assert key.read_bytes() != before
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


# ----------------------------------------------------------------------- server and demo


def test_provision_server_and_remote_demo(
    start_server: ServerStarter, keys: tuple[CertSet, Path], scratch: Path
) -> None:
    certs, platform = keys
    server = start_server()
    assert READY_LINE.fullmatch(server.ready_line)
    assert server.address.startswith("127.0.0.1:")
    assert int(server.address.rpartition(":")[2]) > 0
    done = farside_cli(
        "demo",
        "--remote",
        server.address,
        *demo_args(certs, platform),
        "--message",
        "Asylo Rocks",
        cwd=scratch,
    )
    assert_demo_output(done, "Asylo Rocks")
    started = time.monotonic()
    assert server.stop() == 0, server.stderr()
    assert time.monotonic() - started < 5
    assert server_proxies(server) == []
    assert "Traceback" not in server.stderr()


def test_sigterm_with_a_running_enclave(
    start_server: ServerStarter, keys: tuple[CertSet, Path]
) -> None:
    certs, platform = keys
    server = start_server()
    tls = certs.client_tls()
    provision = farside.RemoteProvision(server.address, tls=tls)
    channel = grpc.secure_channel(server.address, channel_credentials(tls))
    client = None
    try:
        policy = farside.AttestationPolicy(
            platform_keys=(platform / "platform.pub",), allow_debug=True
        )
        client = farside.load(QUICKSTART, provision=provision, policy=policy)
        assert client.call("decrypt", client.call("encrypt", "x")) == "x"
        listing = pb_grpc.ProvisionerStub(channel).ListEnclaves(
            pb.ListEnclavesRequest(), timeout=10
        )
        [info] = listing.enclaves
        assert info.name == client.name
        assert server_proxies(server) == [info.pid]

        server.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert server.process.wait(10) == 0, server.stderr()
        assert time.monotonic() - started < 8
        assert wait_until(lambda: reaped(info.pid), 5), "the proxy outlived the server"
        assert "finalizing 1 enclave" in server.stderr()
        started = time.monotonic()
        with pytest.raises(farside.EnclaveUnavailableError):
            client.call("encrypt", "y")
        assert time.monotonic() - started < PROMPTLY
    finally:
        if client is not None:
            farside.EnclaveManager.instance().destroy_enclave(client, skip_finalize=True)
        provision.close()
        channel.close()


def test_server_crash_leaves_sessions_serving(
    start_server: ServerStarter, keys: tuple[CertSet, Path]
) -> None:
    """DESIGN.md: a crashed server's proxies keep serving and still end with their session."""
    certs, platform = keys
    server = start_server()
    provision = farside.RemoteProvision(server.address, tls=certs.client_tls())
    policy = farside.AttestationPolicy(platform_keys=(platform / "platform.pub",), allow_debug=True)
    client = None
    try:
        client = farside.load(QUICKSTART, provision=provision, policy=policy)
        [pid] = server_proxies(server)
        server.process.kill()
        server.process.wait(10)
        time.sleep(1.5)  # the proxy's next status line meets a closed pipe
        assert not reaped(pid)
        for word in ("after", "the", "crash"):
            assert client.call("decrypt", client.call("encrypt", word)) == word
        started = time.monotonic()
        farside.EnclaveManager.instance().destroy_enclave(client)
        assert time.monotonic() - started < PROMPTLY
        assert wait_until(lambda: reaped(pid), 10), "the proxy outlived its session"
    finally:
        if client is not None:
            farside.EnclaveManager.instance().destroy_enclave(client, skip_finalize=True)
        provision.close()
        if server.workdir is not None:  # a crashed server cleans nothing up: we do
            for leftover in server.workdir.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)


def test_remote_demo_with_a_token(
    start_server: ServerStarter, keys: tuple[CertSet, Path], scratch: Path
) -> None:
    certs, platform = keys
    server = start_server(mtls=False, token=True)
    args = ["demo", "--remote", server.address, *demo_args(certs, platform, mtls=False)]
    good = farside_cli(
        *args, "--token-file", str(platform.parent / "token"), "--message", "tok", cwd=scratch
    )
    assert_demo_output(good, "tok")
    wrong = farside_cli(
        *args, "--token-file", str(platform.parent / "wrong-token"), "--message", "x", cwd=scratch
    )
    assert wrong.returncode == 1
    assert server.address in wrong.stderr
    assert "permission denied" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    assert TOKEN not in wrong.stderr
    missing = farside_cli(*args, "--message", "x", cwd=scratch)
    assert missing.returncode == 1
    assert "permission denied" in missing.stderr
    assert server_proxies(server) == []
    assert server.stop() == 0


def test_remote_demo_refusals(
    start_server: ServerStarter, keys: tuple[CertSet, Path], scratch: Path
) -> None:
    certs, platform = keys
    server = start_server()
    no_cert = farside_cli(
        "demo",
        "--remote",
        server.address,
        *demo_args(certs, platform, mtls=False),
        "--message",
        "x",
        cwd=scratch,
    )
    assert no_cert.returncode == 1
    assert server.address in no_cert.stderr
    assert "TLS" in no_cert.stderr
    assert "Traceback" not in no_cert.stderr

    untrusted = farside_cli(
        "demo",
        "--remote",
        server.address,
        "--tls-ca",
        str(certs.ca),
        "--tls-cert",
        str(certs.client_cert),
        "--tls-key",
        str(certs.client_key),
        "--message",
        "x",
        cwd=scratch,
    )
    assert untrusted.returncode == 1
    assert "platform" in untrusted.stderr
    assert "Traceback" not in untrusted.stderr

    address = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    unreachable = farside_cli(
        "demo", "--remote", address, *demo_args(certs, platform), "--message", "x", cwd=scratch
    )
    assert time.monotonic() - started < 15
    assert unreachable.returncode == 1
    assert address in unreachable.stderr
    assert "unreachable" in unreachable.stderr
    assert "check the address" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr

    # The server is unharmed.
    assert_demo_output(
        farside_cli(
            "demo",
            "--remote",
            server.address,
            *demo_args(certs, platform),
            "--message",
            "still",
            cwd=scratch,
        ),
        "still",
    )
    assert wait_until(lambda: server_proxies(server) == [], 5)
    assert server.stop() == 0


# ----------------------------------------------------------------------- server refusals


def test_server_refuses_plaintext_off_loopback(scratch: Path) -> None:
    done = farside_cli(
        "provision-server", "--host", "0.0.0.0", "--port", "0", "--workdir", str(scratch)
    )
    assert done.returncode == 1
    assert "--insecure" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(scratch.iterdir()) == []


def test_server_refuses_client_ca_without_a_certificate(
    keys: tuple[CertSet, Path], scratch: Path
) -> None:
    certs, _ = keys
    done = farside_cli(
        "provision-server", "--port", "0", "--client-ca", str(certs.ca), "--workdir", str(scratch)
    )
    assert done.returncode == 1
    assert "--tls-cert" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(scratch.iterdir()) == []


def test_server_on_a_port_in_use(keys: tuple[CertSet, Path], scratch: Path) -> None:
    certs, _ = keys
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = farside_cli(
            "provision-server",
            "--port",
            str(port),
            "--tls-cert",
            str(certs.server_cert),
            "--tls-key",
            str(certs.server_key),
            "--client-ca",
            str(certs.ca),
            "--workdir",
            str(scratch),
        )
    assert done.returncode == 1
    assert f"127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(scratch.iterdir()) == []


def test_server_with_an_unreadable_certificate(scratch: Path) -> None:
    workdir = scratch / "work"
    workdir.mkdir()
    done = farside_cli(
        "provision-server",
        "--port",
        "0",
        "--tls-cert",
        str(scratch / "missing.pem"),
        "--tls-key",
        str(scratch / "missing.key"),
        "--workdir",
        str(workdir),
    )
    assert done.returncode == 1
    assert "missing.key" in done.stderr or "missing.pem" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(workdir.iterdir()) == []


def test_sigint_stops_an_idle_server(start_server: ServerStarter) -> None:
    server = start_server()
    server.process.send_signal(signal.SIGINT)
    started = time.monotonic()
    assert server.process.wait(10) == 0, server.stderr()
    assert time.monotonic() - started < 5
    assert "Traceback" not in server.stderr()


def _calls_reported(address: str, tls_flags: list[str], name: str, calls: int) -> bool:
    """Whether ``farside status`` comes to show ``calls`` for ``name`` (within 10 s)."""

    def shown() -> bool:
        done = farside_cli("status", address, *tls_flags, "--json")
        enclaves = json.loads(done.stdout).get("enclaves", [])
        return any(e["name"] == name and int(e.get("callsServed", 0)) == calls for e in enclaves)

    return wait_until(shown, timeout=10, interval=0.2)


def test_status_lists_this_host_its_slots_and_enclaves(
    start_server: ServerStarter, keys: tuple[CertSet, Path]
) -> None:
    certs, platform = keys
    server = start_server("--max-enclaves", "3")
    tls_flags = ["--tls-ca", str(certs.ca), "--tls-cert", str(certs.client_cert)]
    tls_flags += ["--tls-key", str(certs.client_key)]
    idle = farside_cli("status", server.address, *tls_flags)
    assert idle.returncode == 0, idle.stderr
    lines = idle.stdout.splitlines()
    assert lines[:3] == ["hosts (1):", lines[1], lines[2]]
    assert lines[1].split() == ["ADDRESS", "STATE", "FREE/SLOTS", "LABELS"]
    assert lines[2].split() == ["127.0.0.1", "alive", "3/3", "-"]
    assert lines[3] == "enclaves (0):"

    provision = farside.RemoteProvision(server.address, tls=certs.client_tls())
    policy = farside.AttestationPolicy(platform_keys=(platform / "platform.pub",), allow_debug=True)
    client = farside.load(QUICKSTART, provision=provision, policy=policy)
    try:
        busy = farside_cli("status", server.address, *tls_flags)
        assert busy.returncode == 0, busy.stderr
        lines = busy.stdout.splitlines()
        assert lines[2].split()[2] == "2/3", busy.stdout
        assert lines[3] == "enclaves (1):"
        header = lines[4].split()
        assert header == ["ID", "NAME", "HOST", "ADDRESS", "CLIENT", "UPTIME", "CALLS"]
        row = dict(zip(header, lines[5].split(), strict=True))
        assert row["NAME"] == client.name
        assert row["CLIENT"] == "cert:farside-client"
        # CALLS is what the proxy last reported (a change once a second): initialize()
        # and the two calls below, once the report is in.
        client.call("encrypt", "a")
        client.call("encrypt", "b")
        assert _calls_reported(server.address, tls_flags, client.name, 3)
    finally:
        farside.EnclaveManager.instance().destroy_enclave(client)
        provision.close()

    refused = farside_cli("status", server.address, "--tls-ca", str(certs.ca))
    assert refused.returncode == 1
    assert "farside status: the provision server at" in refused.stderr
    assert "Traceback" not in refused.stderr
