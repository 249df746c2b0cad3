"""Timing helpers shared by the side-by-side benchmarks."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Latency:
    """Median and p99 of one round trip, in microseconds."""

    median_us: float
    p99_us: float
    mean_us: float
    n: int

    @classmethod
    def of(cls, samples: list[float]) -> Latency:
        ordered = sorted(samples)
        p99_index = max(0, min(len(ordered) - 1, int(len(ordered) * 0.99) - 1))
        return cls(
            median_us=statistics.median(ordered) * 1e6,
            p99_us=ordered[p99_index] * 1e6,
            mean_us=statistics.fmean(ordered) * 1e6,
            n=len(ordered),
        )


def timings(fn: Callable[[], object], calls: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn`` over ``calls`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    clock = time.perf_counter
    for _ in range(calls):
        start = clock()
        fn()
        samples.append(clock() - start)
    return samples


def calls_per_second(fn: Callable[[], object], threads: int, duration: float) -> float:
    """Total calls/s of ``threads`` threads each calling ``fn`` in a loop for ``duration`` s."""
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            fn()  # each thread's first call sets up its worker; not counted
            barrier.wait()
            count = 0
            while not stop.is_set():
                fn()
                count += 1
            counts[index] = count
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(duration)
    stop.set()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(counts) / elapsed
