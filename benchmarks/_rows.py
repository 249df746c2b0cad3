"""Result rows of ``python -m benchmarks``: plain dicts, one per measurement.

A row has a ``section`` (the letter of the performance issue's list, a-h), a
stable ``key`` (what the targets and the aggregation across runs look rows up
by), a ``name`` for people, and either ``median_us``/``p99_us``/``mean_us``/``n``
(a latency) or ``value``/``unit`` (anything else).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ._timing import Latency

PAYLOAD = b"x" * 64
FAMILY_NAMES = {"unix": "Unix", "tcp": "TCP"}
Row = dict[str, Any]


def row(section: str, key: str, name: str, **fields: Any) -> Row:
    return {"section": section, "key": key, "name": name, **fields}


def latency_row(section: str, key: str, name: str, samples: list[float], **fields: Any) -> Row:
    return row(section, key, name, **asdict(Latency.of(samples)), **fields)


def throughput_row(section: str, key: str, name: str, size: int, seconds: float) -> Row:
    """MiB/s of ``size`` bytes going in and coming back (both directions count)."""
    mib_s = 2 * size / seconds / (1 << 20)
    return row(section, key, name, value=mib_s, unit="MiB/s", seconds=seconds, size=size)


def metric(r: Row) -> float:
    """The number a row stands for: its median latency (µs) or its value."""
    return float(r["median_us"] if "median_us" in r else r["value"])


def size_name(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
