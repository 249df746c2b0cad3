"""Deadlines, cancellation, bounded workers and output backpressure, with real proxies."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from pathlib import Path

import pytest

import farside

from ._support import proxy_pid, wait_until

FAULTS = Path(__file__).parent.parent / "enclaves" / "faults.py"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_timeout_cancels_in_the_enclave_and_the_client_stays_usable() -> None:
    with farside.load(FAULTS, exit_handlers={"echo": lambda v: v}) as enclave:
        started = time.monotonic()
        with pytest.raises(farside.DeadlineExceededError):
            enclave.call("spin_until_cancelled", 20.0, timeout=0.5)
        assert time.monotonic() - started < 3.0
        assert enclave.call("echo", "next") == "next"  # a fresh worker, not queued behind
        assert wait_until(lambda: enclave.call("events_so_far") != [], 5.0)
        # The enclave saw cancelled(), and its next exit call raised at once.
        assert enclave.call("events_so_far") == ["cancelled=True; HostCallError: 1"]


def test_enter_and_run_timeout_raises_deadline_exceeded() -> None:
    with farside.load(FAULTS) as enclave:
        started = time.monotonic()
        with pytest.raises(farside.DeadlineExceededError):
            enclave.enter_and_run({"sleep": 5}, timeout=0.3)
        assert time.monotonic() - started < 2.0
        assert enclave.enter_and_run("after") == "after"


def test_workers_are_bounded_and_idle_ones_exit() -> None:
    provision = farside.LocalProvision(max_workers=2, worker_idle_timeout=0.5)
    with farside.load(FAULTS, provision=provision) as enclave:
        outcomes: list[object] = []
        gate = threading.Barrier(3)

        def call() -> None:
            gate.wait()
            try:
                outcomes.append(enclave.call("hold", 1.0))
            except farside.EnclaveCallError as exc:
                outcomes.append(exc.code)

        threads = [threading.Thread(target=call) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert outcomes.count(farside.StatusCode.RESOURCE_EXHAUSTED) == 1
        assert (
            sum(isinstance(o, int) and not isinstance(o, farside.StatusCode) for o in outcomes) == 2
        )
        # Those client threads have ended: their idle workers exit, and new ones may start.
        time.sleep(1.5)
        assert enclave.call("worker_count") == 1  # just this thread's own


def test_a_flood_of_output_is_held_back_not_buffered() -> None:
    class SlowSink(io.StringIO):
        def write(self, text: str) -> int:
            time.sleep(0.002)
            return len(text)

    with farside.load(FAULTS) as enclave:
        pid = proxy_pid(enclave)
        before = _rss_kib(pid)
        with contextlib.redirect_stdout(SlowSink()):
            assert enclave.call("flood", 64) == 64  # 64 MiB of prints, read slowly
        grown_mib = (_rss_kib(pid) - before) / 1024
        assert grown_mib < 48, f"the proxy buffered the flood: RSS grew by {grown_mib:.0f} MiB"


def test_large_values_cross_both_ways_in_chunks() -> None:
    with farside.load(FAULTS) as enclave:
        value = bytes(range(256)) * (40 * 4096)  # 40 MiB, past gRPC's 4 MiB default
        assert enclave.call("echo", value) == value
        with pytest.raises(ValueError, match="limit"):
            enclave.call("echo", b"x" * (257 * 2**20))
        assert enclave.call("echo", 1) == 1
