"""Two hosts: the provision server in one network namespace, the client in another.

Two namespaces joined by a veth pair, each with its own address, stand for the
trusted machine and the application's machine. The server runs with TLS and
mTLS in the first; ``farside demo --remote`` runs in the second, once per
transport (the proxy serves the wire the client asks the server for). Needs root
and working ``ip netns`` (CI has both); skipped with the reason otherwise. The
namespaces, the server and anything left in them are removed in a finalizer.
``ip netns exec`` keeps the host's filesystem, so the same interpreter and the
editable install serve both sides.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from farside._devcerts import make_dev_certs
from farside.attestation.platform import init_platform
from farside.provision._spawn import read_line

from ._support import proxy_transport

SESSION_MARKER_VAR = "FARSIDE_TEST_SESSION"  # tests/conftest.py gives every child this marker
HEX_LINE = re.compile(r"[0-9a-f]+")


HOLDING_CLIENT = """\
import sys
from pathlib import Path
import farside
from farside.examples.quickstart import demo_driver

address, transport = sys.argv[1], sys.argv[4]
certs, scratch = Path(sys.argv[2]), Path(sys.argv[3])
tls = farside.TLSConfig(ca=certs / "ca.pem", cert=certs / "client.pem", key=certs / "client.key")
policy = farside.AttestationPolicy(
    platform_keys=(scratch / "platform" / "platform.pub",), allow_debug=True
)
provision = farside.RemoteProvision(address, tls=tls, transport=transport)
client = farside.load(demo_driver.DEFAULT_ENCLAVE, provision=provision, policy=policy)
assert client.call("decrypt", client.call("encrypt", "held")) == "held"
print("loaded", flush=True)
sys.stdin.read()
"""


@dataclass(frozen=True)
class Hosts:
    server_ns: str
    client_ns: str
    server_ip: str
    client_ip: str


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15, check=False)


def namespace_pids(namespace: str) -> list[int]:
    done = ip("netns", "pids", namespace)
    return [int(word) for word in done.stdout.split() if word.isdigit()]


@pytest.fixture
def two_hosts() -> Iterator[Hosts]:
    """Two network namespaces joined by a veth pair; deleted (and emptied) afterwards."""
    if os.geteuid() != 0:
        pytest.skip("the two-host test needs root to create network namespaces")
    if shutil.which("ip") is None:
        pytest.skip("the two-host test needs the ip command (iproute2)")
    pid = os.getpid()
    server_ns, client_ns = f"farside-{pid}-srv", f"farside-{pid}-cli"
    veth_server, veth_client = f"fs{pid % 10**7}s", f"fs{pid % 10**7}c"  # <= 15 characters
    subnet = f"10.231.{pid % 254 + 1}"
    created: list[str] = []
    try:
        for namespace in (server_ns, client_ns):
            done = ip("netns", "add", namespace)
            if done.returncode != 0:
                pytest.skip(f"cannot create a network namespace: {done.stderr.strip()}")
            created.append(namespace)
        steps = [
            ("link", "add", veth_server, "type", "veth", "peer", "name", veth_client),
            ("link", "set", veth_server, "netns", server_ns),
            ("link", "set", veth_client, "netns", client_ns),
            ("-n", server_ns, "addr", "add", f"{subnet}.1/24", "dev", veth_server),
            ("-n", client_ns, "addr", "add", f"{subnet}.2/24", "dev", veth_client),
            ("-n", server_ns, "link", "set", "lo", "up"),
            ("-n", client_ns, "link", "set", "lo", "up"),
            ("-n", server_ns, "link", "set", veth_server, "up"),
            ("-n", client_ns, "link", "set", veth_client, "up"),
        ]
        for step in steps:
            done = ip(*step)
            if done.returncode != 0:
                pytest.skip(f"cannot set up the veth pair (ip {' '.join(step)}): {done.stderr}")
        yield Hosts(server_ns, client_ns, f"{subnet}.1", f"{subnet}.2")
    finally:
        for namespace in created:
            for leftover in namespace_pids(namespace):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leftover, signal.SIGKILL)
            ip("netns", "del", namespace)
        ip("link", "del", veth_server)  # only there if moving it failed


@pytest.fixture
def scratch() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="farside-test-two-hosts-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def boot_ticks() -> float:
    """Now, in clock ticks since boot (the unit of a process's start time in /proc)."""
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime * os.sysconf("SC_CLK_TCK")


def farside_proxies(workdir: Path, since: float) -> list[str]:
    """Running farside proxies that are the server's: in its work directory, or ours since."""
    marker = f"{SESSION_MARKER_VAR}={os.environ.get(SESSION_MARKER_VAR, '-')}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = entry.joinpath("cmdline").read_bytes().split(b"\0")
            fields = entry.joinpath("stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if b"proxy" not in args or not any(b"farside" in a for a in args):
            continue
        if not fields or fields[0] in ("Z", "X"):
            continue
        with contextlib.suppress(OSError):
            if Path(os.readlink(entry / "cwd")).is_relative_to(workdir):
                found.append(f"{entry.name}: {b' '.join(args).decode(errors='replace')}")
                continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            environ = entry.joinpath("environ").read_bytes().split(b"\0")
            if marker in environ and int(fields[19]) >= since:
                found.append(f"{entry.name}: {b' '.join(args).decode(errors='replace')}")
    return found


def test_two_hosts(two_hosts: Hosts, scratch: Path, transport: str) -> None:
    began = boot_ticks() - os.sysconf("SC_CLK_TCK")  # a second of slack
    certs = scratch / "certs"
    make_dev_certs(certs, [two_hosts.server_ip])
    init_platform(scratch / "platform")
    workdir = scratch / "work"
    workdir.mkdir(mode=0o700)
    log = scratch / "server.log"
    command = [
        "ip", "netns", "exec", two_hosts.server_ns,
        sys.executable, "-m", "farside", "provision-server",
        "--host", two_hosts.server_ip, "--port", "0",
        "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
        "--client-ca", str(certs / "ca.pem"),
        "--platform-dir", str(scratch / "platform"), "--workdir", str(workdir),
    ]  # fmt: skip
    with log.open("wb") as stderr:
        server = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
        )
    try:
        line = read_line(server.stdout, 20)
        match = re.fullmatch(
            rf"farside provision-server listening on {re.escape(two_hosts.server_ip)}:(\d+)",
            line or "",
        )
        assert match is not None, (line, server.poll(), log.read_text(errors="replace"))
        address = f"{two_hosts.server_ip}:{match.group(1)}"

        def client(*tls: str) -> subprocess.CompletedProcess[str]:
            command = ["ip", "netns", "exec", two_hosts.client_ns, sys.executable, "-m"]
            command += ["farside", "demo", "--transport", transport]
            command += ["--remote", address, "--tls-ca", str(certs / "ca.pem")]
            command += [*tls, "--platform-key", str(scratch / "platform" / "platform.pub")]
            command += ["--message", "Asylo Rocks"]
            return subprocess.run(
                command, capture_output=True, text=True, timeout=40, cwd=scratch, check=False
            )

        done = client(
            "--tls-cert", str(certs / "client.pem"), "--tls-key", str(certs / "client.key")
        )
        assert done.returncode == 0, done.stderr + log.read_text(errors="replace")
        lines = done.stdout.splitlines()
        assert lines[0] == "Encrypted message:"
        assert HEX_LINE.fullmatch(lines[1])
        assert len(bytes.fromhex(lines[1])) == 12 + len("Asylo Rocks") + 16
        assert lines[2] == "Decrypted inside the enclave: Asylo Rocks"
        assert "Traceback" not in done.stderr

        # A client that dies while loaded: its proxy (the scan finds it) ends and is reaped.
        script = [sys.executable, "-c", HOLDING_CLIENT, address, str(certs), str(scratch)]
        script.append(transport)
        holder = subprocess.Popen(
            ["ip", "netns", "exec", two_hosts.client_ns, *script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            output = [holder.stdout.readline().strip() for _ in range(3)]  # encrypt prints 2
            assert output[-1] == "loaded", (output, holder.communicate(timeout=10))
            running = farside_proxies(workdir, began)
            assert len(running) == 1, running
            assert proxy_transport(running[0].partition(": ")[2]) == transport, running
            # the server, its platform agent (which alone holds the key) and its proxy
            assert len(namespace_pids(two_hosts.server_ns)) == 3
            holder.kill()
            holder.communicate(timeout=10)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.communicate(timeout=10)
        deadline = time.monotonic() + 10
        while farside_proxies(workdir, began) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert farside_proxies(workdir, began) == []
        assert server.poll() is None

        refused = client()  # no client certificate
        assert refused.returncode == 1
        assert address in refused.stderr
        assert "TLS" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert "Encrypted message" not in refused.stdout

        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0, log.read_text(errors="replace")
        deadline = time.monotonic() + 5
        while (left := farside_proxies(workdir, began)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert left == [], left
        assert namespace_pids(two_hosts.server_ns) == []
        assert list(workdir.iterdir()) == []
        assert "Traceback" not in log.read_text(errors="replace")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        if server.stdout is not None:
            server.stdout.close()
        for leftover in farside_proxies(workdir, began):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(leftover.partition(":")[0]), signal.SIGKILL)
