"""The application's metrics, once it opts in with ``farside.metrics.enable()``.

``enable`` registers a collector in a Prometheus registry (the global one unless
another is given), which the application serves the way it serves its own metrics
(``prometheus_client.start_http_server``, its web framework's exporter...). Until
then nothing is counted and ``prometheus_client`` is not imported: the client's
code checks ``COUNTERS`` for None, and that is all a call pays.

Families: ``farside_attestation_failures_total{check}`` (each refused evidence, by the
check that refused it) and ``farside_bytes_total{direction}`` (session frames sent to
and received from proxies, by sessions loaded while enabled).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

from .counters import OTHER

__all__ = ["COUNTERS", "ClientCounters", "disable", "enable"]

MAX_CHECKS = 32
_CHECK = re.compile(r"[a-z][a-z0-9 ._\-]{0,31}")


class ClientCounters:
    """What the application counts (thread-safe; see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.attestation_failures: dict[str, int] = {}
        self.received = 0
        self.sent = 0

    def attestation_failed(self, check: str) -> None:
        """Evidence was refused by ``check`` (``AttestationError.check``)."""
        label = check.replace(" ", "_") if _CHECK.fullmatch(check) else OTHER
        with self._lock:
            if (
                label not in self.attestation_failures
                and len(self.attestation_failures) >= MAX_CHECKS
            ):
                label = OTHER
            self.attestation_failures[label] = self.attestation_failures.get(label, 0) + 1

    def add_received(self, size: int) -> None:
        with self._lock:
            self.received += size

    def add_sent(self, size: int) -> None:
        with self._lock:
            self.sent += size

    def families(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        with self._lock:
            failures = dict(self.attestation_failures)
            received, sent = self.received, self.sent
        attestation = CounterMetricFamily(
            "farside_attestation_failures",
            "Proxies' evidence this application refused, by the check that failed",
            labels=["check"],
        )
        for check, count in sorted(failures.items()):
            attestation.add_metric([check], count)
        yield attestation
        size = CounterMetricFamily(
            "farside_bytes",
            "Bytes of session frames: received from and sent to proxies",
            labels=["direction"],
        )
        size.add_metric(["received"], received)
        size.add_metric(["sent"], sent)
        yield size


COUNTERS: ClientCounters | None = None
_registered: tuple[Any, Any] | None = None  # (registry, collector)
_lock = threading.Lock()


class _Collector:
    def __init__(self, counters: ClientCounters) -> None:
        self._counters = counters

    def collect(self) -> Iterator[Any]:
        return self._counters.families()


def enable(registry: Any = None) -> None:
    """Count this application's attestation failures and session bytes from now on.

    ``registry`` is the ``prometheus_client.CollectorRegistry`` to register with (the
    global ``REGISTRY`` by default). Calling it again does nothing; sessions already
    open are not counted (their bytes, that is: attestation failures always are).
    """
    global COUNTERS, _registered  # noqa: PLW0603 (one opt-in per process)
    from prometheus_client import REGISTRY

    with _lock:
        if COUNTERS is not None:
            return
        counters = ClientCounters()
        collector = _Collector(counters)
        target = REGISTRY if registry is None else registry
        target.register(collector)
        _registered = (target, collector)
        COUNTERS = counters


def disable() -> None:
    """Stop counting and unregister the collector (``enable`` starts afresh)."""
    global COUNTERS, _registered  # noqa: PLW0603
    with _lock:
        if _registered is not None:
            registry, collector = _registered
            registry.unregister(collector)
        COUNTERS = None
        _registered = None
