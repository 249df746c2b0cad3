"""Load: many threads on two enclaves, proxy memory over many calls, load/destroy churn.

The short variants run by default (well under 30 s together); the heavy ones, the
sizes issue 5 asks for, run with ``--run-slow``:

* many client threads x two enclaves x calls, each call making one nested exit
  call: every result is matched to its request (no loss, duplication or
  misrouting between threads or enclaves), and every exit call ran exactly once,
  on the thread whose call was waiting, in the enclave's own handler;
* the proxy's resident memory after a warm-up and after many more calls grows by
  less than ``RSS_GROWTH_LIMIT`` (the figures are printed; ``-s`` shows them);
* load/destroy cycles and concurrent loads against one in-process provision
  server (mTLS) leave no proxy process and this process's open descriptors where
  they were, within ``FD_TOLERANCE``.

Timings are not asserted here; ``python -m benchmarks.reliability`` measures them
for docs/reliability.md. The last section holds regression tests for the faults found
while measuring.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import farside
from farside._proto.v1 import session_pb2 as pb

from ._provision import ServerFactory, farside_proxies, pki, reaped, servers
from ._support import WORKER, process_gone, proxy_pid, wait_until

__all__ = ["pki", "servers"]  # fixtures used here

RSS_GROWTH_LIMIT = 20 * 2**20  # bytes
FD_TOLERANCE = 3  # descriptors gRPC may open or close lazily (pollers, wakeup fds)
JOIN_TIMEOUT = 40.0


# --------------------------------------------------------------------- many threads


class EchoLog:
    """An enclave's ``echo`` exit handler that records every exit call it served."""

    def __init__(self, label: int) -> None:
        self.label = label
        self.lock = threading.Lock()
        self.seen: list[tuple[int, int, int, int]] = []  # (enclave, thread, call, ident)

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        ident = threading.get_ident()
        with self.lock:
            self.seen.append((payload["enclave"], payload["thread"], payload["call"], ident))
        return {"handler": self.label, "payload": payload, "ident": ident}


def run_threads_on_two_enclaves(threads: int, calls: int) -> None:
    """``threads`` client threads, each making ``calls`` nested calls on each of two enclaves."""
    logs = [EchoLog(0), EchoLog(1)]
    clients = [
        farside.load(WORKER, name=f"load-{label}-{os.getpid()}", exit_handlers={"echo": log})
        for label, log in enumerate(logs)
    ]
    idents: dict[int, int] = {}
    workers: dict[int, list[Any]] = {}
    problems: list[str] = []
    errors: list[BaseException] = []
    done = Counter[int]()
    barrier = threading.Barrier(threads)

    def client_thread(t: int) -> None:
        idents[t] = threading.get_ident()
        try:
            # The enclave worker serving this thread, before and after: thread affinity.
            before = [client.call("ident") for client in clients]
            barrier.wait(JOIN_TIMEOUT)
            for i in range(calls):
                for e, client in enumerate(clients):
                    payload = {"enclave": e, "thread": t, "call": i, "pad": f"{e}/{t}/{i}".encode()}
                    result = client.call("call_host", "echo", payload)
                    expected = {"handler": e, "payload": payload, "ident": idents[t]}
                    if result != expected:
                        problems.append(f"thread {t} call {i} enclave {e}: got {result!r}")
                    done[t] += 1
            workers[t] = [before, [client.call("ident") for client in clients]]
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    pool = [threading.Thread(target=client_thread, args=(t,)) for t in range(threads)]
    try:
        started = time.monotonic()
        for thread in pool:
            thread.start()
        deadline = started + JOIN_TIMEOUT * (1 + threads * calls // 2000)
        for thread in pool:
            thread.join(max(0.0, deadline - time.monotonic()))
        hung = [t for t, thread in enumerate(pool) if thread.is_alive()]
        elapsed = time.monotonic() - started
    finally:
        for client in clients:  # fails any hung call, so the threads end
            farside.EnclaveManager.instance().destroy_enclave(client)
        for thread in pool:
            thread.join(10)
    total = threads * calls * len(clients)
    print(
        f"\n{threads} threads x {len(clients)} enclaves x {calls} calls (each with one nested "
        f"exit call): {sum(done.values())}/{total} results in {elapsed:.1f} s "
        f"({sum(done.values()) / elapsed:.0f} calls/s)"
    )
    assert not hung, f"threads {hung} still waiting after the deadline: {dict(done)}"
    assert not errors, errors[:5]
    assert not problems, problems[:10]
    assert sum(done.values()) == total
    for log in logs:
        # Every exit call of this enclave reached its handler exactly once, on the very
        # thread whose call was waiting, and only this enclave's calls reached it.
        keys = Counter((enclave, t, i) for enclave, t, i, _ in log.seen)
        assert len(log.seen) == threads * calls, (log.label, len(log.seen))
        assert set(keys.values()) == {1}, [k for k, n in keys.items() if n > 1][:10]
        assert {enclave for enclave, _, _, _ in log.seen} == {log.label}
        assert all(ident == idents[t] for _, t, _, ident in log.seen)
    for t, (before, after) in workers.items():
        assert before == after, f"thread {t} changed enclave workers: {before} -> {after}"
    for e in range(len(clients)):  # each client thread has its own worker in each enclave
        assert len({before[e] for before, _ in workers.values()}) == threads


def test_threads_on_two_enclaves_with_nested_exit_calls() -> None:
    run_threads_on_two_enclaves(threads=4, calls=50)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_threads_on_two_enclaves_with_nested_exit_calls_heavy() -> None:
    run_threads_on_two_enclaves(threads=16, calls=500)


# --------------------------------------------------------------------- proxy memory


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (``VmRSS`` in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def measure_proxy_rss(calls: int, threads: int = 2) -> tuple[int, int]:
    """RSS of the proxy after a warm-up of ``calls // 10`` calls and after ``calls`` more."""

    def make_calls(client: farside.EnclaveClient, count: int) -> None:
        def work(t: int) -> None:
            for i in range(t, count, threads):
                payload = {"i": i, "data": os.urandom(64) + str(i).encode() * 8}
                if i % 2:
                    assert client.call("call_host", "echo", payload) == payload
                else:
                    assert client.call("echo", payload, i=i) == {
                        "args": [payload],
                        "kwargs": {"i": i},
                    }

        with ThreadPoolExecutor(threads) as pool:
            for future in [pool.submit(work, t) for t in range(threads)]:
                future.result()

    with farside.load(WORKER, exit_handlers={"echo": lambda value: value}) as client:
        pid = proxy_pid(client)
        make_calls(client, max(calls // 10, 100))
        before = rss_bytes(pid)
        started = time.monotonic()
        make_calls(client, calls)
        elapsed = time.monotonic() - started
        after = rss_bytes(pid)
    print(
        f"\nproxy RSS: {before / 2**20:.1f} MiB after the warm-up, {after / 2**20:.1f} MiB after "
        f"{calls} more calls ({(after - before) / 2**20:+.2f} MiB; {calls / elapsed:.0f} calls/s)"
    )
    return before, after


def test_proxy_memory_is_flat_across_calls() -> None:
    before, after = measure_proxy_rss(5_000)
    assert after - before < RSS_GROWTH_LIMIT


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_proxy_memory_is_flat_across_calls_heavy() -> None:
    before, after = measure_proxy_rss(50_000)
    assert after - before < RSS_GROWTH_LIMIT


# --------------------------------------------------------------------- load/destroy churn


def open_fds() -> dict[str, str]:
    """This process's open descriptors and what they point to."""
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used, closed now
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return fds


def describe(before: dict[str, str], after: dict[str, str]) -> str:
    gone = sorted(Counter(before.values()) - Counter(after.values()))
    new = sorted(Counter(after.values()) - Counter(before.values()))
    return f"{len(before)} -> {len(after)} open fds; closed {gone[:20]}, opened {new[:20]}"


def churn(servers: ServerFactory, cycles: int, concurrent: int) -> None:
    server = servers(max_per_client=concurrent, max_enclaves=max(16, concurrent))
    provision = servers.remote(server)
    policy = servers.pki.policy()
    me = os.getpid()
    pids: set[int] = set()

    def one(name: str, value: int) -> farside.EnclaveClient:
        client = farside.load(
            WORKER, name=name, provision=provision, policy=policy, exit_handlers={"echo": abs}
        )
        try:
            assert client.call("call_host", "echo", -value) == value
        except BaseException:
            farside.EnclaveManager.instance().destroy_enclave(client)
            raise
        return client

    def listed() -> set[int]:
        found = {info.pid for info in servers.listing(server)}
        pids.update(found)
        return found

    def settled() -> bool:
        return server.enclave_count() == 0 and not farside_proxies()

    # Warm up: the first load opens the channel to the server, gRPC's pollers, imports.
    farside.EnclaveManager.instance().destroy_enclave(one(f"warm-{me}", 1))
    assert wait_until(settled, 10), server.list_enclaves()
    time.sleep(0.3)
    fds_before = open_fds()

    started = time.monotonic()
    for index in range(cycles):
        client = one(f"cycle-{me}-{index}", index)
        assert len(listed()) == 1
        farside.EnclaveManager.instance().destroy_enclave(client)
    cycled = time.monotonic() - started

    started = time.monotonic()
    with ThreadPoolExecutor(concurrent) as pool:
        futures = [pool.submit(one, f"concurrent-{me}-{i}", i) for i in range(concurrent)]
        clients = [future.result() for future in futures]
    loaded = time.monotonic() - started
    try:
        assert len(listed()) == concurrent
        assert len({client.call("pid") for client in clients}) == concurrent
    finally:
        with ThreadPoolExecutor(concurrent) as pool:
            list(pool.map(farside.EnclaveManager.instance().destroy_enclave, clients))

    assert wait_until(settled, 10), (server.list_enclaves(), farside_proxies())
    assert len(pids) == cycles + concurrent
    assert all(reaped(pid, me) for pid in pids), [p for p in pids if not reaped(p, me)]
    time.sleep(0.3)
    fds_after = open_fds()
    print(
        f"\n{cycles} load/destroy cycles in {cycled:.1f} s, {concurrent} concurrent loads in "
        f"{loaded:.1f} s; {describe(fds_before, fds_after)}"
    )
    assert abs(len(fds_after) - len(fds_before)) <= FD_TOLERANCE, describe(fds_before, fds_after)


def test_load_destroy_cycles_and_concurrent_loads_leave_nothing(servers: ServerFactory) -> None:
    churn(servers, cycles=10, concurrent=4)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_load_destroy_cycles_and_concurrent_loads_leave_nothing_heavy(
    servers: ServerFactory,
) -> None:
    churn(servers, cycles=50, concurrent=10)


def test_local_load_destroy_cycles_leave_nothing() -> None:
    """The same hygiene with LocalProvision: every proxy reaped, descriptors back."""

    def cycle(index: int) -> int:
        with farside.load(WORKER, name=f"local-cycle-{os.getpid()}-{index}") as client:
            assert client.call("echo", index) == {"args": [index], "kwargs": {}}
            return proxy_pid(client)

    cycle(-1)
    time.sleep(0.3)
    fds_before = open_fds()
    pids = [cycle(index) for index in range(5)]
    time.sleep(0.3)
    fds_after = open_fds()
    assert all(process_gone(pid) for pid in pids)
    assert not farside_proxies()
    assert abs(len(fds_after) - len(fds_before)) <= FD_TOLERANCE, describe(fds_before, fds_after)


# --------------------------------------------------------------------- faults found measuring

# A proxy whose stop() meets a second SIGTERM while the first one's handler holds the lock
# of the proxy's wake-up Event (what several parent-death signals in a row do, see below).
SECOND_SIGNAL_HARNESS = """\
import os, signal, sys, threading
from farside.proxy import server as proxy_server

class SecondSignalInsideSet(threading.Event):
    armed = True

    def set(self):
        with self._cond:
            self._flag = True
            main = threading.current_thread() is threading.main_thread()
            if SecondSignalInsideSet.armed and main:
                SecondSignalInsideSet.armed = False
                os.kill(os.getpid(), signal.SIGTERM)  # the next SIGTERM arrives right now
            self._cond.notify_all()

original = proxy_server.RemoteEnclaveProxyServer.__init__

def init(self, *args, **kwargs):
    original(self, *args, **kwargs)
    self._wake = SecondSignalInsideSet()

proxy_server.RemoteEnclaveProxyServer.__init__ = init
from farside.cli import main
assert sys.argv[1:3] == ["-m", "farside"], sys.argv
sys.exit(main(sys.argv[3:]))
"""


def test_proxy_survives_a_second_sigterm_inside_its_signal_handler(tmp_path: Path) -> None:
    harness = tmp_path / "harness.py"
    harness.write_text(SECOND_SIGNAL_HARNESS, encoding="utf-8")
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{harness}" "$@"\n', encoding="utf-8")
    python.chmod(0o700)
    provision = farside.LocalProvision(python=str(python), stop_timeout=0.5)
    client = farside.load(WORKER, provision=provision)
    pid = proxy_pid(client)
    try:
        assert client.call("echo", 1) == {"args": [1], "kwargs": {}}
        os.kill(pid, signal.SIGTERM)
        assert wait_until(lambda: process_gone(pid), 3), "the proxy hangs in its signal handler"
    finally:
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)
        farside.EnclaveManager.instance().destroy_enclave(client)


def test_a_session_closed_by_a_protocol_error_ends_its_proxy() -> None:
    client = farside.load(WORKER)
    pid = proxy_pid(client)
    try:
        bogus = pb.Frame(result=pb.Result(call_id=987_654_321, value=b"\xc0"))
        client._transport.send([bogus])  # a result for a call never made
        with pytest.raises(farside.ProtocolError):
            client.call("echo", 1)
        assert wait_until(lambda: process_gone(pid), 3), "the proxy outlived its closed session"
    finally:
        farside.EnclaveManager.instance().destroy_enclave(client)


HOLDING_CLIENT = """\
import sys
import farside

client = farside.load(sys.argv[1])
print(client._lease.handle.process.pid, flush=True)
client.call("sleep", 60)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_clients_proxies_exit_and_leave_no_directory() -> None:
    for attempt in range(30):
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDING_CLIENT, str(WORKER)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        pid, directory = 0, None
        try:
            assert process.stdout is not None
            pid = int(process.stdout.readline())
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            listen = args[args.index(b"--listen") + 1].decode()
            directory = Path(listen.removeprefix("unix:")).parent
            time.sleep(0.2)
            process.kill()
            process.wait(10)
            exited = wait_until(lambda p=pid: process_gone(p), 10)
            assert exited, f"attempt {attempt}: the proxy still ran 10 s after its client died"
            wait_until(lambda d=directory: not d.exists(), 0.5)
            left = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
            shutil.rmtree(directory, ignore_errors=True)
            assert not left, f"attempt {attempt}: {directory} left behind with {left}"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            if process.stdout is not None:
                process.stdout.close()
            if pid and not process_gone(pid):
                os.kill(pid, signal.SIGKILL)
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
