"""The proxy's start-up must not race with its client's first frames.

``run_proxy`` prints the ready line and then redirects its stdout to stderr. The
client connects as soon as it reads that line, and the session's first frame
makes the trusted runtime replace ``sys.stdout``/``sys.stderr``. A proxy whose
main thread is descheduled between the two steps (common on a loaded 2-core
machine: a few loads in every hundred in this suite) must still work. The
interpreter below makes that scheduling deterministic: it runs the real proxy,
but its ready-line announcement takes a moment longer to return.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import farside

from ._support import WORKER, process_gone, proxy_pid, wait_until

SLOW_READY_PROXY = textwrap.dedent(
    """\
    import sys
    import time

    import farside.proxy.server as server


    announce = server._announce_ready


    def slow_announce(address):
        announce(address)
        time.sleep(0.5)  # the main thread is descheduled right after the ready line


    server._announce_ready = slow_announce
    from farside.cli import main

    argv = sys.argv[1:]
    if argv[:2] == ["-m", "farside"]:
        argv = argv[2:]
    sys.exit(main(argv))
    """
)


@pytest.fixture
def slow_ready_python(tmp_path: Path) -> str:
    """An interpreter for LocalProvision that runs the proxy with a slow ready line."""
    script = tmp_path / "slow_ready_proxy.py"
    script.write_text(SLOW_READY_PROXY, encoding="utf-8")
    launcher = tmp_path / "python"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n', encoding="utf-8")
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    return str(launcher)


def load_racing_enclave(python: str) -> farside.EnclaveClient:
    client = farside.load(WORKER, provision=farside.LocalProvision(python=python))
    time.sleep(0.8)  # the proxy's main thread has finished its start-up by now
    assert client.call("echo", 1) == {"args": [1], "kwargs": {}}
    return client


def unstick(client: farside.EnclaveClient) -> None:
    """Kill a hung proxy so that the test ends promptly either way."""
    pid = proxy_pid(client)
    if not process_gone(pid):
        os.kill(pid, signal.SIGKILL)


def test_destroy_is_prompt_when_the_session_opens_before_the_proxy_redirects_stdout(
    slow_ready_python: str,
) -> None:
    client = load_racing_enclave(slow_ready_python)
    process = client._lease.handle.process
    destroyer = threading.Thread(
        target=farside.EnclaveManager.instance().destroy_enclave, args=(client,)
    )
    destroyer.start()
    destroyer.join(3.0)
    prompt = not destroyer.is_alive()
    unstick(client)
    destroyer.join(30)
    assert prompt, "destroy waited for a proxy that never ended its session"
    assert process.returncode == 0


def test_proxy_honours_sigterm_when_the_session_opens_before_the_proxy_redirects_stdout(
    slow_ready_python: str,
) -> None:
    client = load_racing_enclave(slow_ready_python)
    try:
        pid = proxy_pid(client)
        os.kill(pid, signal.SIGTERM)
        assert wait_until(lambda: process_gone(pid), 3.0), "the proxy ignored SIGTERM"
    finally:
        unstick(client)
        farside.EnclaveManager.instance().destroy_enclave(client)
