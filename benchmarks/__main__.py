"""farside side by side with raw gRPC, a raw socket, rpyc and Pyro5, in one run.

    python -m benchmarks [--quick] [--tls]

Writes benchmarks/results/latest.md, latest.json and latency.png (overwritten) and
prints the Markdown table. ``--quick`` uses fewer iterations (under a minute);
``--tls`` runs farside through an in-process provision server over mTLS on
loopback, and the raw gRPC baseline over TLS too. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc

from farside.transport.factory import TRANSPORTS

from . import report, scenarios


def _find(rows: list[dict[str, Any]], prefix: str, key: str) -> float | None:
    for r in rows:
        if r["name"].startswith(prefix) and key in r:
            return float(r[key])
    return None


def _ratio(name: str, top: float | None, bottom: float | None, target: str) -> dict[str, Any]:
    value = None if top is None or bottom in (None, 0) else top / bottom
    met = None
    if value is not None:
        bound = float(target.rsplit(maxsplit=1)[-1])
        met = value <= bound if target.startswith("≤") else value >= bound
    return {"name": name, "value": value, "target": target, "met": met}


def ratios(
    rows: list[dict[str, Any]], label: str, suffix: str, *, shared: bool = True
) -> list[dict[str, Any]]:
    """The targets' ratios for one transport (``label``); ``shared`` adds load and RSS."""
    lines = [r for r in rows if r["section"] == "e" and r["name"].startswith(label)]
    sixty_four = [
        r
        for r in rows
        if r["section"] == "f"
        and r.get("size") == 64 << 20
        and (r["name"].startswith(label) or r["name"].endswith(f"next to {label})"))
    ]
    per_transport = [
        _ratio(
            f"{label} empty call / raw gRPC sync ping-pong (median)",
            _find(rows, f"{label} empty call", "median_us"),
            _find(rows, f"raw gRPC bidi ping-pong, sync{suffix}", "median_us"),
            "≤ 1.3",
        ),
        _ratio(
            f"{label} nested call / rpyc callback (median)",
            _find(rows, f"{label} call with one nested", "median_us"),
            _find(rows, "rpyc call with server->client callback", "median_us"),
            "≤ 0.8",
        ),
        _ratio(
            f"{label} nested call / Pyro5 callback (median)",
            _find(rows, f"{label} call with one nested", "median_us"),
            _find(rows, "Pyro5 call with callback", "median_us"),
            "≤ 1.0",
        ),
        _ratio(
            f"{label} print loop / 10,000 empty calls",
            lines[0]["value"] if len(lines) == 2 else None,
            lines[1]["value"] if len(lines) == 2 else None,
            "≤ 0.05",
        ),
        _ratio(
            f"{label} 64 MiB throughput / raw gRPC streaming",
            sixty_four[0]["value"] if len(sixty_four) == 2 else None,
            sixty_four[1]["value"] if len(sixty_four) == 2 else None,
            "≥ 0.7",
        ),
        _ratio(
            f"{label} 16-thread / 1-thread calls/s",
            _find(rows, f"{label} empty calls/s, 16 ", "value"),
            _find(rows, f"{label} empty calls/s, 1 ", "value"),
            "≥ 2",
        ),
    ]
    if not shared:
        return per_transport
    return [
        *per_transport,
        _ratio(
            "cold load (s)",
            (_find(rows, "farside cold load", "value") or 0) / 1e3 or None,
            1.0,
            "≤ 0.5",
        ),
        _ratio("idle proxy RSS (MiB)", _find(rows, "farside idle proxy RSS", "value"), 1.0, "≤ 60"),
    ]


def _farside(
    target: scenarios.Farside,
    quick: bool,
    calls: int,
    warmup: int,
    sizes: dict[int, int],
    duration: float,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Sections b, c, e, f, g for one transport."""
    rows: list[dict[str, Any]] = []
    progress(f"b, c: {target.label} empty and nested calls")
    with target.load() as enclave:
        farside_rows = scenarios.farside_latency(enclave, target.label, calls, warmup)
        rows += farside_rows
        progress("e: print loop")
        rows += scenarios.print_loop(
            enclave,
            target.label,
            10_000,
            empty_mean_us=farside_rows[0]["mean_us"],
            measure_empties=not quick,
        )
        progress("f: 1 MiB and 64 MiB values")
        rows += scenarios.throughput(enclave, target.label, sizes, target.tls_dir)
        progress("g: 1, 4, 16 client threads")
        rows += scenarios.concurrency(enclave, target.label, (1, 4, 16), duration)
    return rows


def run(quick: bool, tls: bool) -> dict[str, Any]:
    calls, warmup = (1000, 100) if quick else (5000, 500)
    sizes = {1 << 20: 5, 64 << 20: 1} if quick else {1 << 20: 20, 64 << 20: 3}
    duration = 0.5 if quick else 2.0
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    started = time.perf_counter()

    def progress(what: str) -> None:
        print(f"[{time.perf_counter() - started:5.1f} s] {what}", file=sys.stderr, flush=True)

    with scenarios.farside_target(tls) as base:
        progress("a: raw socket, raw gRPC (sync, aio)")
        rows += scenarios.raw_socket(calls, warmup)
        rows += scenarios.raw_grpc(calls, warmup, base.tls_dir)
        for transport in TRANSPORTS:
            target = dataclasses.replace(base, transport=transport)
            rows += _farside(target, quick, calls, warmup, sizes, duration, progress)
    labels = [dataclasses.replace(base, transport=t).label for t in TRANSPORTS]
    for module, kind in (("rpyc", "rpyc"), ("Pyro5", "pyro5")):
        if importlib.util.find_spec(module) is None:
            skipped.append(f"{module} is not installed (pip install -e '.[bench]')")
            continue
        progress(f"d: {module}")
        rows += scenarios.peer_latency(kind, calls, warmup)
    progress("h: cold load and idle proxy RSS")
    rows += scenarios.cold_load(loads=3 if quick else 10, idle=1.0 if quick else 3.0)
    progress("done")
    order = "abcdefgh"
    rows.sort(key=lambda r: order.index(r["section"]))
    return {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "quick": quick,
            "tls": tls,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "grpcio": grpc.__version__,
            "payload_bytes": len(scenarios.PAYLOAD),
            "calls": calls,
            "warmup": warmup,
            "seconds": round(time.perf_counter() - started, 1),
        },
        "rows": rows,
        "ratios": [
            ratio
            for index, label in enumerate(labels)
            for ratio in ratios(rows, label, " (TLS)" if tls else "", shared=index == 0)
        ],
        "skipped": skipped,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer iterations (< 1 minute)")
    parser.add_argument("--tls", action="store_true", help="farside and raw gRPC over TLS")
    args = parser.parse_args(argv)
    result = run(args.quick, args.tls)
    paths = report.write(result)
    print(report.markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
