"""Per-call costs of farside on this machine (local provisioning, Unix socket).

    python -m benchmarks.call_latency [--calls N] [--transport grpc|stream]

Prints the median and p99 of: an empty call's round trip, a call with one nested
exit call, and the time of a 10,000-line print loop inside one call (its output
is captured, not shown), next to 10,000 empty calls for scale.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from collections.abc import Callable
from pathlib import Path

import farside

from ._timing import Latency, timings

ENCLAVE = Path(__file__).with_name("bench_enclave.py")
PAYLOAD = b"x" * 64


def _timings(fn: Callable[[], object], calls: int) -> list[float]:
    return timings(fn, calls, warmup=200)


def _summary(name: str, samples: list[float]) -> str:
    latency = Latency.of(samples)
    return (
        f"{name:<40} median {latency.median_us:8.1f} µs   p99 {latency.p99_us:8.1f} µs"
        f"   (n={latency.n})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--transport", choices=("grpc", "stream"), default=None)
    args = parser.parse_args(argv)
    provision = farside.LocalProvision(transport=args.transport)
    with farside.load(ENCLAVE, provision=provision, exit_handlers={"echo": lambda v: v}) as enclave:
        print(_summary("empty call", _timings(lambda: enclave.call("empty"), args.calls)))
        print(_summary("64-byte echo", _timings(lambda: enclave.call("echo", PAYLOAD), args.calls)))
        print(
            _summary(
                "call with one nested exit call",
                _timings(lambda: enclave.call("nested", PAYLOAD), args.calls),
            )
        )
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink):
            start = time.perf_counter()
            enclave.call("print_lines", 10_000)
            loop = time.perf_counter() - start
        assert sink.getvalue().count("\n") == 10_000, "print loop output incomplete"
        start = time.perf_counter()
        for _ in range(10_000):
            enclave.call("empty")
        empties = time.perf_counter() - start
        print(
            f"{'10,000-line print loop in one call':<40} {loop * 1e3:8.1f} ms"
            f"   ({loop / empties:.1%} of 10,000 empty calls: {empties * 1e3:.0f} ms)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
