"""The provision server's totals: what every proxy it ran reported, as counters that only grow.

Each proxy reports cumulative numbers (``farside.metrics.report``), and may be hostile:
``Totals.merge`` adds, per proxy and per series, only how far a number went past the
highest value that proxy reported before, so a proxy can add to the totals but never
lower them, and a proxy that ends (``finish``) takes nothing with it. Label values are
bounded server-wide too: at most ``max_names`` entry point names and exit call names
in all; later ones are counted under ``other``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from .counters import SESSION_OUTCOMES, CallStats, label_name
from .report import ProxyReport

__all__ = ["PROVISION_OUTCOMES", "Row", "Totals", "TotalsSnapshot", "counter_rows"]

PROVISION_OUTCOMES = ("ok", "refused_capacity", "refused_auth", "failed")
MAX_SERVER_NAMES = 256
REMEMBERED_ENDS = 4096
"""Ended proxies remembered, so that a report read just before the end is not counted twice."""

Row = tuple[str, dict[str, str], float]
"""A counter as ``farside status --json`` shows it: (family name, labels, value)."""


def counter_rows(
    calls: dict[tuple[str, str], CallStats], exits: dict[str, int], received: int, sent: int
) -> list[Row]:
    """The per-call counters as rows (the names of the Prometheus families)."""
    rows: list[Row] = []
    for (entry, outcome), stats in sorted(calls.items()):
        labels = {"entry_point": entry, "outcome": outcome}
        rows.append(("farside_calls_total", labels, float(stats.count)))
        rows.append(("farside_call_duration_seconds_sum", labels, stats.sum_us / 1e6))
    rows += [("farside_exit_calls_total", {"name": n}, float(c)) for n, c in sorted(exits.items())]
    rows.append(("farside_bytes_total", {"direction": "received"}, float(received)))
    rows.append(("farside_bytes_total", {"direction": "sent"}, float(sent)))
    return rows


@dataclass(slots=True)
class _HighWater:
    calls: dict[tuple[str, str], CallStats] = field(default_factory=dict)
    exits: dict[str, int] = field(default_factory=dict)
    received: int = 0
    sent: int = 0


@dataclass(frozen=True, slots=True)
class TotalsSnapshot:
    """A consistent copy of the totals, for ``/metrics`` and ``ListEnclaves``."""

    provisions: dict[str, int]
    sessions: dict[tuple[str, str], int]
    calls: dict[tuple[str, str], CallStats]
    exits: dict[str, int]
    received: int
    sent: int

    def rows(self) -> list[Row]:
        """Every total as a row."""
        rows: list[Row] = [
            ("farside_provisions_total", {"outcome": o}, float(n))
            for o, n in self.provisions.items()
        ]
        rows += [
            ("farside_sessions_total", {"transport": t, "outcome": o}, float(n))
            for (t, o), n in sorted(self.sessions.items())
        ]
        return rows + counter_rows(self.calls, self.exits, self.received, self.sent)


def _grown(new: int, old: int) -> int:
    return new - old if new > old else 0


class Totals:
    """Monotonic totals over every proxy of a server (see the module docstring); thread-safe."""

    def __init__(self, *, max_names: int = MAX_SERVER_NAMES) -> None:
        self._lock = threading.Lock()
        self._max_names = max_names
        self._provisions = dict.fromkeys(PROVISION_OUTCOMES, 0)
        self._sessions: dict[tuple[str, str], int] = {}
        self._calls: dict[tuple[str, str], CallStats] = {}
        self._exits: dict[str, int] = {}
        self._received = 0
        self._sent = 0
        self._entry_names: set[str] = set()
        self._exit_names: set[str] = set()
        self._high: dict[str, _HighWater] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()

    def count_provision(self, outcome: str) -> None:
        """One ``Provision`` request was answered (one of ``PROVISION_OUTCOMES``)."""
        with self._lock:
            self._provisions[outcome if outcome in self._provisions else "failed"] += 1

    def merge(self, proxy: str, report: ProxyReport) -> None:
        """Add what ``proxy`` reported beyond what it reported before."""
        with self._lock:
            if proxy not in self._ended:
                self._merge_locked(proxy, report)

    def finish(self, proxy: str, report: ProxyReport | None, transport: str) -> None:
        """``proxy`` ended: merge its last report, count its session, forget it.

        A proxy that did not say how its session ended died without saying: ``crashed``.
        """
        with self._lock:
            if proxy in self._ended:
                return
            if report is not None:
                self._merge_locked(proxy, report)
            self._high.pop(proxy, None)
            self._ended[proxy] = None
            if len(self._ended) > REMEMBERED_ENDS:
                self._ended.popitem(last=False)
            outcome = report.session if report is not None and report.session else "crashed"
            if outcome not in SESSION_OUTCOMES:
                outcome = "crashed"
            key = (transport, outcome)
            self._sessions[key] = self._sessions.get(key, 0) + 1

    def _merge_locked(self, proxy: str, report: ProxyReport) -> None:
        high = self._high.setdefault(proxy, _HighWater())
        for key, stats in report.calls.items():
            before = high.calls.get(key, _EMPTY)
            count = _grown(stats.count, before.count)
            sum_us = _grown(stats.sum_us, before.sum_us)
            buckets = [_grown(n, b) for n, b in zip(stats.buckets, before.buckets, strict=True)]
            high.calls[key] = CallStats(
                max(stats.count, before.count),
                max(stats.sum_us, before.sum_us),
                tuple(max(n, b) for n, b in zip(stats.buckets, before.buckets, strict=True)),
            )
            if not (count or sum_us or any(buckets)):
                continue
            entry = label_name(key[0], self._entry_names, limit=self._max_names)
            total = self._calls.get((entry, key[1]), _EMPTY)
            self._calls[(entry, key[1])] = CallStats(
                total.count + count,
                total.sum_us + sum_us,
                tuple(t + d for t, d in zip(total.buckets, buckets, strict=True)),
            )
        for name, count in report.exits.items():
            grown = _grown(count, high.exits.get(name, 0))
            if grown:
                high.exits[name] = count
                label = label_name(name, self._exit_names, limit=self._max_names)
                self._exits[label] = self._exits.get(label, 0) + grown
        self._received += _grown(report.received, high.received)
        self._sent += _grown(report.sent, high.sent)
        high.received = max(high.received, report.received)
        high.sent = max(high.sent, report.sent)

    def snapshot(self) -> TotalsSnapshot:
        with self._lock:
            return TotalsSnapshot(
                provisions=dict(self._provisions),
                sessions=dict(self._sessions),
                calls=dict(self._calls),
                exits=dict(self._exits),
                received=self._received,
                sent=self._sent,
            )


_EMPTY = CallStats()
