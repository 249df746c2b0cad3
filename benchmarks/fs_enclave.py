"""Enclave for benchmarks/fs_cost.py: file operations timed inside the enclave."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from farside.trusted import TrustedApplication, ecall


def _times(fn: Callable[[], object], count: int) -> list[float]:
    clock = time.perf_counter
    samples = []
    for _ in range(count):
        start = clock()
        fn()
        samples.append(clock() - start)
    return samples


class FsEnclave(TrustedApplication):
    @ecall
    def stat(self, path: str, count: int) -> list[float]:
        return _times(lambda: os.stat(path), count)

    @ecall
    def exists(self, path: str, count: int) -> list[float]:
        return _times(lambda: os.path.exists(path), count)

    @ecall
    def walk(self, top: str, count: int) -> dict[str, Any]:
        found: list[int] = []

        def walk() -> None:
            found[:] = [0, 0]
            for _, dirs, files in os.walk(top):
                found[0] += 1
                found[1] += len(files)
                del dirs[:0]

        return {"seconds": _times(walk, count), "directories": found[0], "files": found[1]}


def build_trusted_application() -> TrustedApplication:
    return FsEnclave()
