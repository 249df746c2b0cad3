"""The bouncing circles server as a process: stopping it destroys its enclaves.

SIGINT (Ctrl-C) and SIGTERM each end the server with status 0 after it destroyed
the four enclaves: each enclave's ``finalize`` reports from inside the enclave
(through the session, so only a graceful destroy prints it), and no proxy is left.
With remote provisioning (a loopback provision server, mTLS, its platform key),
the circles are attested by that key and the server's table is empty once the
web server stopped.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("aiohttp", reason="the bouncing circles need farside[circles] (aiohttp)")

from ._circles import circles_server, farside, get, stop, trusted_machine

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="farside-test-circles-") as directory:
        yield Path(directory)


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_destroys_the_four_enclaves(root: Path, signum: int) -> None:
    with circles_server(root) as server:
        started = get(f"{server.url}/start?width=700&height=500")
        pids = [c["proxy_pid"] for c in started["circles"]]
        assert all(c["alive"] for c in started["circles"])
        assert len(set(pids)) == 4
        assert all(not _gone(pid) for pid in pids)
        get(f"{server.url}/calc")
        assert stop(server.process, signum) == 0
        out, err = server.output()
    for index in range(4):
        assert f"circle_enclave_{index}: finalized inside the enclave" in out, (out, err)
    assert "destroyed 4 enclaves" in err, err
    assert "Traceback" not in err, err
    assert all(_gone(pid) for pid in pids)


def test_a_dead_proxy_does_not_end_the_server(root: Path) -> None:
    with circles_server(root, "--call-timeout", "1") as server:
        started = get(f"{server.url}/start?width=700&height=500")
        os.kill(started["circles"][2]["proxy_pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (shown := get(f"{server.url}/calc"))["circles"][2]["alive"]:
            assert time.monotonic() < deadline, shown
        assert [c["alive"] for c in shown["circles"]] == [True, True, False, True]
        again = get(f"{server.url}/start?width=700&height=500")
        assert all(c["alive"] for c in again["circles"])
        assert stop(server.process) == 0
        out, err = server.output()
    assert out.count("finalized inside the enclave") == 4, out
    assert "destroyed 4 enclaves" in err


def test_remote_provisioning_attests_and_leaves_no_enclave(root: Path) -> None:
    with trusted_machine(root) as (address, flags):
        tls = flags[flags.index("--tls-ca") : flags.index("--platform-key")]
        with circles_server(root, *flags) as server:
            started = get(f"{server.url}/start?width=700&height=500")
            shown = started["circles"]
            assert all(c["alive"] for c in shown), shown
            assert all("--platform-key" in c["attestation"] for c in shown)
            assert all(c["proxy"].startswith("proxy at 127.0.0.1:") for c in shown)
            assert get(f"{server.url}/calc")["ticks"] == 1
            assert "enclaves (4):" in farside(root, "status", address, *tls)
            assert stop(server.process) == 0
            out, _ = server.output()
        assert out.count("finalized inside the enclave") == 4, out
        deadline = time.monotonic() + 10
        while "enclaves (0):" not in (status := farside(root, "status", address, *tls)):
            assert time.monotonic() < deadline, status
            time.sleep(0.1)


def test_remote_without_the_platform_key_shows_the_attestation_failure(root: Path) -> None:
    with trusted_machine(root) as (_, flags):
        without = flags[: flags.index("--platform-key")]
        with circles_server(root, *without) as server:
            shown = get(f"{server.url}/start?width=700&height=500")["circles"]
            assert not any(c["alive"] for c in shown)
            for circle in shown:
                assert circle["attestation"].startswith("AttestationError"), circle
                assert "platform" in circle["attestation"]
            assert get(f"{server.url}/calc")["ticks"] == 1  # the page still draws, all grey


def test_the_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import bouncing_circles

    argv = ["--seconds", "0.3", "--provisioning", "local", "--transport", "stream"]
    assert bouncing_circles.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["provis.", "wire", "/calc", "ticks/s", "median", "ms", "p99", "ms"]
    assert lines[1].split()[:3] == ["local", "stream", "concurrent"]
    assert lines[2].split()[:4] == ["local", "stream", "in", "turn"]
    assert float(lines[1].split()[3]) > 0
    assert lines[-1].startswith("local stream: concurrent / in turn ticks/s = ")
