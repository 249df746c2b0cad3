"""``farside run --stdin``: the enclave's ``input()`` reads the shell's standard input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FS_PROBE = Path(__file__).resolve().parent.parent / "enclaves" / "fs_probe.py"


def farside_run(*args: str, stdin: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farside", "run", str(FS_PROBE), "--call", "do", *args],
        capture_output=True,
        text=True,
        timeout=45,
        cwd=cwd,
        input=stdin,
        check=False,
    )


def test_run_with_stdin_gives_the_enclave_the_shells_input(tmp_path: Path) -> None:
    done = farside_run("--stdin", "input", '"name? "', "2", stdin="alice\nbob\n", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("name? ")  # the prompt, on the shell's stdout
    assert json.loads(done.stdout[len("name? ") :]) == {"ok": ["alice", "bob\n"]}


def test_run_without_stdin_refuses_it_and_says_how(tmp_path: Path) -> None:
    done = farside_run("input", '"? "', "1", stdin="alice\n", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout[len("? ") :])
    assert result["error"] == "PermissionError"
    assert "--stdin" in result["message"]


def test_run_reads_and_writes_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("hello\n")
    done = farside_run("path.read_text", "data.txt", stdin="", cwd=tmp_path)
    assert json.loads(done.stdout) == {"ok": "hello\n"}
    done = farside_run("listdir", ".", stdin="", cwd=tmp_path)
    assert json.loads(done.stdout) == {"ok": ["data.txt"]}
