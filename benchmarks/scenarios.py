"""The scenarios of ``python -m benchmarks``, one function each, returning result rows.

Every function takes its iteration counts as arguments, so the smoke test can run one
for a handful of iterations. A row is a plain dict (see ``row``): ``section`` is the
letter of the issue's list (a-h), ``name`` says what was measured, and either
``median_us``/``p99_us`` (latency) or ``value``/``unit`` (anything else) is set.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import farside

from . import peers
from ._timing import Latency, calls_per_second, timings

ENCLAVE = Path(__file__).with_name("bench_enclave.py")
PAYLOAD = b"x" * 64
Row = dict[str, Any]


def row(section: str, name: str, **fields: Any) -> Row:
    return {"section": section, "name": name, **fields}


def latency_row(section: str, name: str, samples: list[float], **fields: Any) -> Row:
    return row(section, name, **asdict(Latency.of(samples)), **fields)


@dataclass
class Farside:
    """How the harness reaches farside: local provisioning, or TLS through a provision server."""

    tls: bool = False
    address: str = ""
    client_tls: Any = None
    tls_dir: Path | None = None
    policy: Any = None
    transport: str = "grpc"

    @property
    def label(self) -> str:
        return f"farside {self.transport}" + (" (TLS)" if self.tls else "")

    def load(self) -> farside.EnclaveClient:
        provision: Any = (
            farside.RemoteProvision(self.address, tls=self.client_tls, transport=self.transport)
            if self.tls
            else farside.LocalProvision(transport=self.transport)
        )
        return farside.load(
            ENCLAVE,
            provision=provision,
            policy=self.policy,
            exit_handlers={"echo": lambda value: value},
        )


@contextlib.contextmanager
def farside_target(tls: bool) -> Iterator[Farside]:
    """Yield a ``Farside``; with ``tls``, a provision server (mTLS) runs in this process."""
    if not tls:
        yield Farside()
        return
    from farside._devcerts import make_dev_certs
    from farside.attestation import load_bundle, measure_bundle
    from farside.attestation.platform import init_platform
    from farside.provision.server import ProvisionServer, ProvisionServerConfig

    with tempfile.TemporaryDirectory(prefix="farside-bench-") as tmp:
        certs = Path(tmp) / "tls"
        make_dev_certs(certs, ["127.0.0.1"])
        platform_pub = init_platform(Path(tmp) / "platform")
        policy = farside.AttestationPolicy(
            measurements=(measure_bundle(load_bundle(ENCLAVE)),),
            allow_debug=True,
            platform_keys=(platform_pub,),
        )
        server = ProvisionServer(
            ProvisionServerConfig(
                port=0,
                tls=farside.TLSConfig(
                    cert=certs / "server.pem", key=certs / "server.key", client_ca=certs / "ca.pem"
                ),
                platform_dir=Path(tmp) / "platform",
            )
        )
        address = server.start()
        client_tls = farside.TLSConfig(
            ca=certs / "ca.pem", cert=certs / "client.pem", key=certs / "client.key"
        )
        try:
            yield Farside(
                tls=True, address=address, client_tls=client_tls, tls_dir=certs, policy=policy
            )
        finally:
            deadline = time.monotonic() + 10
            while server.enclave_count() and time.monotonic() < deadline:
                time.sleep(0.05)
            server.stop()


# ---------------------------------------------------------------- (a) baselines


def raw_socket(calls: int, warmup: int) -> list[Row]:
    with peers.PeerServer("socket") as server:
        call, close = peers.socket_client(server.port, PAYLOAD)
        try:
            samples = timings(call, calls, warmup)
        finally:
            close()
    return [latency_row("a", "raw socket ping-pong (TCP)", samples, system="raw socket")]


def raw_grpc(calls: int, warmup: int, tls_dir: Path | None = None) -> list[Row]:
    suffix = " (TLS)" if tls_dir else ""
    with peers.PeerServer("grpc", tls_dir=tls_dir) as server:
        call, close = peers.grpc_sync_client(server.port, PAYLOAD, tls_dir)
        try:
            sync = timings(call, calls, warmup)
        finally:
            close()
        aio = peers.grpc_aio_samples(server.port, PAYLOAD, calls, warmup, tls_dir)
    return [
        latency_row("a", f"raw gRPC bidi ping-pong, sync{suffix}", sync, system="gRPC sync"),
        latency_row("a", f"raw gRPC bidi ping-pong, grpc.aio{suffix}", aio, system="gRPC aio"),
    ]


# ---------------------------------------------------------------- (b, c) farside latency


def farside_latency(enclave: Any, label: str, calls: int, warmup: int) -> list[Row]:
    empty = timings(lambda: enclave.call("empty"), calls, warmup)
    echo = timings(lambda: enclave.call("echo", PAYLOAD), calls, warmup)
    nested = timings(lambda: enclave.call("nested", PAYLOAD), calls, warmup)
    return [
        latency_row("b", f"{label} empty call", empty, system=label),
        latency_row("b", f"{label} 64-byte echo call", echo, system=label),
        latency_row("c", f"{label} call with one nested exit call", nested, system=label),
    ]


# ---------------------------------------------------------------- (d) peers


PEER_LABELS = {
    "rpyc": ("rpyc", "rpyc call with server->client callback"),
    "pyro5": ("Pyro5", "Pyro5 call with callback (client daemon)"),
}


def peer_latency(kind: str, calls: int, warmup: int) -> list[Row]:
    """An empty call and a call with a callback in one of the peers ("rpyc" or "pyro5")."""
    system, nested_label = PEER_LABELS[kind]
    clients = {"rpyc": peers.rpyc_clients, "pyro5": peers.pyro5_clients}[kind]
    with peers.PeerServer(kind) as server:
        empty, nested, close = clients(server.port, PAYLOAD)
        try:
            empty_samples = timings(empty, calls, warmup)
            nested_samples = timings(nested, calls, warmup)
        finally:
            close()
    return [
        latency_row("d", f"{system} empty call", empty_samples, system=system),
        latency_row("d", nested_label, nested_samples, system=system),
    ]


# ---------------------------------------------------------------- (e) print loop


def print_loop(
    enclave: Any, label: str, lines: int, empty_mean_us: float, measure_empties: bool
) -> list[Row]:
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        start = time.perf_counter()
        enclave.call("print_lines", lines)
        loop = time.perf_counter() - start
    got = sink.getvalue().count("\n")
    if got != lines:
        raise RuntimeError(f"print loop output incomplete: {got} of {lines} lines")
    if measure_empties:
        start = time.perf_counter()
        for _ in range(lines):
            enclave.call("empty")
        empties = time.perf_counter() - start
        how = "measured"
    else:
        empties = empty_mean_us * 1e-6 * lines
        how = "extrapolated from the mean empty call"
    return [
        row("e", f"{label} {lines:,}-line print loop in one call", value=loop * 1e3, unit="ms"),
        row("e", f"{label} {lines:,} empty calls ({how})", value=empties * 1e3, unit="ms"),
    ]


# ---------------------------------------------------------------- (f) throughput


def _mib_s(size: int, seconds: float) -> float:
    """Payload MiB/s counting both directions (the value goes in and comes back)."""
    return 2 * size / seconds / (1 << 20)


def throughput(
    enclave: Any, label: str, sizes: dict[int, int], tls_dir: Path | None = None
) -> list[Row]:
    """``sizes`` maps a value size in bytes to the number of repetitions (median taken)."""
    rows = []
    suffix = " (TLS)" if tls_dir else ""
    with peers.PeerServer("grpc", tls_dir=tls_dir) as server:
        for size, reps in sizes.items():
            value = os.urandom(size)
            enclave.call("echo", value[:1024])
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                back = enclave.call("echo", value)
                times.append(time.perf_counter() - start)
                if back != value:
                    raise RuntimeError("farside echo returned a different value")
            del back
            raw = [
                peers.grpc_stream_throughput(server.port, size, tls_dir=tls_dir)
                for _ in range(reps)
            ]
            name = _size_name(size)
            rows.append(
                row(
                    "f",
                    f"{label} {name} value into and out of a call",
                    value=_mib_s(size, statistics.median(times)),
                    unit="MiB/s",
                    seconds=statistics.median(times),
                    size=size,
                )
            )
            rows.append(
                row(
                    "f",
                    f"raw gRPC streaming{suffix} {name} up and back (1 MiB messages; "
                    f"measured next to {label})",
                    value=_mib_s(size, statistics.median(raw)),
                    unit="MiB/s",
                    seconds=statistics.median(raw),
                    size=size,
                )
            )
    return rows


def _size_name(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


# ---------------------------------------------------------------- (g) concurrency


def concurrency(enclave: Any, label: str, threads: tuple[int, ...], duration: float) -> list[Row]:
    return [
        row(
            "g",
            f"{label} empty calls/s, {n} client thread{'s' if n > 1 else ''}",
            value=calls_per_second(lambda: enclave.call("empty"), n, duration),
            unit="calls/s",
            threads=n,
        )
        for n in threads
    ]


# ---------------------------------------------------------------- (h) load and RSS


def _children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[1] == me:
                    found.add(int(entry))
    return found


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cold_load(loads: int, idle: float) -> list[Row]:
    """Cold ``load`` -> first result with LocalProvision, and an idle proxy's RSS."""
    samples = []
    for _ in range(loads):
        start = time.perf_counter()
        with farside.load(ENCLAVE) as enclave:
            enclave.call("empty")
            samples.append(time.perf_counter() - start)
    before = _children()
    with farside.load(ENCLAVE) as enclave:
        enclave.call("empty")
        time.sleep(idle)
        new = _children() - before
        rss = sum(_rss_mib(pid) for pid in new)
    return [
        row(
            "h",
            "farside cold load -> first result (LocalProvision)",
            value=statistics.median(samples) * 1e3,
            unit="ms",
            n=loads,
        ),
        row(
            "h",
            f"farside idle proxy RSS (after {idle:g} s idle)",
            value=rss,
            unit="MiB",
            processes=len(new),
        ),
    ]
