"""``/metrics`` over HTTP: farside's counters as Prometheus metric families.

The only module of the proxy and the servers that imports ``prometheus_client``, and
only once ``--metrics-address`` asked for it. The numbers live in plain Python
(``counters``, ``aggregate``); a ``Collector`` renders them when Prometheus scrapes,
so recording a call costs no Prometheus call at all. Each exporter has its own
registry (with the process collector), never the global one.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .aggregate import TotalsSnapshot
from .counters import BUCKETS, CallStats, Snapshot

__all__ = [
    "MetricsServer",
    "call_families",
    "fleet_families",
    "host_families",
    "parse_address",
    "proxy_families",
    "serve_metrics",
    "totals_families",
]

Family = Any  # prometheus_client.core.Metric


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) as (host, port); ``ValueError`` if it is not."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--metrics-address takes HOST:PORT (port 0 picks one), not {text!r}")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MetricsServer:
    """An HTTP server answering ``GET /metrics`` with what ``collect`` yields.

    It binds at once; it serves (on threads of its own) from ``start``. A proxy binds
    before it enters its network namespace, and must not start threads before that.
    """

    def __init__(self, address: str, collect: Callable[[], Iterable[Family]]) -> None:
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
        from prometheus_client.exposition import ThreadingWSGIServer

        host, port = parse_address(address)

        class _Collector:
            def collect(self) -> Iterator[Family]:
                yield from collect()

        class _Quiet(WSGIRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per scrape is noise in a daemon's log

        class _Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector())
        ProcessCollector(registry=self.registry)
        try:
            self._server = make_server(
                host, port, make_wsgi_app(self.registry), _Server, handler_class=_Quiet
            )
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from exc
        bound = self._server.server_address[1]
        self.address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        self.loopback = _is_loopback(host)
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        """Serve from now on (a daemon thread); returns itself."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, daemon=True, name="farside-metrics"
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5.0)
        self._server.server_close()


def serve_metrics(address: str, collect: Callable[[], Iterable[Family]]) -> MetricsServer:
    """Serve ``/metrics`` on ``address`` (``HOST:PORT``); ``OSError`` if it cannot bind."""
    return MetricsServer(address, collect).start()


def call_families(
    calls: dict[tuple[str, str], CallStats], exits: dict[str, int], received: int, sent: int
) -> list[Family]:
    """The per-call families: calls, their durations, exit calls, bytes."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    total = CounterMetricFamily(
        "farside_calls", "Entry calls the enclave served", labels=["entry_point", "outcome"]
    )
    durations = HistogramMetricFamily(
        "farside_call_duration_seconds",
        "How long entry calls took in the proxy, from arrival to result",
        labels=["entry_point"],
    )
    by_entry: dict[str, CallStats] = {}
    for (entry, outcome), stats in sorted(calls.items()):
        total.add_metric([entry, outcome], stats.count)
        before = by_entry.get(entry)
        by_entry[entry] = (
            stats
            if before is None
            else CallStats(
                before.count + stats.count,
                before.sum_us + stats.sum_us,
                tuple(a + b for a, b in zip(before.buckets, stats.buckets, strict=True)),
            )
        )
    for entry, stats in sorted(by_entry.items()):
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), stats.buckets, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        durations.add_metric([entry], buckets, stats.sum_us / 1e6)
    exit_calls = CounterMetricFamily(
        "farside_exit_calls", "Exit calls enclave code made, by handler name", labels=["name"]
    )
    for name, count in sorted(exits.items()):
        exit_calls.add_metric([name], count)
    size = CounterMetricFamily(
        "farside_bytes",
        "Bytes of session frames: received from and sent to the other end",
        labels=["direction"],
    )
    size.add_metric(["received"], received)
    size.add_metric(["sent"], sent)
    return [total, durations, exit_calls, size]


def proxy_families(snapshot: Snapshot, running: bool) -> list[Family]:
    """A proxy's own ``/metrics``: its one session's families."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    enclaves = GaugeMetricFamily("farside_enclaves_running", "Enclaves this process hosts")
    enclaves.add_metric([], 1 if running else 0)
    sessions = CounterMetricFamily(
        "farside_sessions", "Sessions that ended, by how", labels=["transport", "outcome"]
    )
    if snapshot.session:
        sessions.add_metric([snapshot.transport, snapshot.session], 1)
    return [
        enclaves,
        sessions,
        *call_families(snapshot.calls, snapshot.exits, snapshot.received, snapshot.sent),
    ]


def totals_families(totals: TotalsSnapshot, running: int) -> list[Family]:
    """A provision server's ``/metrics``: its enclaves, requests, and its proxies' totals."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    enclaves = GaugeMetricFamily(
        "farside_enclaves_running", "Enclaves this server runs (starting ones included)"
    )
    enclaves.add_metric([], running)
    provisions = CounterMetricFamily(
        "farside_provisions", "Provision requests answered, by outcome", labels=["outcome"]
    )
    for outcome, count in totals.provisions.items():
        provisions.add_metric([outcome], count)
    sessions = CounterMetricFamily(
        "farside_sessions",
        "Sessions of this server's proxies that ended, by transport and how they ended",
        labels=["transport", "outcome"],
    )
    for (transport, outcome), count in sorted(totals.sessions.items()):
        sessions.add_metric([transport, outcome], count)
    return [
        enclaves,
        provisions,
        sessions,
        *call_families(totals.calls, totals.exits, totals.received, totals.sent),
    ]


MAX_FLEET_LABELS = 64


def fleet_families(hosts: Iterable[tuple[bool, int, dict[str, str]]]) -> list[Family]:
    """Fleet mode: hosts by state, and free slots in all (``any``) and per node label.

    ``hosts`` are (alive, free slots, labels) of every host offering slots; labels
    come from the operators' ``fleet join --label`` (at most ``MAX_FLEET_LABELS``).
    """
    from prometheus_client.core import GaugeMetricFamily

    states = {"alive": 0, "dead": 0}
    free: dict[str, int] = {"any": 0}
    for alive, free_slots, labels in hosts:
        states["alive" if alive else "dead"] += 1
        free["any"] += free_slots
        for key, value in sorted(labels.items()):
            label = f"{key}={value}"
            if label in free or len(free) <= MAX_FLEET_LABELS:
                free[label] = free.get(label, 0) + free_slots
    hosts_family = GaugeMetricFamily(
        "farside_fleet_hosts", "Trusted hosts offering enclave slots", labels=["state"]
    )
    for state, number in states.items():
        hosts_family.add_metric([state], number)
    slots = GaugeMetricFamily(
        "farside_fleet_free_slots",
        "Free enclave slots on live hosts, in all (label any) and per node label",
        labels=["label"],
    )
    for label, number in sorted(free.items()):
        slots.add_metric([label], number)
    return [hosts_family, slots]


def host_families(running: int, slots: int) -> list[Family]:
    """One fleet host's ``/metrics`` (``fleet join``): enclaves running, slots offered."""
    from prometheus_client.core import GaugeMetricFamily

    enclaves = GaugeMetricFamily(
        "farside_enclaves_running", "Enclave proxies running on this fleet host"
    )
    enclaves.add_metric([], running)
    offered = GaugeMetricFamily("farside_fleet_host_slots", "Enclave slots this host offers")
    offered.add_metric([], slots)
    return [enclaves, offered]
