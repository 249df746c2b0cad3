"""A network cut between two hosts is noticed by keepalives on both sides within 10 s.

The two hosts are network namespaces joined by a veth pair (root and ``ip netns``
only; skipped otherwise). The scenario itself is ``benchmarks.reliability``'s, so
the figure in docs/reliability.md and this test exercise the same code. It runs
on each transport: gRPC notices through its keepalive pings, the stream transport
through TCP keepalive and ``TCP_USER_TIMEOUT`` (the scenario checks that the
proxy serves the transport asked for).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

DETECTION_LIMIT = 10.0  # seconds, the bound; keepalive alone needs about 7 s


def _netns_available() -> str | None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2's `ip netns`"
    name = f"fsprobe-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, check=False)
    if made.returncode != 0:
        return "cannot create network namespaces here"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    return None


@pytest.mark.timeout(120)
def test_network_cut_is_detected_on_both_sides(tmp_path: Path, transport: str) -> None:
    reason = _netns_available()
    if reason:
        pytest.skip(reason)
    from benchmarks.reliability import Reliability

    bench = Reliability(tmp_path, quick=True, netns=True, transport=transport)
    client_detect, proxy_exit, proxy_reaped, kind = bench._cut_once(0)
    assert kind == "EnclaveUnavailableError"
    assert client_detect < DETECTION_LIMIT, f"the client noticed after {client_detect:.1f} s"
    assert proxy_exit < DETECTION_LIMIT, f"the proxy exited after {proxy_exit:.1f} s"
    assert proxy_reaped < DETECTION_LIMIT + 1
