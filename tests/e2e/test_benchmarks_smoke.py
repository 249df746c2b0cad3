"""The side-by-side benchmark harness still runs: each scenario, a handful of iterations.

Timings are never asserted; these only check that every code path (farside, the
floors, the peers, the targets, the report across runs) still produces its rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import farside
from benchmarks import __main__ as harness, baselines, report, scenarios, targets

SMALL = {64 << 10: b"\x5a" * (64 << 10)}
ONCE = {64 << 10: 1}


def _check_latency(rows: list[dict[str, Any]], keys: list[str], n: int) -> None:
    assert [r["key"] for r in rows] == keys
    for r in rows:
        assert r["n"] == n
        assert r["median_us"] > 0
        assert r["p99_us"] > 0


def test_farside_latency_scenario_runs() -> None:
    with farside.load(scenarios.ENCLAVE, exit_handlers={"echo": lambda value: value}) as enclave:
        rows = scenarios.farside_latency(enclave, "farside", calls=5, warmup=2)
    assert [r["section"] for r in rows] == ["b", "b", "c"]
    _check_latency(
        rows, ["farside.default.empty", "farside.default.echo", "farside.default.nested"], 5
    )


@pytest.mark.parametrize("transport", scenarios.TRANSPORTS)
def test_aio_scenario_runs(transport: str) -> None:
    target = scenarios.Farside(transport=transport)
    rows = scenarios.aio(target, "farside", calls=5, warmup=2, tasks=4, duration=0.2)
    assert [r["key"] for r in rows] == [
        f"farside.{transport}.aio.empty",
        f"farside.{transport}.aio.calls_s.4",
    ]
    assert rows[0]["n"] == 5
    assert rows[0]["median_us"] > 0
    assert rows[1]["value"] > 0


def test_default_transport_is_asked_of_farside(monkeypatch: pytest.MonkeyPatch) -> None:
    for transport in scenarios.TRANSPORTS:
        monkeypatch.setenv("FARSIDE_TRANSPORT", transport)
        assert scenarios.default_transport() == transport


def test_socket_floors_run_on_unix_and_tcp() -> None:
    rows = baselines.socket_floors(calls=20, warmup=5, values=SMALL, reps=ONCE)
    size = next(iter(SMALL))
    assert [r["key"] for r in rows] == [
        "socket.pingpong.unix",
        f"socket.stream.unix.{size}",
        "socket.pingpong.tcp",
        f"socket.stream.tcp.{size}",
    ]
    assert all(r.get("median_us", r.get("value", 0)) > 0 for r in rows)


def test_grpc_floors_run() -> None:
    rows = baselines.grpc_floors(calls=20, warmup=5, families=("unix",), values=SMALL, reps=ONCE)
    size = next(iter(SMALL))
    assert [r["key"] for r in rows] == [
        "grpc.sync.unix",
        "grpc.unary.unix",
        "grpc.aio.unix",
        f"grpc.stream.unix.{size}",
    ]
    assert rows[-1]["value"] > 0


def test_rpyc_peer_runs() -> None:
    pytest.importorskip("rpyc")
    rows = baselines.rpyc_rows(calls=20, warmup=5, families=("unix",))
    _check_latency(rows, ["rpyc.empty.unix", "rpyc.nested.unix", "rpyc.nested_lookup.unix"], 20)


def test_pyro5_peer_runs_with_the_probed_serializer() -> None:
    pytest.importorskip("Pyro5")
    rows, chosen = baselines.pyro5_rows(calls=20, warmup=5, families=("tcp",), probe=10)
    _check_latency(rows, ["pyro5.empty.tcp", "pyro5.nested.tcp"], 20)
    assert chosen["serializer"] in chosen["probe_us"]
    assert all(r["serializer"] == chosen["serializer"] for r in rows)


def _fake_rows(scale: float) -> list[dict[str, Any]]:
    """One run's rows for the targets, without measuring anything."""
    big = targets.BIG
    latency = {
        "socket.pingpong.unix": 10,
        "grpc.sync.unix": 150,
        "grpc.aio.unix": 140,
        "rpyc.nested.unix": 110,
        "pyro5.nested.unix": 75,
    }
    rows = [
        {"section": "a", "key": k, "name": k, "median_us": v * scale, "p99_us": 2 * v, "n": 1}
        for k, v in latency.items()
    ]
    values = {"socket.stream.unix": 4000, "grpc.stream.unix": 2000}
    rows += [
        {"section": "f", "key": f"{k}.{big}", "name": k, "value": v, "unit": "MiB/s"}
        for k, v in values.items()
    ]
    for transport in scenarios.TRANSPORTS:
        me = f"farside.{transport}"
        rows += [
            {"section": "b", "key": f"{me}.empty", "name": me, "median_us": 70.0 * scale},
            {"section": "b", "key": f"{me}.aio.empty", "name": me, "median_us": 63.0 * scale},
            {"section": "c", "key": f"{me}.nested", "name": me, "median_us": 180.0},
            {"section": "f", "key": f"{me}.echo.{big}", "name": me, "value": 250.0},
            {"section": "g", "key": f"{me}.calls_s.1", "name": me, "value": 10_000.0},
            {"section": "g", "key": f"{me}.calls_s.16", "name": me, "value": 12_000.0},
            {"section": "h", "key": f"{me}.cold_load", "name": me, "value": 200.0},
            {"section": "h", "key": f"{me}.idle_rss", "name": me, "value": 50.0},
        ]
    for r in rows:
        r.setdefault("unit", "x")
        r.setdefault("p99_us", r.get("median_us"))
        r.setdefault("n", 1)
    return rows


def _fake_run(scale: float) -> dict[str, Any]:
    rows = _fake_rows(scale)
    ratios = [
        ratio
        for transport in scenarios.TRANSPORTS
        for ratio in targets.for_transport(
            rows, transport, default=transport == "stream", family="unix"
        )
    ]
    meta = {
        "date": "now",
        "quick": True,
        "tls": False,
        "runs": 1,
        "python": "3",
        "cpus": 2,
        "grpcio": "1",
        "payload_bytes": 64,
        "calls": 1,
        "warmup": 0,
        "default_transport": "stream",
        "default_source": "test",
        "family_name": "Unix socket",
        "pyro5": {"serializer": "marshal", "probe_us": {"marshal": 70.0, "msgpack": 72.0}},
        "seconds": 1.0,
    }
    return {"meta": meta, "how": {"peer": "call"}, "rows": rows, "ratios": ratios, "skipped": []}


def test_targets_are_computed_against_the_matching_baselines() -> None:
    ratios = {r["key"]: r for r in _fake_run(1.0)["ratios"]}
    assert ratios["stream.empty/socket"]["value"] == pytest.approx(7.0)
    assert ratios["stream.empty/socket"]["met"] is False
    # the faster of the sync and aio gRPC clients is the baseline
    assert ratios["stream.empty/grpc"]["value"] == pytest.approx(0.5)
    assert ratios["stream.empty/grpc"]["met"] is True
    assert "grpc.empty/grpc/transport" in ratios
    assert "stream.empty/grpc/transport" not in ratios
    assert ratios["stream.echo64/socket"]["value"] == pytest.approx(250 / 4000)
    assert ratios["stream.threads/moonshot"]["met"] is True
    assert ratios["stream.cold_load"]["value"] == pytest.approx(0.2)
    assert ratios["stream.print_loop"]["value"] is None  # not measured: n/a, not a failure
    assert ratios["stream.print_loop"]["met"] is None
    assert ratios["stream.aio/sync"]["value"] == pytest.approx(0.9)
    assert ratios["stream.aio/sync"]["met"] is True


def test_report_folds_runs_into_medians_ranges_and_counts(tmp_path: Path) -> None:
    runs = [_fake_run(scale) for scale in (1.0, 2.0, 3.0)]
    folded = report.aggregate(runs)
    empty = next(r for r in folded["ratios"] if r["key"] == "stream.empty/grpc")
    assert (empty["min"], empty["max"]) == (pytest.approx(0.5), pytest.approx(0.5))
    socket = next(r for r in folded["ratios"] if r["key"] == "stream.empty/socket")
    assert socket["measured_runs"] == 3
    assert socket["met_runs"] == 0
    paths = report.write(folded, tmp_path)
    text = paths["md"].read_text(encoding="utf-8")
    assert "Median of 3 runs" in text
    assert "0 of 3" in text
    assert "## How each peer is called" in text
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["meta"]["runs"] == 3
    single = report.markdown(runs[0])
    assert "| stream (default) |" in single


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_run_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("rpyc")
    pytest.importorskip("Pyro5")
    assert harness.main(["--quick", "--output", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "latest.json").read_text(encoding="utf-8"))
    assert all(r["value"] is not None for r in result["ratios"])
