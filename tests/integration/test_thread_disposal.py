"""A client thread that ends takes its enclave worker with it (issue 14, finding 8).

Asylo disposes of the enclave thread when its host thread exits (DisposeOfThread); the
review found farside's workers of ended client threads living on for the 30 s idle
timeout. The client now sends Dispose when a thread that called the enclave ends (and
when it gives a tag up after a timeout); the idle timeout stays as a backstop. The
proxy here has a long idle timeout, so only the Dispose can end the worker in time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import farside

from ._support import WORKER, wait_until

DISPOSED_WITHIN = 2.0


@pytest.fixture
def enclave() -> Iterator[farside.EnclaveClient]:
    provision = farside.LocalProvision(worker_idle_timeout=300.0)
    with farside.load(WORKER, provision=provision) as client:
        yield client


def worker_of(enclave: farside.EnclaveClient, run: threading.Thread | None = None) -> str:
    """The name of the worker that serves the calls of a client thread."""
    names: list[str] = []

    def one_call() -> None:
        names.append(f"farside-enclave-worker-{enclave._thread_tag()}")
        enclave.call("echo", 1)

    thread = run or threading.Thread(target=one_call)
    thread.start()
    thread.join(10)
    return names[0]


def test_a_finished_thread_s_worker_goes_within_two_seconds(
    enclave: farside.EnclaveClient,
) -> None:
    gone = worker_of(enclave)
    started = time.monotonic()
    assert wait_until(lambda: gone not in enclave.call("workers"), DISPOSED_WITHIN + 1), (
        enclave.call("workers")
    )
    assert time.monotonic() - started < DISPOSED_WITHIN + 1
    # The calling thread's own worker is still there, and calls go on.
    assert f"farside-enclave-worker-{enclave._thread_tag()}" in enclave.call("workers")


def test_many_short_lived_threads_leave_no_workers(enclave: farside.EnclaveClient) -> None:
    threads = [threading.Thread(target=enclave.call, args=("echo", i)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    mine = f"farside-enclave-worker-{enclave._thread_tag()}"
    assert wait_until(lambda: enclave.call("workers") == [mine], DISPOSED_WITHIN + 2), enclave.call(
        "workers"
    )


def test_a_timed_out_tag_s_worker_goes_once_its_call_unwinds(
    enclave: farside.EnclaveClient,
) -> None:
    abandoned = f"farside-enclave-worker-{enclave._thread_tag()}"
    with pytest.raises(farside.DeadlineExceededError):
        enclave.call("sleep", 1.0, timeout=0.2)
    fresh = f"farside-enclave-worker-{enclave._thread_tag()}"
    assert fresh != abandoned
    assert wait_until(lambda: abandoned not in enclave.call("workers"), 1.0 + DISPOSED_WITHIN)
