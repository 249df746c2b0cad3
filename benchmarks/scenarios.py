"""The farside scenarios of ``python -m benchmarks``, one function each, returning rows.

Every function takes its iteration counts as arguments, so the smoke test can run one
for a handful of iterations. Rows are plain dicts (``benchmarks._rows``); their keys
start with ``farside.<transport>.``. The baselines they are compared with are in
``benchmarks.baselines``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import farside
import farside.aio
from farside.transport import factory

from ._rows import PAYLOAD, Row, latency_row, row, size_name, throughput_row
from ._timing import calls_per_second, timings

ENCLAVE = Path(__file__).with_name("bench_enclave.py")
TRANSPORTS = factory.TRANSPORTS  # the harness measures farside on each


def default_transport() -> str:
    """The transport farside picks when none is named (``$FARSIDE_TRANSPORT`` or its own)."""
    return farside.LocalProvision().transport


@dataclass
class Farside:
    """How the harness reaches farside: local provisioning, or TLS through a provision server."""

    tls: bool = False
    address: str = ""
    client_tls: Any = None
    tls_dir: Path | None = None
    policy: Any = None
    transport: str = "grpc"
    default: bool = False

    @property
    def label(self) -> str:
        return (
            f"farside {self.transport}"
            + (" (default)" if self.default else "")
            + (" (TLS)" if self.tls else "")
        )

    def _provision(self) -> Any:
        return (
            farside.RemoteProvision(self.address, tls=self.client_tls, transport=self.transport)
            if self.tls
            else farside.LocalProvision(transport=self.transport)
        )

    def load(self) -> farside.EnclaveClient:
        return farside.load(
            ENCLAVE,
            provision=self._provision(),
            policy=self.policy,
            exit_handlers={"echo": lambda value: value},
        )

    def aio_load(self) -> Any:
        """``farside.aio.load`` of the same enclave, the same way (await it in a loop)."""
        return farside.aio.load(
            ENCLAVE,
            provision=self._provision(),
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


# ---------------------------------------------------------------- (b, c) latency


def farside_latency(
    enclave: Any, label: str, calls: int, warmup: int, transport: str = "default"
) -> list[Row]:
    """An empty call, a 64-byte echo, and a call whose body makes one exit call back."""
    empty = timings(lambda: enclave.call("empty"), calls, warmup)
    echo = timings(lambda: enclave.call("echo", PAYLOAD), calls, warmup)
    nested = timings(lambda: enclave.call("nested", PAYLOAD), calls, warmup)
    key = f"farside.{transport}"
    return [
        latency_row("b", f"{key}.empty", f"{label} empty call", empty),
        latency_row("b", f"{key}.echo", f"{label} 64-byte echo call", echo),
        latency_row("c", f"{key}.nested", f"{label} call with one nested exit call", nested),
    ]


# ---------------------------------------------------------------- (e) print loop


def print_loop(
    enclave: Any,
    label: str,
    lines: int,
    empty_mean_us: float,
    measure_empties: bool,
    transport: str = "default",
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
    key = f"farside.{transport}"
    return [
        row(
            "e",
            f"{key}.print_loop",
            f"{label} {lines:,}-line print loop in one call",
            value=loop * 1e3,
            unit="ms",
        ),
        row(
            "e",
            f"{key}.print_empties",
            f"{label} {lines:,} empty calls ({how})",
            value=empties * 1e3,
            unit="ms",
        ),
    ]


# ---------------------------------------------------------------- (f) throughput


def throughput(
    enclave: Any,
    label: str,
    values: dict[int, bytes],
    reps: dict[int, int],
    transport: str = "default",
) -> list[Row]:
    """Each value echoed through a call ``reps[size]`` times; the median time counts."""
    rows = []
    for size, value in values.items():
        enclave.call("echo", value[:1024])
        times = []
        for _ in range(reps[size]):
            start = time.perf_counter()
            back = enclave.call("echo", value)
            times.append(time.perf_counter() - start)
            if back != value:
                raise RuntimeError("farside echo returned a different value")
            del back
        rows.append(
            throughput_row(
                "f",
                f"farside.{transport}.echo.{size}",
                f"{label} {size_name(size)} value into and out of a call",
                size,
                statistics.median(times),
            )
        )
    return rows


# ---------------------------------------------------------------- (g) concurrency


def concurrency(
    enclave: Any, label: str, threads: tuple[int, ...], duration: float, transport: str = "default"
) -> list[Row]:
    """Empty calls/s into one enclave from ``n`` client threads, for each ``n``."""
    return [
        row(
            "g",
            f"farside.{transport}.calls_s.{n}",
            f"{label} empty calls/s, {n} client thread{'s' if n > 1 else ''}",
            value=calls_per_second(lambda: enclave.call("empty"), n, duration),
            unit="calls/s",
            threads=n,
        )
        for n in threads
    ]


# ---------------------------------------------------------------- (b, g) asyncio


def aio(
    target: Farside, label: str, calls: int, warmup: int, tasks: int, duration: float
) -> list[Row]:
    """``farside.aio`` on its own loop: one task's empty-call latency, and empty calls/s
    from ``tasks`` concurrent tasks (each its own enclave worker)."""

    async def measure() -> tuple[list[float], float]:
        async with target.aio_load() as enclave:
            clock = time.perf_counter
            for _ in range(warmup):
                await enclave.call("empty")
            samples = []
            for _ in range(calls):
                start = clock()
                await enclave.call("empty")
                samples.append(clock() - start)
            counts = [0] * tasks
            ready = asyncio.Barrier(tasks + 1)
            stop = asyncio.Event()

            async def worker(index: int) -> None:
                await enclave.call("empty")  # each task's first call sets up its worker
                await ready.wait()
                count = 0
                while not stop.is_set():
                    await enclave.call("empty")
                    count += 1
                counts[index] = count

            running = [asyncio.create_task(worker(i)) for i in range(tasks)]
            await ready.wait()
            start = clock()
            await asyncio.sleep(duration)
            stop.set()
            await asyncio.gather(*running)
            return samples, sum(counts) / (clock() - start)

    samples, rate = asyncio.run(measure())
    key = f"farside.{target.transport}.aio"
    return [
        latency_row("b", f"{key}.empty", f"{label} aio: one task's empty call", samples),
        row(
            "g",
            f"{key}.calls_s.{tasks}",
            f"{label} aio: empty calls/s, {tasks} tasks",
            value=rate,
            unit="calls/s",
            tasks=tasks,
        ),
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


def cold_load(transport: str, label: str, loads: int, idle: float) -> list[Row]:
    """Cold ``load`` -> first result with LocalProvision, and an idle proxy's RSS."""
    provision = farside.LocalProvision(transport=transport)
    samples = []
    for _ in range(loads):
        start = time.perf_counter()
        with farside.load(ENCLAVE, provision=provision) as enclave:
            enclave.call("empty")
            samples.append(time.perf_counter() - start)
    before = _children()
    with farside.load(ENCLAVE, provision=provision) as enclave:
        enclave.call("empty")
        time.sleep(idle)
        new = _children() - before
        rss = sum(_rss_mib(pid) for pid in new)
    return [
        row(
            "h",
            f"farside.{transport}.cold_load",
            f"{label} cold load -> first result (LocalProvision)",
            value=statistics.median(samples) * 1e3,
            unit="ms",
            n=loads,
        ),
        row(
            "h",
            f"farside.{transport}.idle_rss",
            f"{label} idle proxy RSS (after {idle:g} s idle)",
            value=rss,
            unit="MiB",
            processes=len(new),
        ),
    ]
