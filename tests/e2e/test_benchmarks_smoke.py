"""The side-by-side benchmark harness still runs: one scenario, a handful of iterations."""

from __future__ import annotations

import farside
from benchmarks import scenarios


def test_farside_latency_scenario_runs() -> None:
    with farside.load(scenarios.ENCLAVE, exit_handlers={"echo": lambda value: value}) as enclave:
        rows = scenarios.farside_latency(enclave, "farside", calls=5, warmup=2)
    assert [r["section"] for r in rows] == ["b", "b", "c"]
    for r in rows:
        assert r["n"] == 5
        assert r["median_us"] > 0
        assert r["p99_us"] > 0
