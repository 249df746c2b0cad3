"""What the proxy's sandbox adds to a cold load and to one call, sandbox on vs off.

    python -m benchmarks.sandbox_cost [--loads 20] [--calls 3000]

Loads alternate between ``LocalProvision()`` (best-effort: every layer this machine
offers) and ``LocalProvision(sandbox="off")``, so both see the same machine load.
A cold load is ``load`` -> first result of an empty call -> destroy; the call cost
is the median round trip of an empty call in one enclave of each kind. Prints the
medians and their differences.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import farside

ENCLAVE = Path(__file__).with_name("bench_enclave.py")
MODES = ("best-effort", "off")
ROUNDS = 6


def _cold_load(provision: farside.LocalProvision) -> float:
    start = time.perf_counter()
    with farside.load(ENCLAVE, provision=provision) as enclave:
        enclave.call("empty")
        return time.perf_counter() - start


def _call_median(provision: farside.LocalProvision, calls: int) -> float:
    with farside.load(ENCLAVE, provision=provision) as enclave:
        for _ in range(300):
            enclave.call("empty")
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            enclave.call("empty")
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args(argv)
    provisions = {mode: farside.LocalProvision(sandbox=mode) for mode in MODES}  # type: ignore[arg-type]
    loads: dict[str, list[float]] = {mode: [] for mode in MODES}
    _cold_load(provisions["off"])  # warm the page cache and imports
    for _ in range(args.loads):
        for mode in MODES:
            loads[mode].append(_cold_load(provisions[mode]))
    calls: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(ROUNDS):  # enclaves of each kind, interleaved; the median of medians
        for mode in MODES:
            calls[mode].append(_call_median(provisions[mode], args.calls // ROUNDS))
    load = {mode: statistics.median(loads[mode]) * 1e3 for mode in MODES}
    call = {mode: statistics.median(calls[mode]) * 1e6 for mode in MODES}
    print(f"cold load -> first result -> destroy ({args.loads} loads each), median:")
    print(f"  sandbox best-effort {load['best-effort']:7.1f} ms")
    print(f"  sandbox off         {load['off']:7.1f} ms")
    print(f"  added               {load['best-effort'] - load['off']:+7.1f} ms")
    print(f"empty call ({args.calls} calls each), median:")
    print(f"  sandbox best-effort {call['best-effort']:7.1f} µs")
    print(f"  sandbox off         {call['off']:7.1f} µs")
    print(f"  added               {call['best-effort'] - call['off']:+7.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
