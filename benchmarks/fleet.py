"""A simulated fleet on one machine, and what it costs: placement, failure notice, memory.

    python -m benchmarks.fleet [--loads 10]

Brings up ``SimulatedFleet`` (a Ray head and three nodes, each on its own loopback
address, with Ray's token authentication and TLS; two nodes offer enclave slots,
one of them labelled ``tee=sgx``; a fleet-mode provision server on the head),
then prints:

* the median time to place an enclave (the ``Provision`` call) and to load it
  (placement, bundle, attestation, first call), over ``--loads`` enclaves;
* the time from killing a node's raylet to its clients' ``EnclaveUnavailableError``;
* the resident memory of every process of the fleet, idle and with enclaves.

Everything it started is killed by pid at the end (``SimulatedFleet.stop``).
The tests (tests/integration/test_fleet.py) use the same ``SimulatedFleet``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import farside
from farside._devcerts import make_dev_certs, make_fleet_certs
from farside.attestation.platform import init_platform
from farside.provision._spawn import read_line

DEMO = Path(farside.__file__).parent / "examples" / "quickstart" / "demo_enclave.py"
SRC = Path(farside.__file__).resolve().parent.parent
MARKER_VAR = "FARSIDE_FLEET_SIM"
HEAD = "127.0.0.2"
# (address, enclave slots, label); the last node offers none.
NODES: tuple[tuple[str, int, str | None], ...] = (
    ("127.0.0.3", 2, "tee=sgx"),
    ("127.0.0.4", 2, None),
    ("127.0.0.5", 0, None),
)
RAY_SMALL = ["--num-cpus", "0", "--object-store-memory", "80000000"]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _command_line(pid: int) -> str:
    return _read(Path(f"/proc/{pid}/cmdline")).replace(b"\0", b" ").decode(errors="replace")[:200]


def _alive(pid: int) -> bool:
    fields = _read(Path(f"/proc/{pid}/stat")).decode(errors="replace").rpartition(")")[2].split()
    return bool(fields) and fields[0] not in ("Z", "X")


class SimulatedFleet:
    """A Ray head, three nodes and a fleet-mode provision server, all on this machine.

    Every process it starts (Ray's daemons, workers, proxies, the server) carries a
    unique marker in its environment; ``stop`` kills each of them by pid, whoever
    its parent is, and returns the ones that survived (none, or it is a bug).
    """

    def __init__(self, root: Path, *, placement_timeout: float = 20.0) -> None:
        self.root = root
        self.marker = secrets.token_hex(8)
        self.ray_dir = root / "ray"  # short: Ray's socket paths live under it
        self.placement_timeout = placement_timeout
        self.ray_address = ""
        self.address = ""
        self.server: subprocess.Popen[bytes] | None = None
        self.server_exit: int | None = None  # the server's exit code after stop()
        self.platforms: dict[str, Path] = {}
        self.env: dict[str, str] = {}

    # ------------------------------------------------------------- bring-up

    def start(self) -> None:
        """Certificates, keys, the Ray cluster, the provision server; raises if one fails."""
        hosts = ["127.0.0.1", HEAD, *(ip for ip, _, _ in NODES), "localhost"]
        make_fleet_certs(self.root / "ray-tls", hosts)
        make_dev_certs(self.root / "tls", [HEAD])
        token = self.root / "ray-token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        pythonpath = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
        self.env = {
            **os.environ,
            MARKER_VAR: self.marker,
            "PYTHONPATH": pythonpath,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USE_TLS": "1",
            "RAY_TLS_SERVER_CERT": str(self.root / "ray-tls" / "node.pem"),
            "RAY_TLS_SERVER_KEY": str(self.root / "ray-tls" / "node.key"),
            "RAY_TLS_CA_CERT": str(self.root / "ray-tls" / "ca.pem"),
            "RAY_USAGE_STATS_ENABLED": "0",
            # Notice a dead node within ~3 s instead of Ray's default ~30 s.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }
        self.env.pop("RAY_AUTH_TOKEN", None)
        self.env.pop("RAY_ADDRESS", None)
        ray = str(Path(sys.executable).parent / "ray")
        self._run(
            [
                *(ray, "start", "--head", "--node-ip-address", HEAD, "--port", "0"),
                *("--include-dashboard=false", "--temp-dir", str(self.ray_dir)),
                *("--disable-usage-stats", *RAY_SMALL),
            ]
        )
        self.ray_address = (self.ray_dir / "ray_current_cluster").read_text().strip()
        for ip, slots, label in NODES:
            if slots:
                platform = self.root / f"platform-{ip}"
                init_platform(platform)
                self.platforms[ip] = platform
                command = [sys.executable, "-m", "farside", "fleet", "join"]
                command += ["--ray-address", self.ray_address, "--slots", str(slots)]
                command += ["--platform-dir", str(platform), "--node-ip", ip]
                command += ["--workdir", str(self.root / f"work-{ip}")]
                command += ["--temp-dir", str(self.ray_dir), *RAY_SMALL[:2]]
                command += ["--object-store-memory", RAY_SMALL[3]]
                if label:
                    command += ["--label", label]
            else:  # a node that offers nothing: placement must never pick it
                command = [ray, "start", "--address", self.ray_address]
                command += ["--node-ip-address", ip, "--temp-dir", str(self.ray_dir), *RAY_SMALL]
            self._run(command)
        self._start_server()

    def _run(self, command: list[str]) -> None:
        result = subprocess.run(command, env=self.env, capture_output=True, timeout=90, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command[:4])}... failed ({result.returncode}):\n"
                + result.stderr.decode(errors="replace")[-3000:]
            )

    def _start_server(self) -> None:
        self.server, self.address = self.start_server(self.root / "server.log")

    def start_server(self, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
        """Start a fleet-mode provision server on the head; return it and its address."""
        tls = self.root / "tls"
        log = log_path.open("wb")
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "farside", "provision-server", "--host", HEAD),
                *("--port", "0", "--tls-cert", str(tls / "server.pem")),
                *("--tls-key", str(tls / "server.key"), "--client-ca", str(tls / "ca.pem")),
                *("--ray-address", self.ray_address, "--ray-node-ip", HEAD),
                *("--placement-timeout", str(self.placement_timeout), "--max-per-client", "16"),
            ],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        log.close()
        assert server.stdout is not None
        line = read_line(server.stdout, 60.0) or ""
        prefix = "farside provision-server listening on "
        if not line.startswith(prefix):
            server.kill()
            server.wait()
            server.stdout.close()
            log_text = _read(log_path).decode(errors="replace")
            raise RuntimeError(f"the provision server did not start ({line!r}):\n{log_text}")
        return server, line[len(prefix) :]

    def log(self) -> str:
        """The provision server's stderr so far."""
        return _read(self.root / "server.log").decode(errors="replace")

    # ------------------------------------------------------------- clients

    def tls(self) -> farside.TLSConfig:
        """A client's mTLS settings for the provision server."""
        tls = self.root / "tls"
        return farside.TLSConfig(ca=tls / "ca.pem", cert=tls / "client.pem", key=tls / "client.key")

    def policy(self) -> farside.AttestationPolicy:
        """Trust every slot host's platform key (and nothing else)."""
        keys = tuple(p / "platform.pub" for p in self.platforms.values())
        return farside.AttestationPolicy(platform_keys=keys, allow_debug=True)

    def remote(self, label: str | None = None) -> farside.RemoteProvision:
        return farside.RemoteProvision(self.address, tls=self.tls(), node_label=label)

    def load(self, label: str | None = None, **kwargs: Any) -> farside.EnclaveClient:
        """Load the quickstart enclave somewhere in the fleet (output to a sink)."""
        with contextlib.redirect_stdout(io.StringIO()):
            return farside.load(DEMO, provision=self.remote(label), policy=self.policy(), **kwargs)

    def status(self) -> dict[str, Any]:
        """``farside status --json`` against the server."""
        tls = self.root / "tls"
        out = subprocess.run(
            [
                *(sys.executable, "-m", "farside", "status", self.address, "--json"),
                *("--tls-ca", str(tls / "ca.pem"), "--tls-cert", str(tls / "client.pem")),
                *("--tls-key", str(tls / "client.key")),
            ],
            env=self.env,
            capture_output=True,
            timeout=30,
            check=True,
        )
        reply: dict[str, Any] = json.loads(out.stdout)
        return reply

    # ------------------------------------------------------------- processes

    def processes(self) -> list[int]:
        """Live processes this fleet started.

        Those with the marker in their environment, or Ray's temporary directory on
        their command line, or a file under this fleet's root open: Ray's agents
        rename themselves (``ray::DashboardAgent``), which wipes the environment
        ``/proc`` shows, and they can outlive their raylet.
        """
        tag = f"{MARKER_VAR}={self.marker}".encode()
        ray_dir = str(self.ray_dir).encode()
        me = os.getpid()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            pid = int(entry.name)
            ours = (
                tag in _read(entry / "environ").split(b"\0")
                or ray_dir in _read(entry / "cmdline")
                or self._holds_files(entry)
            )
            if ours and _alive(pid):
                found.append(pid)
        return found

    def _holds_files(self, entry: Path) -> bool:
        root = str(self.root)
        try:
            descriptors = list((entry / "fd").iterdir())
        except OSError:
            return False
        for fd in descriptors:
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith(root):
                    return True
        return False

    def rss_bytes(self) -> int:
        """The resident memory of every process of the fleet, summed."""
        total = 0
        for pid in self.processes():
            for line in _read(Path(f"/proc/{pid}/status")).decode(errors="replace").splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total

    def raylet_pid(self, ip: str) -> int:
        """The pid of the raylet of the node at ``ip``."""
        for pid in self.processes():
            args = _read(Path(f"/proc/{pid}/cmdline")).split(b"\0")
            if args and args[0].endswith(b"/raylet") and any(ip.encode() in a for a in args):
                return pid
        raise LookupError(f"no raylet of node {ip} runs")

    def kill_node(self, ip: str) -> None:
        """Kill the node at ``ip`` as Ray sees it: SIGKILL its raylet (its workers follow)."""
        os.kill(self.raylet_pid(ip), signal.SIGKILL)

    def stop(self) -> list[str]:
        """Stop the server (it ends its slots), then kill every process left, by pid.

        Returns a description of each process that was still alive 10 s after its
        SIGKILL (nothing should be).
        """
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server_exit = self.server.wait(15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        if self.server is not None and self.server.stdout is not None:
            self.server.stdout.close()
        deadline = time.monotonic() + 10.0
        while (left := self.processes()) and time.monotonic() < deadline:
            for pid in left:  # again and again: a dying daemon may have started another
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        return [f"pid {pid}: {_command_line(pid)}" for pid in self.processes()]


# ----------------------------------------------------------------- measuring


def _until_unavailable(client: farside.EnclaveClient, since: float) -> float:
    while True:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the enclave prints its ciphertext
                client.call("encrypt", "ping")
        except farside.EnclaveUnavailableError:
            return time.monotonic() - since
        time.sleep(0.01)


def measure(fleet: SimulatedFleet, loads: int, out: IO[str]) -> dict[str, float]:
    """Run the measurements on a started fleet; print and return them."""
    idle = fleet.rss_bytes()
    provision = fleet.remote()
    placements = []
    for _ in range(loads):
        started = time.monotonic()
        lease = provision.provision(name="bench", timeout=30)
        placements.append(time.monotonic() - started)
        provision.release(lease)
        time.sleep(0.3)  # let the slot come free
    full = []
    for _ in range(loads):
        started = time.monotonic()
        client = fleet.load()
        with contextlib.redirect_stdout(io.StringIO()):  # the enclave prints its ciphertext
            client.call("encrypt", "Asylo Rocks")
        full.append(time.monotonic() - started)
        farside.EnclaveManager.instance().destroy_enclave(client)
    time.sleep(1.0)
    victims = [fleet.load("tee=sgx") for _ in range(2)]
    survivor = fleet.load()
    busy = fleet.rss_bytes()
    killed = time.monotonic()
    fleet.kill_node(NODES[0][0])
    notice = max(_until_unavailable(c, killed) for c in victims)
    with contextlib.redirect_stdout(io.StringIO()):
        survivor.call("encrypt", "still here")
    for client in [*victims, survivor]:
        farside.EnclaveManager.instance().destroy_enclave(client)
    figures = {
        "placement_median_s": statistics.median(placements),
        "load_to_first_call_median_s": statistics.median(full),
        "node_death_to_client_error_s": notice,
        "fleet_rss_idle_mib": idle / 2**20,
        "fleet_rss_3_enclaves_mib": busy / 2**20,
    }
    for name, value in figures.items():
        print(f"{name:32} {value:8.3f}", file=out)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=10)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="fs-fleet-"))
    fleet = SimulatedFleet(root)
    try:
        started = time.monotonic()
        fleet.start()
        print(f"fleet up in {time.monotonic() - started:.1f} s (Ray {_ray_version()})")
        measure(fleet, args.loads, sys.stdout)
    finally:
        survivors = fleet.stop()
        shutil.rmtree(root, ignore_errors=True)
    if survivors:
        print("processes survived the teardown:\n" + "\n".join(survivors), file=sys.stderr)
        return 1
    print("teardown: every process of the fleet is gone")
    return 0


def _ray_version() -> str:
    import ray

    return str(ray.__version__)


if __name__ == "__main__":
    raise SystemExit(main())
