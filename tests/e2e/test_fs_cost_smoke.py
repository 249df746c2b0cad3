"""benchmarks/fs_cost.py still runs, and counts the exit calls the issue bounds."""

from __future__ import annotations

import pytest

from benchmarks import fs_cost


def test_fs_cost_runs_and_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert fs_cost.main(["--stats", "5", "--walks", "1", "--transport", "stream"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "transport stream:"
    assert "os.stat    1.00 exit calls each" in lines[1]
    assert "os.path.exists  1.00 exit calls each" in lines[2]
    assert "os.walk over 1,000 files in 11 directories: 21 exit calls" in lines[3]
