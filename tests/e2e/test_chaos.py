"""The chaos harness, 200 faults (``benchmarks/chaos.py --ci``): no promise broken.

Every fault kind of the catalogue is injected at least once (the plan starts with each
kind once, in the seed's order), against live local and remote sessions on both
transports, and every invariant is checked after each fault. The network cut needs root
and ``ip netns``; elsewhere it is skipped, and the harness says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import chaos

SEED = 14
FAULTS = 200


@pytest.mark.timeout(600)
def test_two_hundred_faults_break_no_promise(tmp_path: Path) -> None:
    report = tmp_path / "chaos.json"
    process = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.chaos", "--ci"),
            *("--faults", str(FAULTS), "--seed", str(SEED), "--json", str(report)),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert report.exists(), process.stderr[-4000:]
    outcome = json.loads(report.read_text())
    assert outcome["details"] == [], process.stdout
    assert process.returncode == 0, process.stdout + process.stderr[-4000:]
    assert outcome["seed"] == SEED
    assert sum(outcome["injected"].values()) + sum(outcome["skipped"].values()) == FAULTS
    netns = os.geteuid() == 0 and shutil.which("ip") is not None
    expected = set(chaos.FAULTS) - (set() if netns else {"net-cut"})
    assert set(outcome["injected"]) >= expected, outcome["injected"]
    assert outcome["calls_ok"] > 0


def test_the_plan_is_the_seeds() -> None:
    first = chaos.make_plan(FAULTS, SEED, ci=True)
    assert first == chaos.make_plan(FAULTS, SEED, ci=True)
    assert first != chaos.make_plan(FAULTS, SEED + 1, ci=True)
    assert {kind for kind, _ in first[: len(chaos.FAULTS)]} == set(chaos.FAULTS)
