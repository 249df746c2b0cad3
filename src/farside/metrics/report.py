"""The status lines a proxy writes to its provisioner, and their strict, bounded reader.

A proxy started with ``--report-status`` keeps its stdout pipe open and writes, at
most every ``REPORT_PERIOD`` seconds and only what changed, lines of this grammar
(ASCII, one space between fields, ``\\n`` at the end)::

    status <64 hex digits or -> <entry calls served>
    call <entry point> <ok|error|cancelled> <count> <total µs> <15 bucket counts>
    exit <exit call name> <count>
    bytes <received> <sent>
    session <closed|lost|no_client|stopped>

``call``, ``exit`` and ``bytes`` need ``--report-metrics``. Every number is cumulative
since the proxy started, so a lost or garbled line costs nothing: the next one carries
the total again. The proxy runs enclave code, which can write anything on that pipe,
so ``ProxyReport.read`` takes only lines of the exact grammar (names of the label
grammar, numbers of at most 18 digits, bucket counts that add up to the count), at
most ``MAX_NAMES`` + 4 entry points and ``MAX_NAMES`` + 1 exit names per proxy, and
nothing it reads can raise. The provision server turns what each proxy reports into
monotonic totals (``farside.metrics.aggregate``).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

from .counters import BUCKETS, MAX_NAMES, OUTCOMES, SESSION_OUTCOMES, CallStats, Snapshot

__all__ = ["REPORT_PERIOD", "ProxyReport", "report_lines"]

REPORT_PERIOD = 0.5
"""Seconds between a proxy's reports: what the server shows is at most this old."""
_NUMBER = rb"([0-9]{1,18})"
_NAME = rb"([A-Za-z_][A-Za-z0-9_.\-]{0,63})"
_STATUS = re.compile(rb"status ([0-9a-f]{64}|-) " + _NUMBER)
_CALL = re.compile(
    rb"call "
    + _NAME
    + rb" ("
    + b"|".join(o.encode() for o in OUTCOMES)
    + rb") "
    + _NUMBER
    + b" "
    + _NUMBER
    + rb"((?: [0-9]{1,18}){"
    + str(len(BUCKETS) + 1).encode()
    + rb"})"
)
_EXIT = re.compile(rb"exit " + _NAME + b" " + _NUMBER)
_BYTES = re.compile(rb"bytes " + _NUMBER + b" " + _NUMBER)
_SESSION = re.compile(rb"session (" + b"|".join(o.encode() for o in SESSION_OUTCOMES) + rb")")
MAX_ENTRY_POINTS = MAX_NAMES + 4  # the @ecall names, run, initialize, finalize, other
MAX_EXIT_NAMES = MAX_NAMES + 1  # and other


def report_lines(
    snapshot: Snapshot | None, measurement: str, calls_served: int
) -> dict[str, bytes]:
    """Every line that describes the proxy now, keyed by what it is about.

    The reporter writes a line when it differs from the last one written under its key.
    """
    lines = {"status": f"status {measurement or '-'} {calls_served}\n".encode()}
    if snapshot is None:
        return lines
    for (entry, outcome), stats in snapshot.calls.items():
        buckets = " ".join(str(n) for n in stats.buckets)
        lines[f"call {entry} {outcome}"] = (
            f"call {entry} {outcome} {stats.count} {stats.sum_us} {buckets}\n".encode()
        )
    for name, count in snapshot.exits.items():
        lines[f"exit {name}"] = f"exit {name} {count}\n".encode()
    lines["bytes"] = f"bytes {snapshot.received} {snapshot.sent}\n".encode()
    if snapshot.session:
        lines["session"] = f"session {snapshot.session}\n".encode()
    return lines


@dataclass(slots=True)
class ProxyReport:
    """What one proxy last reported; filled by ``read`` (see the module docstring)."""

    measurement: str = ""
    calls_served: int = 0
    calls: dict[tuple[str, str], CallStats] = field(default_factory=dict)
    exits: dict[str, int] = field(default_factory=dict)
    received: int = 0
    sent: int = 0
    session: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def read(self, line: bytes) -> bool:
        """Take one line (without its newline) if it is of the grammar; say whether it was."""
        if line.startswith(b"status "):
            match = _STATUS.fullmatch(line)
            if match is None:
                return False
            with self._lock:
                self.measurement = "" if match[1] == b"-" else match[1].decode("ascii")
                self.calls_served = int(match[2])
            return True
        if line.startswith(b"call "):
            return self._read_call(line)
        if line.startswith(b"exit "):
            match = _EXIT.fullmatch(line)
            if match is None:
                return False
            name = match[1].decode("ascii")
            with self._lock:
                if name not in self.exits and len(self.exits) >= MAX_EXIT_NAMES:
                    return False
                self.exits[name] = int(match[2])
            return True
        if line.startswith(b"bytes "):
            match = _BYTES.fullmatch(line)
            if match is None:
                return False
            with self._lock:
                self.received, self.sent = int(match[1]), int(match[2])
            return True
        match = _SESSION.fullmatch(line)
        if match is None:
            return False
        with self._lock:
            self.session = match[1].decode("ascii")
        return True

    def _read_call(self, line: bytes) -> bool:
        match = _CALL.fullmatch(line)
        if match is None:
            return False
        buckets = tuple(int(n) for n in match[5].split())
        count = int(match[3])
        if sum(buckets) != count:
            return False
        key = (match[1].decode("ascii"), match[2].decode("ascii"))
        with self._lock:
            names = {entry for entry, _ in self.calls}
            if key[0] not in names and len(names) >= MAX_ENTRY_POINTS:
                return False
            self.calls[key] = CallStats(count, int(match[4]), buckets)
        return True

    def lines(self) -> list[bytes]:
        """This report in the grammar again (a fleet slot hands it to the server this way,
        which reads it with ``read`` like any proxy's)."""
        report = self.copy()
        snapshot = Snapshot(
            calls=report.calls,
            exits=report.exits,
            received=report.received,
            sent=report.sent,
            transport="",
            session=report.session,
        )
        return [
            line.rstrip(b"\n")
            for line in report_lines(snapshot, report.measurement, report.calls_served).values()
        ]

    def copy(self) -> ProxyReport:
        """A consistent copy, for readers on other threads."""
        with self._lock:
            return ProxyReport(
                measurement=self.measurement,
                calls_served=self.calls_served,
                calls=dict(self.calls),
                exits=dict(self.exits),
                received=self.received,
                sent=self.sent,
                session=self.session,
            )
