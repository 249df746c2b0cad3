"""What the enclave's file system costs: exit calls per operation, and time.

    python -m benchmarks.fs_cost [--stats 2000] [--walks 10] [--transport grpc|stream]

Inside a local enclave whose files root is a fresh temporary tree: ``os.stat`` and
``os.path.exists`` of one file (each timed inside the enclave), and ``os.walk`` over
1,000 files in 10 directories of 100. Exit calls are counted on the client, by name,
as the enclave makes them (deterministic: tests/integration/test_fs_view.py asserts
them); times are reported next to the same operation done natively on the client,
never asserted. Without ``--transport``, both transports in turn.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import farside

from ._timing import Latency

ENCLAVE = Path(__file__).with_name("fs_enclave.py")
DIRECTORIES, FILES_EACH = 10, 100


def make_tree(root: Path) -> None:
    (root / "one.txt").write_text("x")
    for d in range(DIRECTORIES):
        directory = root / "tree" / f"d{d}"
        directory.mkdir(parents=True)
        for f in range(FILES_EACH):
            (directory / f"f{f}.txt").touch()


@contextmanager
def counted(enclave: farside.EnclaveClient) -> Iterator[collections.Counter[str]]:
    """Count the exit calls ``enclave`` makes while the block runs."""
    counts: collections.Counter[str] = collections.Counter()
    exits = enclave._exits
    served = exits.handle_call

    def counting(event: Any) -> Any:
        counts[event.name] += 1
        return served(event)

    exits.handle_call = counting  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        del exits.handle_call


def _native(fn: Any, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def measure(transport: str, stats: int, walks: int) -> list[str]:
    lines = [f"transport {transport}:"]
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        make_tree(root)
        provision = farside.LocalProvision(transport=transport)  # type: ignore[arg-type]
        with farside.load(ENCLAVE, provision=provision, files_root=root) as enclave:
            enclave.call("stat", "one.txt", 50)  # warm up
            for op, native in (("stat", os.stat), ("exists", os.path.exists)):
                with counted(enclave) as calls:
                    samples = enclave.call(op, "one.txt", stats)
                inside = Latency.of(samples)
                here = Latency.of(_native(lambda n=native: n(root / "one.txt"), stats))
                lines.append(
                    f"  os.{'path.' if op == 'exists' else ''}{op:<7} "
                    f"{sum(calls.values()) / stats:4.2f} exit calls each   "
                    f"median {inside.median_us:7.1f} µs  p99 {inside.p99_us:7.1f} µs   "
                    f"(natively {here.median_us:5.2f} µs)"
                )
            enclave.call("walk", "tree", 1)
            with counted(enclave) as calls:
                walked = enclave.call("walk", "tree", walks)
            directories, files = walked["directories"], walked["files"]
            total = sum(calls.values()) / walks
            by_name = ", ".join(
                f"{name.removeprefix('farside.fs.')} {count / walks:g}"
                for name, count in sorted(calls.items())
            )
            native_walk = _native(lambda: list(os.walk(root / "tree")), walks)
            lines.append(
                f"  os.walk over {files:,} files in {directories} directories: "
                f"{total:g} exit calls ({by_name}) = {total / directories:.2f} per directory   "
                f"median {statistics.median(walked['seconds']) * 1e3:6.1f} ms   "
                f"(natively {statistics.median(native_walk) * 1e3:5.2f} ms)"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stats", type=int, default=2000, help="stat/exists calls timed")
    parser.add_argument("--walks", type=int, default=10, help="os.walk runs timed")
    parser.add_argument("--transport", choices=("grpc", "stream"), default=None)
    args = parser.parse_args(argv)
    for transport in [args.transport] if args.transport else ["stream", "grpc"]:
        for line in measure(transport, args.stats, args.walks):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
