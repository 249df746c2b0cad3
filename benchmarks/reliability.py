"""Reliability figures for docs/reliability.md: faults detected, load served, nothing leaked.

    python -m benchmarks.reliability [--quick] [--no-netns] [--transport grpc|stream]
                                     [--only SCENARIO ...]

Measures, on this machine, and prints as one Markdown table:

* a proxy SIGKILLed (and SIGTERMed) during a call: time until the waiting call raises,
  and until a later call does (median of 5);
* a client process SIGKILLed during a call: time until its proxy exits
  (LocalProvision), and until an in-process provision server has reaped it;
* a network cut between two network namespaces (root and ``ip netns`` only): the
  link is taken down while a call waits; time until the client's call fails and
  until the proxy exits;
* a provision server SIGKILLed: calls the running session still serves, and how
  fast a new load fails;
* a proxy that never starts (crashes, or hangs without announcing itself);
* a malformed frame sent to the proxy; a call's deadline;
* load: client threads x two enclaves x calls, each with a nested exit call,
  every result matched to its request; the proxy's RSS before and after many
  calls; open descriptors and child processes before and after load/destroy
  cycles and concurrent loads against one provision server (mTLS).

``--quick`` uses smaller sizes and fewer repetitions (under two minutes);
``--no-netns`` skips the network cut even when running as root; ``--transport``
picks the sessions' wire (default: ``$FARSIDE_TRANSPORT``, or gRPC), for every
scenario; ``--only`` runs the named scenarios alone (``--only network-cut
proxy-sigkill``; ``--help`` lists them).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import farside
from farside._devcerts import make_dev_certs
from farside._proto.v1 import session_pb2 as pb
from farside.attestation.platform import init_platform
from farside.provision._spawn import read_line
from farside.provision.server import ProvisionServer, ProvisionServerConfig
from farside.transport.factory import TRANSPORTS, choose_transport

ENCLAVE_SOURCE = '''\
"""The reliability benchmark's enclave: identity, echo, a nested exit call, sleeping."""

import os
import sys
import threading
import time

from farside.trusted import TrustedApplication, ecall, host


class FaultEnclave(TrustedApplication):
    @ecall
    def pid(self):
        return os.getpid()

    @ecall
    def ident(self):
        return threading.get_ident()

    @ecall
    def echo(self, value):
        return value

    @ecall
    def nested(self, value):
        return host.call("echo", value)

    @ecall
    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

    @ecall
    def chatter(self, seconds):
        """Like sleep, but printing 2 KB to stderr every 10 ms: the wire is never idle."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            print("x" * 2000, file=sys.stderr, flush=True)
            time.sleep(0.01)
        return seconds


def build_trusted_application():
    return FaultEnclave()
'''

# A client process: loads the enclave, says "ready PROXY-PID", then waits in a long call
# (sleep, or chatter: output all along) and reports when (CLOCK_MONOTONIC is system-wide)
# and how that call ended.
CLIENT_SCRIPT = """\
import sys, time
import farside

enclave, transport, call, mode = sys.argv[1:5]
if mode == "local":
    client = farside.load(enclave, provision=farside.LocalProvision(transport=transport))
else:
    address, ca, cert, key, platform_pub = sys.argv[5:10]
    tls = farside.TLSConfig(ca=ca, cert=cert, key=key)
    policy = farside.AttestationPolicy(platform_keys=(platform_pub,), allow_debug=True)
    provision = farside.RemoteProvision(address, tls=tls, transport=transport)
    client = farside.load(enclave, provision=provision, policy=policy)
print("ready", client.call("pid"), flush=True)
try:
    client.call(call, 300)
    print("returned", time.monotonic(), flush=True)
except Exception as exc:
    print("failed", time.monotonic(), type(exc).__name__, flush=True)
"""

CRASHING_PROXY = "#!/bin/sh\necho 'farside proxy: simulated start-up crash' >&2\nexit 3\n"
HANGING_PROXY = "#!/bin/sh\nexec sleep 600\n"


def log(message: str) -> None:
    print(f"[reliability] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------- processes


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text(errors="replace").rpartition(")")[2].split()
    except OSError:
        return []


def exited(pid: int) -> bool:
    """The process no longer runs (gone, or a zombie waiting for its parent)."""
    fields = _stat(pid)
    return not fields or fields[0] in ("Z", "X")


def reaped(pid: int) -> bool:
    """The process is gone for good: its parent has waited for it."""
    return not _stat(pid)


def children() -> tuple[int, int]:
    """(live child processes of this process, zombie children)."""
    me, live, zombies = str(os.getpid()), 0, 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if len(fields) > 1 and fields[1] == me:
                if fields[0] in ("Z", "X"):
                    zombies += 1
                else:
                    live += 1
    return live, zombies


def proxies_of(parent: int) -> list[int]:
    """Running farside proxy processes whose parent is ``parent``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if len(fields) < 2 or fields[1] != str(parent) or fields[0] in ("Z", "X"):
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"proxy" in args and any(b"farside" in a for a in args):
            found.append(int(entry))
    return found


def proxy_transport(pid: int) -> str:
    """The wire a running ``farside proxy`` serves (its ``--transport``; gRPC without)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "gone"
    return args[args.index("--transport") + 1] if "--transport" in args else "grpc"


def proxy_directory(pid: int) -> Path | None:
    """The private directory of a local proxy (its ``--listen unix:DIR/proxy.sock``)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    listen = args[args.index("--listen") + 1] if "--listen" in args else ""
    return Path(listen.removeprefix("unix:")).parent if listen.startswith("unix:") else None


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


# --------------------------------------------------------------------- figures


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f} ms" if seconds >= 0.01 else f"{seconds * 1e3:.1f} ms"


def spread(samples: list[float]) -> str:
    """Median and maximum of a few samples, with their count."""
    if not samples:
        return "no sample"
    if len(samples) == 1:
        return f"{ms(samples[0])} (n=1)"
    return f"median {ms(statistics.median(samples))}, max {ms(max(samples))} (n={len(samples)})"


@dataclass
class Row:
    scenario: str
    measured: str
    figure: str


class Failed(RuntimeError):  # noqa: N818 (a scenario's outcome, not an error of ours)
    """A scenario did not behave as farside promises (printed as such in the table)."""


# --------------------------------------------------------------------- the benchmark


class Reliability:
    def __init__(
        self, root: Path, *, quick: bool, netns: bool, transport: str | None = None
    ) -> None:
        self.root = root
        self.quick = quick
        self.netns = netns
        self.transport = choose_transport(transport)  # every session's wire
        self.local = farside.LocalProvision(transport=self.transport)
        self.rows: list[Row] = []
        self.enclave = root / "fault_enclave.py"
        self.enclave.write_text(ENCLAVE_SOURCE, encoding="utf-8")
        self.certs = root / "tls"
        make_dev_certs(self.certs, ["127.0.0.1", "localhost"])
        self.platform = root / "platform"
        init_platform(self.platform)
        self.repeats = 5

    # helpers

    def row(self, scenario: str, measured: str, figure: str) -> None:
        self.rows.append(Row(scenario, measured, figure))
        log(f"{scenario}: {measured}: {figure}")

    def load(self, **kwargs: Any) -> farside.EnclaveClient:
        kwargs.setdefault("exit_handlers", {"echo": lambda value: value})
        kwargs.setdefault("provision", self.local)
        return farside.load(self.enclave, **kwargs)

    def remote(self, address: str) -> farside.RemoteProvision:
        return farside.RemoteProvision(address, tls=self.client_tls(), transport=self.transport)

    def destroy(self, client: farside.EnclaveClient) -> None:
        with contextlib.suppress(farside.EnclaveError):
            farside.EnclaveManager.instance().destroy_enclave(client)

    def client_tls(self, certs: Path | None = None) -> farside.TLSConfig:
        certs = certs or self.certs
        return farside.TLSConfig(
            ca=certs / "ca.pem", cert=certs / "client.pem", key=certs / "client.key"
        )

    def policy(self) -> farside.AttestationPolicy:
        return farside.AttestationPolicy(
            platform_keys=(self.platform / "platform.pub",), allow_debug=True
        )

    @contextlib.contextmanager
    def server(self, **overrides: Any) -> Iterator[ProvisionServer]:
        """An in-process provision server with mTLS on 127.0.0.1, stopped afterwards."""
        settings: dict[str, Any] = {
            "port": 0,
            "tls": farside.TLSConfig(
                cert=self.certs / "server.pem",
                key=self.certs / "server.key",
                client_ca=self.certs / "ca.pem",
            ),
            "platform_dir": self.platform,
            "workdir": self.root,
        }
        settings.update(overrides)
        server = ProvisionServer(ProvisionServerConfig(**settings))
        server.start()
        try:
            yield server
        finally:
            server.stop()

    def waiting_call(
        self, client: farside.EnclaveClient
    ) -> tuple[threading.Thread, list[tuple[float, BaseException]]]:
        """A thread that waits in ``sleep(300)``; the list gets (when, what) it raised."""
        outcome: list[tuple[float, BaseException]] = []
        started = threading.Event()

        def wait() -> None:
            started.set()
            try:
                client.call("sleep", 300)
            except BaseException as exc:
                outcome.append((time.monotonic(), exc))

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        started.wait(5)
        time.sleep(0.2)  # the call is in the enclave by now
        return thread, outcome

    # scenarios

    def proxy_signalled(self, sig: signal.Signals) -> None:
        detected: list[float] = []
        later: list[float] = []
        exits: list[float] = []
        kinds = Counter[str]()
        for _ in range(self.repeats):
            client = self.load()
            pid = client._lease.handle.process.pid
            try:
                if (serves := proxy_transport(pid)) != self.transport:
                    raise Failed(f"the proxy serves {serves}, not {self.transport}")
                thread, outcome = self.waiting_call(client)
                began = time.monotonic()
                os.kill(pid, sig)
                thread.join(30)
                if not outcome:
                    raise Failed(f"the waiting call survived {sig.name} for 30 s")
                when, error = outcome[0]
                detected.append(when - began)
                kinds[type(error).__name__] += 1
                wait_for(lambda pid=pid: exited(pid), 30)
                exits.append(time.monotonic() - began)
                began = time.monotonic()
                try:
                    client.call("echo", 1)
                except farside.EnclaveError as exc:
                    later.append(time.monotonic() - began)
                    kinds[type(exc).__name__] += 1
            finally:
                self.destroy(client)
        names = ", ".join(sorted(kinds))
        self.row(
            f"proxy {sig.name} during a call (LocalProvision)",
            f"{sig.name} -> the waiting call raises ({names})",
            spread(detected),
        )
        self.row(
            f"proxy {sig.name} during a call (LocalProvision)",
            "a later call raises (no reconnect)",
            spread(later),
        )
        if sig == signal.SIGTERM:
            self.row(
                "proxy SIGTERM during a call (LocalProvision)",
                "signal -> proxy exited (after finalize)",
                spread(exits),
            )

    def client_killed(self, remote: bool) -> None:
        exits: list[float] = []
        reaps: list[float] = []
        stuck = left = 0
        server_cm = self.server() if remote else contextlib.nullcontext()
        with server_cm as server:
            for _ in range(self.repeats):
                args = [str(self.enclave), self.transport, "sleep", "local"]
                if server is not None:
                    args = [str(self.enclave), self.transport, "sleep", "remote", server.address]
                    args += [str(self.certs / n) for n in ("ca.pem", "client.pem", "client.key")]
                    args.append(str(self.platform / "platform.pub"))
                process = subprocess.Popen(
                    [sys.executable, "-c", CLIENT_SCRIPT, *args],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    assert process.stdout is not None
                    line = read_line(process.stdout, 30) or ""
                    if not line.startswith("ready "):
                        raise Failed(f"the client script did not load its enclave: {line!r}")
                    pid = int(line.split()[1])
                    directory = proxy_directory(pid)
                    time.sleep(0.3)
                    began = time.monotonic()
                    process.kill()
                    if not wait_for(lambda pid=pid: exited(pid), 10):
                        stuck += 1  # farside promises 10 s; do not wait on it any longer
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                        continue
                    exits.append(time.monotonic() - began)
                    if server is not None:
                        if not wait_for(lambda s=server: s.enclave_count() == 0, 30):
                            raise Failed("the provision server did not reap the proxy in 30 s")
                        reaps.append(time.monotonic() - began)
                    if directory is not None:
                        wait_for(lambda d=directory: not d.exists(), 0.5)
                        if directory.exists():
                            left += 1
                            shutil.rmtree(directory, ignore_errors=True)
                finally:
                    stop(process)
        where = "provision server" if remote else "LocalProvision"
        scenario = f"client SIGKILL during a call ({where})"
        figure = spread(exits)
        if stuck:
            figure += f"; **{stuck} of {self.repeats} still ran after 10 s** (killed)"
        self.row(scenario, "kill -> proxy exited", figure)
        if remote:
            self.row(scenario, "kill -> the server reaped the proxy", spread(reaps))
        else:
            self.row(
                scenario,
                "the proxy's private directory removed",
                f"{len(exits) - left}/{len(exits)}",
            )

    def network_cut(self) -> None:
        scenario = "network cut between two hosts (netns, link down)"
        if not self.netns:
            self.row(scenario, "not measured", "skipped (--no-netns)")
            return
        if os.geteuid() != 0 or shutil.which("ip") is None:
            self.row(scenario, "not measured", "skipped (needs root and `ip netns`)")
            return
        for busy in (False, True):
            client_times, proxy_times, reap_times, kinds = [], [], [], Counter[str]()
            for attempt in range(1 if self.quick else 3):
                client, proxy, reap, kind = self._cut_once(attempt, busy=busy)
                client_times.append(client)
                proxy_times.append(proxy)
                reap_times.append(reap)
                kinds[kind] += 1
            names = ", ".join(sorted(kinds))
            where = scenario.replace("(", "(the enclave printing all along, " if busy else "(")
            self.row(
                where, f"cut -> the client's waiting call raises ({names})", spread(client_times)
            )
            self.row(where, "cut -> proxy exited", spread(proxy_times))
            self.row(where, "cut -> the server reaped the proxy", spread(reap_times))

    def _cut_once(self, attempt: int, *, busy: bool = False) -> tuple[float, float, float, str]:
        """One cut while a call waits; (cut -> client's error, -> proxy exited, -> reaped,
        the error's type). ``busy``: the enclave prints all along (the proxy has data in
        flight when the link goes down), else the session is idle."""

        def ip(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["ip", *args], capture_output=True, text=True, timeout=15, check=False
            )

        tag = f"{os.getpid() % 10**6}{attempt}"
        server_ns, client_ns = f"fsrel-{tag}-s", f"fsrel-{tag}-c"
        veth_server, veth_client = f"fr{tag}s"[:15], f"fr{tag}c"[:15]
        subnet = f"10.232.{(os.getpid() + attempt) % 254 + 1}"
        server_ip = f"{subnet}.1"
        certs = self.root / f"netns-tls-{attempt}{'-busy' if busy else ''}"
        make_dev_certs(certs, [server_ip])
        workdir = Path(tempfile.mkdtemp(dir=self.root))
        created: list[str] = []
        processes: list[subprocess.Popen[bytes]] = []
        try:
            for namespace in (server_ns, client_ns):
                done = ip("netns", "add", namespace)
                if done.returncode != 0:
                    raise Failed(f"cannot create a network namespace: {done.stderr.strip()}")
                created.append(namespace)
            for step in [
                ("link", "add", veth_server, "type", "veth", "peer", "name", veth_client),
                ("link", "set", veth_server, "netns", server_ns),
                ("link", "set", veth_client, "netns", client_ns),
                ("-n", server_ns, "addr", "add", f"{server_ip}/24", "dev", veth_server),
                ("-n", client_ns, "addr", "add", f"{subnet}.2/24", "dev", veth_client),
                ("-n", server_ns, "link", "set", "lo", "up"),
                ("-n", client_ns, "link", "set", "lo", "up"),
                ("-n", server_ns, "link", "set", veth_server, "up"),
                ("-n", client_ns, "link", "set", veth_client, "up"),
            ]:
                done = ip(*step)
                if done.returncode != 0:
                    raise Failed(f"ip {' '.join(step)} failed: {done.stderr.strip()}")
            server = subprocess.Popen(
                [
                    *("ip", "netns", "exec", server_ns, sys.executable, "-m", "farside"),
                    *("provision-server", "--host", server_ip, "--port", "0"),
                    *(
                        "--tls-cert",
                        str(certs / "server.pem"),
                        "--tls-key",
                        str(certs / "server.key"),
                    ),
                    *("--client-ca", str(certs / "ca.pem"), "--platform-dir", str(self.platform)),
                    *("--workdir", str(workdir)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            processes.append(server)
            assert server.stdout is not None
            line = read_line(server.stdout, 30) or ""
            if "listening on" not in line:
                raise Failed(f"the provision server in {server_ns} did not start: {line!r}")
            address = line.rsplit(" ", 1)[1]
            client = subprocess.Popen(
                ["ip", "netns", "exec", client_ns, sys.executable, "-c", CLIENT_SCRIPT]
                + [str(self.enclave), self.transport, "chatter" if busy else "sleep"]
                + ["remote", address]
                + [str(certs / n) for n in ("ca.pem", "client.pem", "client.key")]
                + [str(self.platform / "platform.pub")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            processes.append(client)
            assert client.stdout is not None
            line = read_line(client.stdout, 30) or ""
            if not line.startswith("ready "):
                raise Failed(f"the client in {client_ns} did not load its enclave: {line!r}")
            proxy = int(line.split()[1])
            if (serves := proxy_transport(proxy)) != self.transport:
                raise Failed(f"the proxy serves {serves}, not {self.transport}")
            time.sleep(1.0)  # the call waits in the enclave (idle, or printing all along)
            began = time.monotonic()
            done = ip("-n", client_ns, "link", "set", veth_client, "down")
            if done.returncode != 0:
                raise Failed(f"cannot take the link down: {done.stderr.strip()}")
            if not wait_for(lambda: exited(proxy), 60, interval=0.005):
                raise Failed("the proxy still ran 60 s after the network was cut")
            proxy_exit = time.monotonic() - began
            if not wait_for(lambda: reaped(proxy), 30, interval=0.005):
                raise Failed("the server had not reaped the proxy 30 s after it exited")
            proxy_reaped = time.monotonic() - began
            line = read_line(client.stdout, 60) or ""
            if not line.startswith("failed "):
                raise Failed(f"the client's call did not fail after the cut: {line!r}")
            _, when, kind = line.split()
            return float(when) - began, proxy_exit, proxy_reaped, kind
        finally:
            for process in reversed(processes):
                stop(process, signal.SIGKILL if process is not processes[0] else signal.SIGTERM)
            for namespace in created:
                done = ip("netns", "pids", namespace)
                for word in done.stdout.split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(word), signal.SIGKILL)
                ip("netns", "del", namespace)
            ip("link", "del", veth_server)  # only there if moving it failed
            shutil.rmtree(workdir, ignore_errors=True)

    def server_killed(self) -> None:
        scenario = "provision server SIGKILLed"
        workdir = Path(tempfile.mkdtemp(dir=self.root))
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "farside", "provision-server", "--host", "127.0.0.1"),
                *("--port", "0", "--tls-cert", str(self.certs / "server.pem")),
                *("--tls-key", str(self.certs / "server.key")),
                *("--client-ca", str(self.certs / "ca.pem"), "--platform-dir", str(self.platform)),
                *("--workdir", str(workdir)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        client = None
        proxy = 0
        try:
            assert server.stdout is not None
            line = read_line(server.stdout, 30) or ""
            if "listening on" not in line:
                raise Failed(f"the provision server did not start: {line!r}")
            address = line.rsplit(" ", 1)[1]
            provision = self.remote(address)
            client = self.load(provision=provision, policy=self.policy())
            proxy = client.call("pid")
            calls = 200 if self.quick else 1000
            for i in range(calls):
                client.call("nested", i)
            server.kill()
            server.wait(10)
            time.sleep(0.5)
            served = 0
            for i in range(calls):
                with contextlib.suppress(farside.EnclaveError):
                    if client.call("nested", i) == i:
                        served += 1
            began = time.monotonic()
            try:
                self.load(provision=provision, policy=self.policy(), load_timeout=10)
            except farside.EnclaveLoadError:
                refused = time.monotonic() - began
            else:
                raise Failed("a load succeeded with the provision server dead")
            began = time.monotonic()
            self.destroy(client)
            if not wait_for(lambda: exited(proxy), 30):
                raise Failed("the orphaned proxy did not exit after its session ended")
            ended = time.monotonic() - began
            provision.close()
        finally:
            if client is not None:
                self.destroy(client)
            stop(server)
            if proxy and not exited(proxy):
                os.kill(proxy, signal.SIGKILL)
            shutil.rmtree(workdir, ignore_errors=True)
        self.row(
            scenario,
            "calls served by the running session after the kill",
            f"{served}/{calls} nested calls",
        )
        self.row(scenario, "a new load fails (EnclaveLoadError)", ms(refused))
        self.row(scenario, "destroy -> the orphaned proxy exited", ms(ended))

    def proxy_never_starts(self) -> None:
        scenario = "proxy never starts"
        for kind, source, timeout in (
            ("crashes at start-up", CRASHING_PROXY, 30.0),
            ("hangs without announcing itself", HANGING_PROXY, 2.0),
        ):
            script = self.root / f"proxy-{len(source)}.sh"
            script.write_text(source, encoding="utf-8")
            script.chmod(0o700)
            before = children()
            began = time.monotonic()
            provision = farside.LocalProvision(python=str(script), transport=self.transport)
            try:
                self.load(provision=provision, load_timeout=timeout)
            except farside.EnclaveLoadError:
                elapsed = time.monotonic() - began
            else:
                raise Failed("a proxy that never started was loaded")
            after = children()
            left = "nothing left" if after == before else f"children {before} -> {after}"
            self.row(
                scenario,
                f"{kind} (load_timeout {timeout:g} s) -> EnclaveLoadError",
                f"{ms(elapsed)}, {left}",
            )

    def malformed_frame(self) -> None:
        scenario = "malformed frame from the client"
        detected, later, proxy_left = [], [], 0
        for _ in range(3 if self.quick else self.repeats):
            client = self.load()
            pid = client._lease.handle.process.pid
            try:
                thread, outcome = self.waiting_call(client)
                began = time.monotonic()
                bogus = pb.Frame(result=pb.Result(call_id=987_654_321, value=b"\xc0"))
                client._transport.send([bogus])  # a result for a call never made
                thread.join(10)
                if not outcome or not isinstance(outcome[0][1], farside.ProtocolError):
                    raise Failed(f"the waiting call did not raise ProtocolError: {outcome}")
                detected.append(outcome[0][0] - began)
                began = time.monotonic()
                try:
                    client.call("echo", 1)
                except farside.ProtocolError:
                    later.append(time.monotonic() - began)
                if not wait_for(lambda pid=pid: exited(pid), 2):
                    proxy_left += 1
            finally:
                self.destroy(client)
        self.row(scenario, "frame sent -> the waiting call raises ProtocolError", spread(detected))
        self.row(scenario, "a later call raises ProtocolError", spread(later))
        self.row(
            scenario,
            "proxy exits by itself within 2 s of its Close (the client keeps the stream open)",
            f"{len(detected) - proxy_left}/{len(detected)}",
        )

    def deadline(self) -> None:
        overshoot, recover = [], []
        with self.load() as client:
            for _ in range(self.repeats):
                began = time.monotonic()
                try:
                    client.call("sleep", 5, timeout=0.5)
                except farside.DeadlineExceededError:
                    overshoot.append(time.monotonic() - began - 0.5)
                else:
                    raise Failed("a call outlived its deadline")
                began = time.monotonic()
                if client.call("echo", "after") != "after":
                    raise Failed("the client was not usable after a deadline")
                recover.append(time.monotonic() - began)
        scenario = "deadline: call(..., timeout=0.5) on a 5 s call"
        self.row(scenario, "DeadlineExceededError, past the deadline by", spread(overshoot))
        self.row(scenario, "the next call on the same thread served in", spread(recover))

    def load_scenario(self) -> None:
        threads, calls = (16, 100) if self.quick else (16, 500)
        seen: list[list[tuple[int, int, int]]] = [[], []]
        lock = threading.Lock()

        def handler(label: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
            def echo(payload: dict[str, Any]) -> dict[str, Any]:
                with lock:
                    seen[label].append((payload["thread"], payload["call"], threading.get_ident()))
                return {"handler": label, "payload": payload, "ident": threading.get_ident()}

            return echo

        clients = [self.load(exit_handlers={"echo": handler(label)}) for label in (0, 1)]
        latencies: list[float] = []
        matched, mismatched, errors = Counter[int](), Counter[int](), Counter[str]()
        idents: dict[int, int] = {}
        barrier = threading.Barrier(threads)

        def work(t: int) -> None:
            idents[t] = threading.get_ident()
            barrier.wait(30)
            mine = []
            for i in range(calls):
                for e, client in enumerate(clients):
                    payload = {"enclave": e, "thread": t, "call": i}
                    began = time.perf_counter()
                    try:
                        result = client.call("nested", payload)
                    except farside.EnclaveError as exc:
                        errors[type(exc).__name__] += 1
                        continue
                    mine.append(time.perf_counter() - began)
                    ok = result == {"handler": e, "payload": payload, "ident": idents[t]}
                    (matched if ok else mismatched)[t] += 1
            with lock:
                latencies.extend(mine)

        began = time.monotonic()
        try:
            with ThreadPoolExecutor(threads) as pool:
                for future in [pool.submit(work, t) for t in range(threads)]:
                    future.result()
        finally:
            for client in clients:
                self.destroy(client)
        elapsed = time.monotonic() - began
        total = threads * len(clients) * calls
        duplicated = sum(
            n - 1 for log in seen for n in Counter((t, i) for t, i, _ in log).values() if n > 1
        )
        off_thread = sum(1 for log in seen for t, _, ident in log if ident != idents[t])
        served = sum(matched.values())
        latencies.sort()
        self.row(
            f"load: {threads} threads x 2 enclaves x {calls} calls, one nested exit call each",
            "results matched to their requests",
            f"{served:,}/{total:,} matched; {sum(mismatched.values())} misrouted, "
            f"{total - served - sum(mismatched.values())} lost, {duplicated} duplicated, "
            f"{off_thread} exit calls on a wrong thread; errors {dict(errors) or 'none'}",
        )
        self.row(
            f"load: {threads} threads x 2 enclaves x {calls} calls, one nested exit call each",
            "throughput and per-call latency",
            f"{served / elapsed:,.0f} calls/s; median {ms(statistics.median(latencies))}, "
            f"p99 {ms(latencies[int(len(latencies) * 0.99) - 1])}",
        )

    def proxy_memory(self) -> None:
        calls = 10_000 if self.quick else 50_000
        threads = 2
        with self.load() as client:
            pid = client._lease.handle.process.pid

            def burst(count: int) -> None:
                def work(t: int) -> None:
                    for i in range(t, count, threads):
                        value = {"i": i, "data": os.urandom(64) + str(i).encode() * 8}
                        name = "nested" if i % 2 else "echo"
                        if client.call(name, value) != value:
                            raise Failed("a value came back changed")

                with ThreadPoolExecutor(threads) as pool:
                    for future in [pool.submit(work, t) for t in range(threads)]:
                        future.result()

            burst(calls // 10)
            before = rss_mib(pid)
            peak = before
            for _ in range(10):
                burst(calls // 10)
                peak = max(peak, rss_mib(pid))
            after = rss_mib(pid)
        self.row(
            f"proxy memory across {calls:,} calls (half nested)",
            "proxy RSS after a warm-up -> after the calls (peak)",
            f"{before:.1f} MiB -> {after:.1f} MiB ({after - before:+.1f} MiB; peak {peak:.1f} MiB)",
        )

    def churn(self) -> None:
        cycles, concurrent = (10, 10) if self.quick else (50, 10)
        with self.server(max_per_client=concurrent, max_enclaves=max(16, concurrent)) as server:
            provision = self.remote(server.address)
            policy = self.policy()

            def one(_: int = 0) -> farside.EnclaveClient:
                client = self.load(provision=provision, policy=policy)
                client.call("nested", "first call")
                return client

            def settled() -> bool:
                return server.enclave_count() == 0 and not proxies_of(os.getpid())

            self.destroy(one())  # warm-up: the channel to the server, gRPC's pollers
            wait_for(settled, 10)
            time.sleep(0.3)
            fds_before, children_before = open_fds(), children()
            samples = []
            for _ in range(cycles):
                began = time.monotonic()
                client = one()
                samples.append(time.monotonic() - began)
                self.destroy(client)
            wait_for(settled, 10)
            time.sleep(0.3)
            fds_cycled, children_cycled = open_fds(), children()
            began = time.monotonic()
            with ThreadPoolExecutor(concurrent) as pool:
                clients = list(pool.map(one, range(concurrent)))
            loaded = time.monotonic() - began
            running = len(proxies_of(os.getpid()))
            with ThreadPoolExecutor(concurrent) as pool:
                list(pool.map(self.destroy, clients))
            wait_for(settled, 10)
            time.sleep(0.3)
            fds_after, children_after = open_fds(), children()
            provision.close()
        self.row(
            f"{cycles} load/destroy cycles, one provision server (mTLS, loopback)",
            "open fds / child processes (live, zombie) before -> after",
            f"fds {fds_before} -> {fds_cycled}; children {children_before} -> "
            f"{children_cycled}; load -> first result {spread(samples)}",
        )
        self.row(
            f"{concurrent} concurrent loads on the same server",
            "proxies running / all loaded in; fds, children after destroy",
            f"{running} proxies, all loaded in {ms(loaded)}; fds {fds_before} -> {fds_after}; "
            f"children {children_before} -> {children_after}",
        )

    def pending(self) -> None:
        for scenario, measured in (
            ("payload up to 256 MiB, both ways, in chunks", "round-trip time of a 256 MiB value"),
            ("payload over the limit", "error raised before anything is sent"),
            ("bounded enclave worker threads", "RESOURCE_EXHAUSTED beyond the bound; reaping"),
            ("output backpressure (a print flood)", "client/proxy RSS while flooding"),
            ("cancellation seen inside the enclave", "deadline -> cancelled() is true"),
        ):
            self.row(scenario, measured, "pending")

    def run(self, only: list[str] | None = None) -> None:
        for key, (name, step) in SCENARIOS.items():
            if only and key not in only:
                continue
            log(f"-- {name} ({self.transport})")
            try:
                step(self)
            except Failed as exc:
                self.row(name, "FAILED", str(exc))
            except Exception as exc:
                self.row(name, "FAILED", f"{type(exc).__name__}: {exc}")

    def table(self) -> str:
        lines = ["| scenario | measured | figure |", "|---|---|---|"]
        lines += [f"| {r.scenario} | {r.measured} | {r.figure} |" for r in self.rows]
        return "\n".join(lines)


# Every scenario, in the order they run: its ``--only`` name -> (heading, how to run it).
SCENARIOS: dict[str, tuple[str, Callable[[Reliability], None]]] = {
    "proxy-sigkill": ("proxy SIGKILL", lambda b: b.proxy_signalled(signal.SIGKILL)),
    "proxy-sigterm": ("proxy SIGTERM", lambda b: b.proxy_signalled(signal.SIGTERM)),
    "client-killed": ("client SIGKILL (local)", lambda b: b.client_killed(remote=False)),
    "client-killed-remote": ("client SIGKILL (server)", lambda b: b.client_killed(remote=True)),
    "network-cut": ("network cut", Reliability.network_cut),
    "server-killed": ("provision server killed", Reliability.server_killed),
    "proxy-never-starts": ("proxy never starts", Reliability.proxy_never_starts),
    "malformed-frame": ("malformed frame", Reliability.malformed_frame),
    "deadline": ("deadline", Reliability.deadline),
    "load": ("load", Reliability.load_scenario),
    "proxy-memory": ("proxy memory", Reliability.proxy_memory),
    "churn": ("load/destroy churn", Reliability.churn),
    "pending": ("pending", Reliability.pending),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (under 2 minutes)")
    parser.add_argument("--no-netns", action="store_true", help="skip the network cut")
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        help="the sessions' wire (default: $FARSIDE_TRANSPORT, or grpc)",
    )
    parser.add_argument(
        "--only", nargs="+", choices=SCENARIOS, metavar="SCENARIO", help=", ".join(SCENARIOS)
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="farside-reliability-") as tmp:
        bench = Reliability(
            Path(tmp), quick=args.quick, netns=not args.no_netns, transport=args.transport
        )
        bench.run(args.only)
    elapsed = time.monotonic() - started
    command = "python -m benchmarks.reliability" + (" --quick" if args.quick else "")
    if args.transport:
        command += f" --transport {args.transport}"
    if args.only:
        command += " --only " + " ".join(args.only)
    print(
        f"`{command}` on {datetime.date.today().isoformat()}, {platform.system()} "
        f"{platform.release()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"farside {importlib.metadata.version('farside')}, transport {bench.transport}; "
        f"took {elapsed:.0f} s\n"
    )
    print(bench.table())
    return 1 if any(r.measured == "FAILED" for r in bench.rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
