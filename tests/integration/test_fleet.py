"""Fleet mode on a simulated fleet: a Ray head and three nodes on loopback addresses.

One module-scoped ``SimulatedFleet`` (benchmarks/fleet.py): the head on
127.0.0.2 runs the fleet-mode provision server; 127.0.0.3 offers 2 slots labelled
``tee=sgx``, 127.0.0.4 offers 2 unlabelled slots, 127.0.0.5 offers none. Ray runs
with token authentication and TLS, as fleet mode demands. Clients are plain
``RemoteProvision`` users in this process (they never join Ray). The fixture kills
every process the fleet started by pid and fails if one survives.

Skipped where Ray is not installed (``pip install 'farside[fleet]'``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import farside
from farside._proto.v1 import provision_pb2 as pb, provision_pb2_grpc as pb_grpc
from farside.transport.grpc import channel_credentials

if importlib.util.find_spec("ray") is None:  # found, not imported: Ray runs in the fleet only
    pytest.skip("Ray is not installed (pip install 'farside[fleet]')", allow_module_level=True)

from benchmarks.fleet import SimulatedFleet

from ._memory import found_in, secrets_of
from ._support import QUICKSTART, process_gone, wait_until

pytestmark = pytest.mark.timeout(150)

SGX, PLAIN, EMPTY = "127.0.0.3", "127.0.0.4", "127.0.0.5"
PROMPTLY = 10.0  # seconds within which a dead host's clients must fail


@pytest.fixture(scope="module")
def fleet(transport: str) -> Iterator[SimulatedFleet]:
    """A fresh fleet per transport: the last test kills one of its hosts."""
    root = Path(tempfile.mkdtemp(prefix="fs-fleet-"))
    fleet = SimulatedFleet(root, placement_timeout=20.0)
    try:
        fleet.start()
        yield fleet
    finally:
        survivors = fleet.stop()
        log = fleet.log()
        shutil.rmtree(root, ignore_errors=True)
        if survivors:
            pytest.fail("processes of the fleet survived:\n" + "\n".join(survivors))
        assert "Traceback" not in log, log
        if fleet.server is not None:  # it started: SIGTERM stopped it cleanly
            assert fleet.server_exit == 0, log


def host_of(client: farside.EnclaveClient) -> str:
    return client._lease.address.rsplit(":", 1)[0]


def destroy(*clients: farside.EnclaveClient) -> None:
    for client in clients:
        farside.EnclaveManager.instance().destroy_enclave(client)


def roundtrip(client: farside.EnclaveClient, message: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        sealed = client.call("encrypt", message)
    assert client.call("decrypt", sealed) == message


def free_slots(fleet: SimulatedFleet) -> dict[str, int]:
    return {h["address"]: h.get("slotsFree", 0) for h in fleet.status().get("hosts", [])}


def test_quickstart_from_several_clients_respects_capacity(fleet: SimulatedFleet) -> None:
    clients: list[farside.EnclaveClient] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        try:
            client = fleet.load()
            roundtrip(client, f"client {index}")
        except BaseException as exc:
            errors.append(exc)
            return
        with lock:
            clients.append(client)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert not errors, errors
        # Four slots in all, two per host: each host got exactly two, the empty node none.
        assert Counter(host_of(c) for c in clients) == {SGX: 2, PLAIN: 2}
        status = fleet.status()
        assert {h["address"]: h.get("slotsFree", 0) for h in status["hosts"]} == {
            SGX: 0,
            PLAIN: 0,
        }
        assert sorted(e["host"] for e in status["enclaves"]) == [SGX, SGX, PLAIN, PLAIN]
        labels = {h["address"]: h.get("labels", {}) for h in status["hosts"]}
        assert labels == {SGX: {"tee": "sgx"}, PLAIN: {}}

        started = time.monotonic()
        with pytest.raises(farside.EnclaveLoadError) as full:
            fleet.load(load_timeout=3.0)
        assert full.value.code == farside.StatusCode.RESOURCE_EXHAUSTED, full.value
        assert "no enclave slot came free" in str(full.value)
        assert time.monotonic() - started < 8.0
    finally:
        destroy(*clients)
    # Session end frees every slot (the server ends each slot actor).
    assert wait_until(lambda: free_slots(fleet) == {SGX: 2, PLAIN: 2}, 15), fleet.status()


def test_the_cli_quickstart_in_the_fleet(fleet: SimulatedFleet) -> None:
    tls = fleet.root / "tls"
    command = [
        *(sys.executable, "-m", "farside", "demo", "--remote", fleet.address),
        *("--tls-ca", str(tls / "ca.pem"), "--tls-cert", str(tls / "client.pem")),
        *("--tls-key", str(tls / "client.key"), "--node-label", "tee=sgx"),
        *("--message", "Asylo Rocks"),
    ]
    for platform in fleet.platforms.values():
        command += ["--platform-key", str(platform / "platform.pub")]
    result = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"Decrypted inside the enclave: Asylo Rocks" in result.stdout
    assert f"on {SGX} at {SGX}:" in fleet.log()


def test_a_label_places_on_the_labelled_host_only(fleet: SimulatedFleet) -> None:
    first = fleet.load("tee=sgx")
    second = fleet.load("tee=sgx")
    try:
        assert host_of(first) == host_of(second) == SGX
        roundtrip(first, "labelled")
        # Enclave code runs in the proxy: it must not find Ray's token or the key's home.
        for info in fleet.status()["enclaves"]:
            environ = Path(f"/proc/{info['pid']}/environ").read_bytes().split(b"\0")
            assert not [v for v in environ if v.startswith(b"RAY_")], info
            assert not [v for v in environ if v.startswith(b"FARSIDE_FLEET_PLATFORM_DIR=")]
            assert f"FARSIDE_FLEET_SIM={fleet.marker}".encode() in environ  # the sweep's mark
            # Nor the platform key itself, anywhere in its memory (the host's agent holds it).
            if os.geteuid() == 0:
                assert found_in(int(info["pid"]), secrets_of(fleet.platforms[SGX])) == []
        # The labelled host is full; the other host's free slots do not count.
        with pytest.raises(farside.EnclaveLoadError) as full:
            fleet.load("tee=sgx", load_timeout=3.0)
        assert full.value.code == farside.StatusCode.RESOURCE_EXHAUSTED, full.value
        # No host has this label at all: refused at once, not after the timeout.
        started = time.monotonic()
        with pytest.raises(farside.EnclaveLoadError) as nowhere:
            fleet.load("tee=tdx", load_timeout=20.0)
        assert nowhere.value.code == farside.StatusCode.RESOURCE_EXHAUSTED
        assert "no live host in the fleet offers enclave slots labelled tee=tdx" in str(
            nowhere.value
        )
        assert time.monotonic() - started < 5.0
    finally:
        destroy(first, second)


def test_a_malformed_label_is_invalid_and_never_reaches_ray(fleet: SimulatedFleet) -> None:
    with pytest.raises(ValueError, match="node label"):
        farside.RemoteProvision(fleet.address, tls=fleet.tls(), node_label="tee=sgx;rm -rf")
    tls = fleet.tls()
    with grpc.secure_channel(fleet.address, channel_credentials(tls)) as channel:
        stub = pb_grpc.ProvisionerStub(channel)
        for label in ("tee", "tee=", "=sgx", "tee=sgx,gpu=a100", "ray.io/node-id=x", "a=b c"):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Provision(pb.ProvisionRequest(name="bad", node_label=label), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, label
    assert "(bad)" not in fleet.log()  # nothing was placed under that name


def test_release_and_client_death_free_their_slots(fleet: SimulatedFleet) -> None:
    # Release without ever opening the session: the server stops the proxy (long before
    # its 30 s idle timeout) and ends the slot actor.
    provision = fleet.remote("tee=sgx")
    lease = provision.provision(name="never-used", timeout=20)
    assert lease.address.startswith(f"{SGX}:")
    assert free_slots(fleet)[SGX] == 1
    released = time.monotonic()
    provision.release(lease)
    provision.close()
    assert wait_until(lambda: free_slots(fleet)[SGX] == 2, 10), fleet.status()
    assert time.monotonic() - released < 10

    # A client process that dies without a word: its proxy sees the stream break.
    script = (
        "import sys, time, farside\n"
        "from benchmarks.fleet import SimulatedFleet\n"
        "from pathlib import Path\n"
        "fleet = SimulatedFleet(Path(sys.argv[1]))\n"
        "fleet.address = sys.argv[2]\n"
        "fleet.platforms = {'a': Path(sys.argv[3]), 'b': Path(sys.argv[4])}\n"
        "client = fleet.load('tee=sgx')\n"
        "print('loaded', client._lease.address, flush=True)\n"
        "time.sleep(120)\n"
    )
    platforms = [str(p) for p in fleet.platforms.values()]
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(fleet.root), fleet.address, *platforms],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().decode()
        assert line.startswith(f"loaded {SGX}:"), line
        assert free_slots(fleet)[SGX] == 1
        child.kill()
        child.wait(10)
        assert wait_until(lambda: free_slots(fleet)[SGX] == 2, 20), fleet.status()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_stopping_the_server_ends_its_enclaves_and_their_proxies(fleet: SimulatedFleet) -> None:
    # In fleet mode enclaves belong to the server's Ray driver: a second server on the
    # same fleet, stopped with SIGTERM, must take its proxies with it.
    log_path = fleet.root / "second-server.log"
    server, address = fleet.start_server(log_path)
    provision = farside.RemoteProvision(address, tls=fleet.tls(), node_label="tee=sgx")
    client = None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            client = farside.load(QUICKSTART, provision=provision, policy=fleet.policy())
        roundtrip(client, "owned by the second server")
        proxy = _proxy_pid_on(fleet, client._lease.address)
        server.send_signal(signal.SIGTERM)
        assert server.wait(20) == 0, log_path.read_text()
        assert wait_until(lambda: process_gone(proxy), 10), "a proxy outlived its server"
        with pytest.raises(farside.EnclaveUnavailableError):
            roundtrip(client, "gone")
        # Its slot is free again: two more fit on the labelled host.
        more = [fleet.load("tee=sgx"), fleet.load("tee=sgx")]
        destroy(*more)
    finally:
        if client is not None:
            farside.EnclaveManager.instance().destroy_enclave(client)
        provision.close()
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()
    assert "Traceback" not in log_path.read_text()


def _proxy_pid_on(fleet: SimulatedFleet, address: str) -> int:
    """The pid of the fleet's proxy listening on ``address`` (its command line names it)."""
    host = address.rsplit(":", 1)[0]
    port = address.rsplit(":", 1)[1]
    for pid in fleet.processes():
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"proxy" in args and f"{host}:0".encode() in args:
            sockets = _listening_ports(pid)
            if int(port) in sockets:
                return pid
    raise LookupError(f"no proxy of the fleet listens on {address}")


def _listening_ports(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# Last: it kills a node for good.
def test_a_dead_host_fails_its_clients_promptly_and_loads_go_elsewhere(
    fleet: SimulatedFleet,
) -> None:
    doomed = [fleet.load("tee=sgx"), fleet.load("tee=sgx")]
    survivor = fleet.load()  # the labelled host is full: it must land on the other
    late: list[farside.EnclaveClient] = []
    try:
        assert [host_of(c) for c in doomed] == [SGX, SGX]
        assert host_of(survivor) == PLAIN
        listing = fleet.status()["enclaves"]
        proxy_pids = [e["pid"] for e in listing if e["host"] == SGX]
        assert len(proxy_pids) == 2, listing

        killed = time.monotonic()
        fleet.kill_node(SGX)
        for client in doomed:
            deadline = killed + PROMPTLY
            while True:
                try:
                    roundtrip(client, "are you there")
                except farside.EnclaveUnavailableError:
                    break
                assert time.monotonic() < deadline, "a dead host's client kept working"
                time.sleep(0.02)
        noticed = time.monotonic() - killed
        assert noticed < PROMPTLY
        # The proxies died with their slot actors' workers: none outlives its actor.
        assert wait_until(lambda: all(process_gone(p) for p in proxy_pids), 10), proxy_pids
        roundtrip(survivor, "still here")

        # New loads go to the remaining host; the label's only host is gone.
        late.append(fleet.load())
        assert host_of(late[0]) == PLAIN
        roundtrip(late[0], "placed elsewhere")
        assert wait_until(
            lambda: not any(h.get("alive") for h in fleet.status()["hosts"] if h["address"] == SGX),
            20,
        ), fleet.status()
        with pytest.raises(farside.EnclaveLoadError) as gone:
            fleet.load("tee=sgx", load_timeout=10.0)
        assert gone.value.code == farside.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for client in [*doomed, survivor, *late]:
            farside.EnclaveManager.instance().destroy_enclave(client)
    assert wait_until(lambda: free_slots(fleet).get(PLAIN) == 2, 15), fleet.status()
