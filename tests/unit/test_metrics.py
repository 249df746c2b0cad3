"""The metrics' plain-Python parts: the proxy's counters, the status-line grammar, the
server's totals (monotonic, bounded), the trace carrier, and the log formats."""

from __future__ import annotations

import io
import json
import logging

import pytest

from farside._logging import configure_logging
from farside.metrics.aggregate import Totals
from farside.metrics.counters import BUCKETS, MAX_NAMES, OTHER, ProxyCounters
from farside.metrics.report import MAX_ENTRY_POINTS, MAX_EXIT_NAMES, ProxyReport, report_lines
from farside.tracing import MAX_CARRIER, decode_carrier, encode_carrier

MEASUREMENT = "ab" * 32


def counted() -> ProxyCounters:
    counters = ProxyCounters(transport="stream")
    counters.set_entry_points(["encrypt", "decrypt", "bad name!", "run"])
    counters.record_call(counters.entry_label(None, "encrypt"), "ok", 0.0002)
    counters.record_call(counters.entry_label(None, "encrypt"), "ok", 0.003)
    counters.record_call(counters.entry_label(None, "not_an_ecall"), "error", 0.0001)
    counters.record_call(counters.entry_label("run", ""), "ok", 20.0)
    counters.record_exit("audit")
    counters.record_exit("audit")
    counters.record_exit("farside.fs.open")
    counters.add_received(100)
    counters.add_sent(40)
    return counters


def report_of(counters: ProxyCounters, calls: int = 4) -> ProxyReport:
    report = ProxyReport()
    for line in report_lines(counters.snapshot(), MEASUREMENT, calls).values():
        assert line.endswith(b"\n")
        assert report.read(line[:-1]), line
    return report


def test_counters_label_only_the_bundles_entry_points() -> None:
    snapshot = counted().snapshot()
    assert set(snapshot.calls) == {("encrypt", "ok"), (OTHER, "error"), ("run", "ok")}
    encrypt = snapshot.calls[("encrypt", "ok")]
    assert encrypt.count == 2
    assert encrypt.sum_us == 3200
    assert sum(encrypt.buckets) == 2
    assert encrypt.buckets[0] == 1  # 0.2 ms <= 0.5 ms
    assert snapshot.calls[("run", "ok")].buckets[-1] == 1  # 20 s: +Inf
    assert snapshot.exits == {"audit": 2, "farside.fs.open": 1}
    assert (snapshot.received, snapshot.sent, snapshot.transport) == (100, 40, "stream")


def test_exit_names_are_bounded() -> None:
    counters = ProxyCounters()
    for i in range(MAX_NAMES + 50):
        counters.record_exit(f"name{i}")
    counters.record_exit("x" * 500)
    counters.record_exit("spaces are not labels")
    exits = counters.snapshot().exits
    assert len(exits) == MAX_NAMES + 1
    assert exits[OTHER] == 52


def test_the_report_round_trips_through_its_grammar() -> None:
    counters = counted()
    counters.end_session("closed")
    report = report_of(counters)
    snapshot = counters.snapshot()
    assert report.measurement == MEASUREMENT
    assert report.calls_served == 4
    assert report.calls == snapshot.calls
    assert report.exits == snapshot.exits
    assert (report.received, report.sent, report.session) == (100, 40, "closed")
    again = ProxyReport()
    assert all(again.read(line) for line in report.lines())
    assert again.calls == report.calls


@pytest.mark.parametrize(
    "line",
    [
        b"status - \xc2\xb2",
        b"status " + b"f" * 64 + b" 9999999999999999999",
        b"call encrypt ok 1 5" + b" 0" * len(BUCKETS) + b" 1 7",  # one bucket too many
        b"call encrypt ok 2 5" + b" 0" * len(BUCKETS) + b" 1",  # buckets do not add up
        b"call encrypt maybe 1 5" + b" 0" * len(BUCKETS) + b" 1",
        b"call bad-\xff ok 1 5" + b" 0" * len(BUCKETS) + b" 1",
        b"exit " + b"x" * 65 + b" 1",
        b"exit audit -1",
        b"bytes 1",
        b"session exploded",
        b"session closed ",
        b"",
    ],
)
def test_the_reader_takes_nothing_but_the_grammar(line: bytes) -> None:
    report = ProxyReport()
    assert not report.read(line)
    assert report == ProxyReport()


def test_a_proxy_cannot_grow_the_report_without_bound() -> None:
    report = ProxyReport()
    zeros = b" 0" * len(BUCKETS)
    for i in range(1000):
        report.read(b"call e%d ok 1 1%s 1" % (i, zeros))
        report.read(b"exit x%d 1" % i)
    assert len({entry for entry, _ in report.calls}) == MAX_ENTRY_POINTS
    assert len(report.exits) == MAX_EXIT_NAMES


def test_totals_only_grow_and_outlive_their_proxies() -> None:
    totals = Totals()
    counters = counted()
    totals.merge("a", report_of(counters))
    first = totals.snapshot()
    assert first.calls[("encrypt", "ok")].count == 2
    # A proxy that reports less (or lies) lowers nothing.
    lower = ProxyReport()
    lower.read(b"call encrypt ok 0 0" + b" 0" * (len(BUCKETS) + 1))
    lower.read(b"bytes 0 0")
    totals.merge("a", lower)
    assert totals.snapshot().calls == first.calls
    assert totals.snapshot().received == 100
    # Counting on from the high-water mark, not from the lie.
    counters.record_call("encrypt", "ok", 0.001)
    totals.merge("a", report_of(counters))
    assert totals.snapshot().calls[("encrypt", "ok")].count == 3
    # Another proxy adds to the same series; the first one's end takes nothing away.
    totals.merge("b", report_of(counted()))
    totals.finish("a", None, "grpc")
    after = totals.snapshot()
    assert after.calls[("encrypt", "ok")].count == 5
    assert after.exits["audit"] == 4
    assert after.sessions == {("grpc", "crashed"): 1}
    # A report read before the end and merged after it is not counted again.
    totals.merge("a", report_of(counters))
    assert totals.snapshot().calls[("encrypt", "ok")].count == 5
    finished = counted()
    finished.end_session("no_client")
    totals.finish("c", report_of(finished), "stream")
    assert totals.snapshot().sessions[("stream", "no_client")] == 1


def test_totals_bound_the_label_values_server_wide() -> None:
    totals = Totals(max_names=3)
    for i in range(5):
        report = ProxyReport()
        report.read(b"call e%d ok 1 1%s 1" % (i, b" 0" * len(BUCKETS)))
        totals.merge(f"proxy{i}", report)
    calls = totals.snapshot().calls
    assert {entry for entry, _ in calls} == {"e0", "e1", "e2", OTHER}
    assert calls[(OTHER, "ok")].count == 2


def test_provisions_are_counted_by_outcome() -> None:
    totals = Totals()
    for outcome in ("ok", "ok", "refused_auth", "refused_capacity", "whatever"):
        totals.count_provision(outcome)
    assert totals.snapshot().provisions == {
        "ok": 2,
        "refused_capacity": 1,
        "refused_auth": 1,
        "failed": 1,
    }


def test_the_trace_carrier_keeps_only_w3c_fields() -> None:
    parent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    data = encode_carrier({"traceparent": parent, "tracestate": "a=b", "baggage": "secret=1"})
    assert decode_carrier(data) == {"traceparent": parent, "tracestate": "a=b"}
    assert decode_carrier(b"x" * (MAX_CARRIER + 1)) == {}
    assert decode_carrier(b"traceparent=\x00\ntracestate=ok\nevil=1") == {"tracestate": "ok"}
    assert encode_carrier({"traceparent": "x" * 2000}) == b""


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_log_line_has_a_timestamp(fmt: str) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("info", fmt, name="farside-test", stream=stream)
        logging.getLogger("farside.test").info("hello %s", "world")
        logging.getLogger("farside.test").debug("not shown")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    [line] = stream.getvalue().splitlines()
    if fmt == "json":
        entry = json.loads(line)
        assert entry["message"] == "hello world"
        assert entry["level"] == "info"
        assert entry["process"] == "farside-test"
        stamp = entry["ts"]
    else:
        stamp, name, level, message = line.split(" ", 3)
        assert (name, level, message) == ("farside-test", "INFO", "hello world")
    assert stamp.endswith("Z")
    assert len(stamp) == len("2026-01-01T00:00:00.000Z")


def test_logging_refuses_unknown_levels_and_formats() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("loud", "text")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml")
