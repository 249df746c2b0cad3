"""farside side by side with its floors (raw socket, raw gRPC) and peers (rpyc, Pyro5).

    python -m benchmarks [--quick] [--tls] [--runs N] [--output DIR]

Measures farside on both transports, the floors and the peers, each peer used at
its best, and reports the targets of the performance issue (ratios; timings are
reported, never asserted). Writes latest.md, latest.json and latency.png into
benchmarks/results/ (or ``--output DIR``), overwriting them, and prints the
Markdown. ``--quick`` uses fewer iterations (well under two minutes); ``--runs N``
repeats the whole run N times and reports medians, ranges and how many runs met
each target; ``--tls`` runs farside through an in-process provision server over
mTLS on loopback, and the raw gRPC baseline over TLS too. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from . import baselines, peers, report, scenarios, targets
from ._rows import FAMILY_NAMES, PAYLOAD, Row

Progress = Callable[[str], None]

FARSIDE_HOW = (
    '`enclave.call("empty")`, `enclave.call("echo", payload)` and `enclave.call("nested", '
    'payload)`, whose body makes one exit call, `host.call("echo", value)`, served on the '
    'waiting client thread; `enclave = farside.load("benchmarks/bench_enclave.py", '
    'provision=LocalProvision(transport=T), exit_handlers={"echo": ...})` once per transport, '
    "default settings otherwise (with --tls: `RemoteProvision` to an in-process provision "
    'server, mTLS); large values: `enclave.call("echo", value)`; calls/s: N threads each '
    'calling `enclave.call("empty")` in a loop; aio: `async with farside.aio.load(...)`, '
    "the same calls awaited from one task, and calls/s from 64 tasks"
)
AIO_TASKS = 64


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How much one run measures."""

    calls: int
    warmup: int
    reps: dict[int, int]  # value size -> repetitions (the median counts)
    duration: float  # seconds per calls/s measurement
    loads: int
    idle: float
    probe: int  # Pyro5 serializer probe: callback calls per serializer

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(
                calls=2000,  # the probe took medians of 2,000 calls
                warmup=200,
                reps={1 << 20: 5, 64 << 20: 3},
                duration=1.0,
                loads=3,
                idle=1.0,
                probe=300,
            )
        return cls(
            calls=5000,
            warmup=500,
            reps={1 << 20: 20, 64 << 20: 5},
            duration=2.0,
            loads=10,
            idle=3.0,
            probe=1000,
        )


def _farside(
    target: scenarios.Farside, plan: Plan, values: dict[int, bytes], quick: bool, progress: Progress
) -> list[Row]:
    """Sections b, c, e, f, g for one transport."""
    rows: list[Row] = []
    label, transport = target.label, target.transport
    progress(f"b, c: {label} empty and nested calls")
    with target.load() as enclave:
        latency = scenarios.farside_latency(enclave, label, plan.calls, plan.warmup, transport)
        rows += latency
        progress(f"e: {label} print loop")
        rows += scenarios.print_loop(
            enclave,
            label,
            10_000,
            empty_mean_us=latency[0]["mean_us"],
            measure_empties=not quick,
            transport=transport,
        )
        progress(f"f: {label} 1 MiB and 64 MiB values")
        rows += scenarios.throughput(enclave, label, values, plan.reps, transport)
        progress(f"g: {label} 1, 4, 16 client threads")
        rows += scenarios.concurrency(enclave, label, (1, 4, 16), plan.duration, transport)
    progress(f"b, g: {label} aio: one task's calls, 64 tasks")
    rows += scenarios.aio(target, label, plan.calls, plan.warmup, AIO_TASKS, plan.duration)
    return rows


def _default_source() -> str:
    variable = os.environ.get("FARSIDE_TRANSPORT")
    how = "asked of `farside.LocalProvision().transport`"
    return (
        f"{how}; $FARSIDE_TRANSPORT={variable}" if variable else f"{how}; $FARSIDE_TRANSPORT unset"
    )


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def run(quick: bool, tls: bool, progress: Progress) -> dict[str, Any]:
    """One whole run: floors, farside on each transport, peers, cold loads; and the targets."""
    plan = Plan.of(quick)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    family = "tcp" if tls else "unix"
    families = (family, *(f for f in peers.FAMILIES if f != family))
    default = scenarios.default_transport()
    values = {size: os.urandom(size) for size in plan.reps}
    rows: list[Row] = []
    skipped: list[str] = []
    pyro5: dict[str, Any] = {}

    with scenarios.farside_target(tls) as base:
        progress("a, f: raw socket ping-pong and streaming (Unix, TCP)")
        rows += baselines.socket_floors(plan.calls, plan.warmup, values, plan.reps)
        progress("a, f: raw gRPC ping-pong and streaming")
        rows += baselines.grpc_floors(
            plan.calls, plan.warmup, (family,) if tls else families, values, plan.reps, base.tls_dir
        )
        for transport in scenarios.TRANSPORTS:
            target = dataclasses.replace(base, transport=transport, default=transport == default)
            rows += _farside(target, plan, values, quick, progress)
    if importlib.util.find_spec("rpyc") is None:
        skipped.append("rpyc is not installed (pip install -e '.[bench]')")
    else:
        progress("d: rpyc")
        rows += baselines.rpyc_rows(plan.calls, plan.warmup, families)
    if importlib.util.find_spec("Pyro5") is None:
        skipped.append("Pyro5 is not installed (pip install -e '.[bench]')")
    else:
        progress("d: Pyro5 (serializer probe, then the chosen one)")
        pyro5_rows, pyro5 = baselines.pyro5_rows(plan.calls, plan.warmup, families, plan.probe)
        rows += pyro5_rows
    for transport in scenarios.TRANSPORTS:
        label = f"farside {transport}" + (" (default)" if transport == default else "")
        progress(f"h: {label} cold load and idle proxy RSS")
        rows += scenarios.cold_load(transport, label, plan.loads, plan.idle)
    progress("done")
    rows.sort(key=lambda r: "abcdefgh".index(r["section"]))
    ratios = [
        ratio
        for transport in sorted(scenarios.TRANSPORTS, key=lambda t: t != default)
        for ratio in targets.for_transport(
            rows, transport, default=transport == default, family=family
        )
    ]
    how = {"farside": FARSIDE_HOW}
    how.update(peers.HOW)
    return {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "quick": quick,
            "tls": tls,
            "runs": 1,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "grpcio": grpc.__version__,
            "rpyc_version": _version("rpyc"),
            "pyro5_version": _version("Pyro5"),
            "payload_bytes": len(PAYLOAD),
            "calls": plan.calls,
            "warmup": plan.warmup,
            "default_transport": default,
            "default_source": _default_source(),
            "family": family,
            "family_name": (
                "TCP loopback (raw gRPC with TLS like farside; raw socket, rpyc, Pyro5 plaintext)"
                if tls
                else f"{FAMILY_NAMES[family]} socket"
            ),
            "pyro5": pyro5,
            "seconds": round(time.perf_counter() - started, 1),
            # Other processes on the machine skew every figure; this says how busy it was.
            "loadavg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
        "how": how,
        "rows": rows,
        "ratios": ratios,
        "skipped": skipped,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer iterations (about a minute)")
    parser.add_argument("--tls", action="store_true", help="farside and raw gRPC over TLS")
    parser.add_argument(
        "--runs", type=int, default=1, help="repeat the run N times; report medians and ranges"
    )
    parser.add_argument(
        "--output", type=Path, default=report.RESULTS, help="directory for the results"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    started = time.perf_counter()
    results = []
    for index in range(args.runs):
        prefix = f"run {index + 1}/{args.runs}: " if args.runs > 1 else ""

        def progress(what: str, prefix: str = prefix) -> None:
            elapsed = time.perf_counter() - started
            print(f"[{elapsed:6.1f} s] {prefix}{what}", file=sys.stderr, flush=True)

        results.append(run(args.quick, args.tls, progress))
    result = results[0] if args.runs == 1 else report.aggregate(results)
    paths = report.write(result, args.output)
    print(report.markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
