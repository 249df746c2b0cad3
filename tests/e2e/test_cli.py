"""The ``farside`` command and the quickstart driver, run as the user runs them.

Tests whose outcome depends on the session's wire (a demo session, output and
results in order, errors crossing, a proxy's listener) run once per transport.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENCLAVES = Path(__file__).resolve().parent.parent / "enclaves"
WORKER = ENCLAVES / "worker.py"
PACKAGE = ENCLAVES / "pkg_enclave"
HEX_LINE = re.compile(r"[0-9a-f]{2,}")


def run(
    *args: str, cwd: Path | None = None, timeout: float = 45, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ...`` (or the given command) and capture its output."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        input=stdin,
        check=False,
    )


def farside(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run("-m", "farside", *args, cwd=cwd)


# ----------------------------------------------------------------------- the quickstart


def test_demo(tmp_path: Path, transport: str) -> None:
    done = farside("demo", "--message", "Asylo Rocks", "--transport", transport, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Encrypted message:"
    assert HEX_LINE.fullmatch(lines[1])
    # nonce (12) + ciphertext (11) + tag (16) bytes
    assert len(bytes.fromhex(lines[1])) == 12 + len("Asylo Rocks") + 16
    assert lines[2] == "Decrypted inside the enclave: Asylo Rocks"
    assert len(lines) == 3
    assert "Traceback" not in done.stderr


def test_demo_with_an_unknown_transport_is_a_usage_error(tmp_path: Path) -> None:
    done = farside("demo", "--message", "x", "--transport", "carrier-pigeon", cwd=tmp_path)
    assert done.returncode == 2
    assert "invalid choice: 'carrier-pigeon'" in done.stderr


def test_demo_with_a_bad_farside_transport_variable_says_so(tmp_path: Path) -> None:
    env = {**os.environ, "FARSIDE_TRANSPORT": "bogus"}
    done = subprocess.run(
        [sys.executable, "-m", "farside", "demo", "--message", "x"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "$FARSIDE_TRANSPORT must be one of grpc, stream, not 'bogus'" in done.stderr
    assert "Traceback" not in done.stderr


def test_demo_with_explicit_enclave_path(tmp_path: Path) -> None:
    import farside as package

    enclave = Path(package.__file__).parent / "examples" / "quickstart" / "demo_enclave.py"
    done = farside("demo", "--message", "ünïcode ✓", "--enclave-path", str(enclave), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "Decrypted inside the enclave: ünïcode ✓"


def test_demo_with_a_missing_enclave_fails_cleanly(tmp_path: Path) -> None:
    done = farside("demo", "--message", "x", "--enclave-path", str(tmp_path / "gone.py"))
    assert done.returncode == 1
    assert "gone.py" in done.stderr
    assert "Traceback" not in done.stderr


def test_demo_driver(tmp_path: Path) -> None:
    done = run(
        "-m", "farside.examples.quickstart.demo_driver", "--message", "Hello there", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Encrypted message:"
    assert HEX_LINE.fullmatch(lines[1])
    assert len(bytes.fromhex(lines[1])) == 12 + len("Hello there") + 16
    assert "Traceback" not in done.stderr


def test_demo_driver_errors(tmp_path: Path) -> None:
    missing = run(
        "-m",
        "farside.examples.quickstart.demo_driver",
        "--message",
        "x",
        "--enclave_path",
        str(tmp_path / "gone.py"),
    )
    assert missing.returncode == 1
    assert "gone.py" in missing.stderr
    assert "Traceback" not in missing.stderr
    empty = run("-m", "farside.examples.quickstart.demo_driver", "--message", "")
    assert empty.returncode == 2
    assert "message" in empty.stderr


# ----------------------------------------------------------------------- farside run


def test_run_call_with_args_after_the_call_option(tmp_path: Path) -> None:
    done = farside("run", str(WORKER), "--call", "echo", "1", '"two"', "three", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"args": [1, "two", "three"], "kwargs": {}}


def test_run_call_prints_json(tmp_path: Path) -> None:
    done = farside(
        "run", "--call", "echo", str(WORKER), "1", '"two"', "three", '{"a": [1, 2.5, null]}', "true"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"args": [1, "two", "three", {"a": [1, 2.5, None]}, True], "kwargs": {}}


def test_run_call_without_args(tmp_path: Path) -> None:
    done = farside("run", str(WORKER), "--call", "pid", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), int)


def test_run_enter_and_run(tmp_path: Path) -> None:
    done = farside("run", str(WORKER), '{"k": "v"}', cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ran": {"k": "v"}, "runs": 1}
    package = farside("run", str(PACKAGE), "21", cwd=tmp_path)
    assert package.returncode == 0, package.stderr
    assert json.loads(package.stdout) == 42


def test_run_prints_bytes_as_hex_and_enclave_output_first(tmp_path: Path, transport: str) -> None:
    (tmp_path / "data.bin").write_bytes(b"\x00\x01\xfe\xff")
    wire = ("--transport", transport)
    done = farside(
        "run", *wire, "--call", "read_file", str(WORKER), "data.bin", "true", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == "0001feff"
    said = farside("run", *wire, "--call", "say", str(WORKER), "from inside", cwd=tmp_path)
    assert said.stdout.splitlines() == ["from inside", '"said"']


def test_run_missing_file_fails_without_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_enclave.py"
    done = farside("run", str(missing), "--call", "echo", cwd=tmp_path)
    assert done.returncode != 0
    assert str(missing) in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_run_unknown_entry_point_fails_cleanly(tmp_path: Path) -> None:
    done = farside("run", str(WORKER), "--call", "no_such_entry", "--no-debug", cwd=tmp_path)
    assert done.returncode == 1
    assert "no_such_entry" in done.stderr
    assert "Traceback" not in done.stderr  # a non-debug enclave sends no traceback


def test_run_enclave_error_fails_cleanly(tmp_path: Path, transport: str) -> None:
    wire = ("--transport", transport)
    done = farside(
        "run", *wire, "--call", "fail", "--no-debug", str(WORKER), "it broke", cwd=tmp_path
    )
    assert done.returncode == 1
    assert "ValueError: it broke" in done.stderr
    assert done.stdout == ""


# ----------------------------------------------------------------------- measure, proxy, help


def test_measure(tmp_path: Path) -> None:
    done = farside("measure", str(WORKER), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"measurement: [0-9a-f]{64}", lines[-1])
    assert lines[0].startswith("bundle: worker")
    assert lines[1] == "signer: unsigned"
    non_debug = farside("measure", "--no-debug", str(WORKER), cwd=tmp_path)
    assert non_debug.stdout.splitlines()[-1] != lines[-1]
    as_json = json.loads(farside("measure", "--json", str(WORKER), cwd=tmp_path).stdout)
    assert f"measurement: {as_json['measurement']}" == lines[-1]
    assert (as_json["name"], as_json["signer"], as_json["debug"]) == ("worker", None, True)
    missing = farside("measure", str(tmp_path / "gone.py"))
    assert missing.returncode == 1
    assert "gone.py" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_proxy_serves_nobody_and_exits_after_its_idle_timeout(
    tmp_path: Path, transport: str
) -> None:
    socket = tmp_path / "p.sock"
    started = time.monotonic()
    done = run(
        "-m",
        "farside",
        "proxy",
        "--transport",
        transport,
        "--listen",
        f"unix:{socket}",
        "--token-stdin",
        "--idle-timeout",
        "0.5",
        stdin="a-token\n",
        timeout=20,
    )
    assert time.monotonic() - started < 15
    assert done.stdout.splitlines()[0] == f"farside-proxy ready unix:{socket}"
    assert done.returncode != 0
    assert "no client connected" in done.stderr


def test_proxy_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    env_token = os.environ.pop("FARSIDE_SESSION_TOKEN", None)
    try:
        done = run("-m", "farside", "proxy", "--listen", f"unix:{tmp_path / 's.sock'}", stdin="")
    finally:
        if env_token is not None:
            os.environ["FARSIDE_SESSION_TOKEN"] = env_token
    assert done.returncode == 2
    assert "token" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [[], ["demo"], ["run"], ["proxy"], ["measure"]])
def test_help(command: list[str]) -> None:
    done = farside(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: farside")
    assert done.stderr == ""


def test_help_lists_every_subcommand() -> None:
    out = farside("--help").stdout
    for command in ("demo", "run", "proxy", "measure"):
        assert command in out


def test_no_command_is_a_usage_error() -> None:
    done = farside()
    assert done.returncode == 2
    assert "usage: farside" in done.stderr


def test_console_script() -> None:
    script = shutil.which("farside")
    if script is None:
        pytest.skip("the farside console script is not on PATH")
    done = subprocess.run(
        [script, "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0
    assert "usage: farside" in done.stdout


def test_doctor_prints_every_sandbox_layer(tmp_path: Path) -> None:
    from farside.proxy.sandbox import LAYERS

    done = farside("doctor", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for layer in LAYERS:
        assert f"  {layer} " in done.stdout
    assert "Landlock ABI" in done.stdout


def test_doctor_reports_a_missing_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARSIDE_SANDBOX_PRETEND_UNAVAILABLE", "seccomp")
    done = farside("doctor", cwd=tmp_path)
    assert "seccomp         MISSING: treated as unavailable" in done.stdout
    assert "--sandbox strict will refuse to run enclaves here" in done.stdout
