"""Lifecycle: proxies that die, proxies nobody uses, intruders, clients that die."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import farside
from farside.transport import factory
from farside.untrusted._client import ClientTransport

from ._support import WORKER, process_gone, proxy_pid, registered, wait_until

PROMPTLY = 3.0  # seconds within which a dead proxy must fail waiting calls


def kill_after(pid: int, delay: float) -> threading.Timer:
    timer = threading.Timer(delay, os.kill, (pid, signal.SIGKILL))
    timer.start()
    return timer


def test_proxy_killed_during_a_call() -> None:
    manager = farside.EnclaveManager.instance()
    client = farside.load(WORKER)
    pid = proxy_pid(client)
    timer = kill_after(pid, 0.5)
    started = time.monotonic()
    try:
        with pytest.raises(farside.EnclaveUnavailableError):
            client.call("sleep", 30)
        assert time.monotonic() - started < 0.5 + PROMPTLY
        # Every later call fails the same way, promptly: no reconnecting to a fresh enclave.
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(farside.EnclaveUnavailableError):
                client.call("echo", 1)
            assert time.monotonic() - started < 1.0
        with pytest.raises(farside.EnclaveUnavailableError):
            client.enter_and_run(None)
    finally:
        timer.cancel()
        manager.destroy_enclave(client)  # already gone: not an error
    assert client.closed
    assert registered(client.name) is None
    assert client._lease.handle.process.returncode == -signal.SIGKILL
    with pytest.raises(farside.ClientClosedError):
        client.call("echo", 1)


def test_proxy_killed_fails_every_waiting_thread() -> None:
    threads = 4
    with farside.load(WORKER) as client:
        pid = proxy_pid(client)
        errors: list[BaseException] = []
        ready = threading.Barrier(threads + 1)

        def wait_in_enclave() -> None:
            ready.wait(10)
            try:
                client.call("sleep", 30)
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=wait_in_enclave) for _ in range(threads)]
        for worker in workers:
            worker.start()
        ready.wait(10)
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        for worker in workers:
            worker.join(PROMPTLY)
        assert time.monotonic() - started < PROMPTLY
        assert not any(worker.is_alive() for worker in workers)
        assert len(errors) == threads
        assert all(isinstance(e, farside.EnclaveUnavailableError) for e in errors), errors


def test_proxy_killed_between_calls() -> None:
    with farside.load(WORKER) as client:
        assert client.call("echo", 1) == {"args": [1], "kwargs": {}}
        pid = proxy_pid(client)
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: process_gone(pid), 5)
        started = time.monotonic()
        with pytest.raises(farside.EnclaveUnavailableError):
            client.call("echo", 2)
        assert time.monotonic() - started < PROMPTLY
    assert client.closed


def test_proxy_terminated_during_a_call() -> None:
    """SIGTERM: the proxy shuts down on its own; the waiting call fails promptly."""
    with farside.load(WORKER) as client:
        pid = proxy_pid(client)
        timer = threading.Timer(0.5, os.kill, (pid, signal.SIGTERM))
        timer.start()
        try:
            with pytest.raises(farside.EnclaveUnavailableError):
                client.call("sleep", 30)
        finally:
            timer.cancel()
        assert wait_until(lambda: process_gone(pid), 10)


def test_idle_proxy_exits_after_its_idle_timeout() -> None:
    provision = farside.LocalProvision(idle_timeout=1)
    started = time.monotonic()
    lease = provision.provision(name="nobody-connects", timeout=10)
    try:
        process = lease.handle.process
        assert process.poll() is None
        assert wait_until(lambda: process.poll() is not None, 6)
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 6
        assert process.returncode != 0  # it gave up; it did not serve a session
    finally:
        provision.release(lease)


@pytest.fixture
def idle_lease() -> Iterator[tuple[farside.LocalProvision, farside.ProxyLease]]:
    provision = farside.LocalProvision(idle_timeout=2, stop_timeout=0.5)
    lease = provision.provision(name="intruder-target", timeout=10)
    yield provision, lease
    provision.release(lease)


def connect_raw(lease: farside.ProxyLease, token: str) -> tuple[ClientTransport, Any]:
    """Open a raw session stream; return the transport and the error it was lost with."""
    lost: list[BaseException] = []
    done = threading.Event()

    def on_lost(error: BaseException) -> None:
        lost.append(error)
        done.set()

    transport = factory.connect(lease.transport, lease.address, token=token, tls=lease.tls)
    transport.start(lambda frames: None, on_lost)
    done.wait(5)
    return transport, lost


def test_wrong_token_is_refused(idle_lease: tuple[farside.LocalProvision, Any]) -> None:
    _, lease = idle_lease
    transport, lost = connect_raw(lease, token="not-the-token")
    transport.close(timeout=1)
    assert len(lost) == 1
    error = lost[0]
    assert isinstance(error, farside.EnclaveLoadError)
    assert error.code == farside.StatusCode.UNAUTHENTICATED
    assert "refused" in str(error)
    assert lease.token not in str(error)


def test_empty_token_is_refused(idle_lease: tuple[farside.LocalProvision, Any]) -> None:
    _, lease = idle_lease
    transport, lost = connect_raw(lease, token="")
    transport.close(timeout=1)
    assert len(lost) == 1
    assert isinstance(lost[0], farside.EnclaveLoadError)
    assert lost[0].code == farside.StatusCode.UNAUTHENTICATED


class IntruderFirst(farside.LocalProvision):
    """Before handing the proxy out, an intruder tries it with a wrong token."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals: list[BaseException] = []

    def provision(self, *, name: str, timeout: float) -> farside.ProxyLease:
        lease = super().provision(name=name, timeout=timeout)
        transport, lost = connect_raw(lease, token=lease.token + "x")
        transport.close(timeout=1)
        self.refusals.extend(lost)
        return lease


def test_a_refused_intruder_does_not_take_the_session() -> None:
    provision = IntruderFirst()
    with farside.load(WORKER, provision=provision) as client:
        assert client.call("echo", "mine") == {"args": ["mine"], "kwargs": {}}
    assert len(provision.refusals) == 1
    assert provision.refusals[0].code == farside.StatusCode.UNAUTHENTICATED


def test_a_second_session_is_refused() -> None:
    with farside.load(WORKER) as client:
        transport, lost = connect_raw(client._lease, token=client._lease.token)
        transport.close(timeout=1)
        assert len(lost) == 1
        assert isinstance(lost[0], farside.EnclaveLoadError)
        assert client.call("echo", "still mine") == {"args": ["still mine"], "kwargs": {}}


CLIENT_SCRIPT = textwrap.dedent(
    """\
    import sys
    import farside

    client = farside.load(sys.argv[1])
    print(client._lease.handle.process.pid, flush=True)
    if sys.argv[2] == "sleep":
        client.call("sleep", 60)
    """
)


def run_client_script(mode: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-c", CLIENT_SCRIPT, str(WORKER), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        _, err = process.communicate(timeout=10)
        pytest.fail(f"client script did not report its proxy: {line!r} {err}")
    return process, int(line)


def test_client_killed_during_a_call_takes_its_proxy_along() -> None:
    process, pid = run_client_script("sleep")
    try:
        time.sleep(0.3)  # the enclave call is under way
        assert not process_gone(pid)
        process.kill()
        process.communicate(timeout=10)
        assert wait_until(lambda: process_gone(pid), 10), "the proxy outlived its client"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_client_exiting_without_destroy_takes_its_proxy_along() -> None:
    process, pid = run_client_script("exit")
    try:
        _, err = process.communicate(timeout=20)
        assert process.returncode == 0, err
        assert wait_until(lambda: process_gone(pid), 10), "the proxy outlived its client"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_many_load_destroy_cycles_leave_nothing_behind() -> None:
    pids = []
    for index in range(25):
        with farside.load(WORKER, name=f"cycle-{index}") as client:
            pids.append(proxy_pid(client))
            assert client.call("echo", index) == {"args": [index], "kwargs": {}}
    assert all(process_gone(pid) for pid in pids)
    assert all(registered(f"cycle-{index}") is None for index in range(25))


def test_destroy_while_another_thread_waits_in_the_enclave() -> None:
    client = farside.load(WORKER)
    pid = proxy_pid(client)
    outcome: list[BaseException] = []
    started = threading.Event()

    def wait_in_enclave() -> None:
        started.set()
        try:
            client.call("sleep", 30)
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_in_enclave)
    waiter.start()
    started.wait(5)
    time.sleep(0.3)
    began = time.monotonic()
    farside.EnclaveManager.instance().destroy_enclave(client)
    assert time.monotonic() - began < PROMPTLY, "destroy waited for the running call"
    waiter.join(PROMPTLY)
    assert not waiter.is_alive(), "the waiting call outlived the enclave"
    assert len(outcome) == 1
    assert isinstance(outcome[0], farside.ClientClosedError | farside.EnclaveUnavailableError)
    assert process_gone(pid)
