"""What a proxy counts about its session, in plain Python: no Prometheus, no clock of its own.

``ProxyCounters`` is the proxy's recorder (``farside proxy`` makes one when a provision
server asks for metrics, ``--report-metrics``, or when it serves ``--metrics-address``
itself). The trusted runtime records each entry call (its entry point, outcome and
duration) and each exit call (its name); the proxy records the session's bytes and,
at the end, how the session ended. Everything here is bounded, because enclave code
chooses the names:

* entry points are labelled by name only if the name is one of the measured bundle's
  ``@ecall`` entry points (``set_entry_points``, right after the bundle's import) or
  ``run``/``initialize``/``finalize``; every other name is ``other``;
* exit calls are labelled by the first ``MAX_NAMES`` names of the label grammar that
  were seen; later and malformed names are ``other``.

Without a recorder the runtime pays one ``None`` check per call (docs/operations.md).
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "BUCKETS",
    "CONTROL_ENTRY_POINTS",
    "MAX_NAMES",
    "NAME",
    "OTHER",
    "OUTCOMES",
    "SESSION_OUTCOMES",
    "TRANSPORT_LABELS",
    "CallStats",
    "ProxyCounters",
    "Snapshot",
    "label_name",
]

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of ``farside_call_duration_seconds``; one more bucket is +Inf."""
MAX_NAMES = 64
"""Distinct entry point names, and exit call names, one proxy labels; the rest are ``other``."""
OTHER = "other"
CONTROL_ENTRY_POINTS = ("run", "initialize", "finalize")
OUTCOMES = ("ok", "error", "cancelled")
"""An entry call's outcome: it returned, it raised, or the client cancelled it."""
SESSION_OUTCOMES = ("closed", "lost", "no_client", "stopped", "crashed")
"""How a session ended: the client closed it, its stream broke, no client came, the proxy
was told to stop, or the proxy died without saying (only the provision server says that)."""
TRANSPORT_LABELS = ("grpc", "stream", "vsock")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
"""The label grammar of an entry point or exit call name."""


def label_name(name: str, known: set[str], *, limit: int = MAX_NAMES) -> str:
    """``name`` if it may be a label value (adding it to ``known`` while there is room),
    else ``other``."""
    if name in known:
        return name
    if len(known) >= limit or NAME.fullmatch(name) is None:
        return OTHER
    known.add(name)
    return name


@dataclass(frozen=True, slots=True)
class CallStats:
    """Entry calls of one entry point and outcome: how many, their total and their buckets.

    ``buckets[i]`` counts calls that took at most ``BUCKETS[i]`` seconds and more than the
    bound before it; the last one counts the rest (per bucket, not cumulative).
    """

    count: int = 0
    sum_us: int = 0
    buckets: tuple[int, ...] = (0,) * (len(BUCKETS) + 1)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A consistent copy of a ``ProxyCounters``, for reports and ``/metrics``."""

    calls: dict[tuple[str, str], CallStats]
    exits: dict[str, int]
    received: int
    sent: int
    transport: str
    session: str  # "" while the session lasts


class ProxyCounters:
    """The proxy's recorder (see the module docstring); thread-safe."""

    def __init__(self, *, transport: str = "grpc") -> None:
        self._lock = threading.Lock()
        self._entry_points: frozenset[str] = frozenset()
        # (entry point, outcome) -> [count, total µs, bucket counts...], updated in place
        self._calls: dict[tuple[str, str], list[int]] = {}
        self._exits: dict[str, int] = {}
        self._exit_names: set[str] = set()
        self._received = 0
        self._sent = 0
        self.transport = transport if transport in TRANSPORT_LABELS else OTHER
        self._session = ""

    def set_entry_points(self, names: Iterable[str]) -> None:
        """The measured bundle's ``@ecall`` names: the entry points labelled by name."""
        valid = sorted(n for n in names if NAME.fullmatch(n) and n not in CONTROL_ENTRY_POINTS)
        self._entry_points = frozenset(valid[:MAX_NAMES])

    def entry_label(self, control: str | None, name: str) -> str:
        """The label of an entry call: ``control`` (run, ...) or an ``@ecall`` name, or other."""
        if control is not None:
            return control
        return name if name in self._entry_points else OTHER

    def record_call(self, entry_point: str, outcome: str, seconds: float) -> None:
        """One entry call ended (``entry_point`` from ``entry_label``)."""
        key = (entry_point, outcome)
        bucket = 2 + bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            stats = self._calls.get(key)
            if stats is None:
                stats = self._calls[key] = [0] * (len(BUCKETS) + 3)
            stats[0] += 1
            stats[1] += round(seconds * 1e6)
            stats[bucket] += 1

    def record_exit(self, name: str) -> None:
        """The enclave made an exit call (two-way or one-way) to handler ``name``."""
        with self._lock:
            label = label_name(name, self._exit_names)
            self._exits[label] = self._exits.get(label, 0) + 1

    # The session's frames come from one reader thread, and its endpoint sends under its
    # own lock: each count has one writer at a time, and takes no lock of its own.

    def add_received(self, size: int) -> None:
        self._received += size

    def add_sent(self, size: int) -> None:
        self._sent += size

    def end_session(self, outcome: str) -> None:
        """How the session ended (one of ``SESSION_OUTCOMES``); the first word stands."""
        with self._lock:
            if not self._session and outcome in SESSION_OUTCOMES:
                self._session = outcome

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                calls={
                    key: CallStats(stats[0], stats[1], tuple(stats[2:]))
                    for key, stats in self._calls.items()
                },
                exits=dict(self._exits),
                received=self._received,
                sent=self._sent,
                transport=self.transport,
                session=self._session,
            )
