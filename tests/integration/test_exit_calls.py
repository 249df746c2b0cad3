"""Exit calls: host.call/notify, handler errors, re-entrancy and thread affinity."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import farside

from ._support import WORKER, long_form_config

DEPTH = 10


@pytest.fixture(scope="module")
def handler_log() -> list[Any]:
    return []


@pytest.fixture(scope="module")
def enclave(handler_log: list[Any]) -> Iterator[farside.EnclaveClient]:
    """A worker with handlers from ``exit_handlers=`` and from ``register_exit_handler``."""

    def from_config(*args: Any, **kwargs: Any) -> Any:
        handler_log.append(("from_config", threading.get_ident(), args, kwargs))
        return {"handled": list(args), "kw": kwargs}

    def failing(message: str) -> None:
        raise KeyError(message)

    client = farside.load(WORKER, exit_handlers={"from_config": from_config, "failing": failing})

    def nest(depth: int, tag: Any) -> list[Any]:
        """Host side of the nesting: call back into the enclave on this same thread."""
        here = ["host", tag, depth, threading.get_ident()]
        return [here, *client.call("nest", depth, tag)]

    def registered_later(x: int) -> int:
        handler_log.append(("registered_later", threading.get_ident(), (x,), {}))
        return x * 10

    client.register_exit_handler("nest", nest)
    client.register_exit_handler("registered_later", registered_later)
    yield client
    farside.EnclaveManager.instance().destroy_enclave(client)


def test_host_call_reaches_handler_from_exit_handlers(
    enclave: farside.EnclaveClient, handler_log: list[Any]
) -> None:
    handler_log.clear()
    result = enclave.call("call_host", "from_config", 1, b"two", key=(3,))
    assert result == {"handled": [1, b"two"], "kw": {"key": (3,)}}
    # It ran on the client thread whose entry call was waiting.
    assert handler_log == [("from_config", threading.get_ident(), (1, b"two"), {"key": (3,)})]


def test_host_call_reaches_handler_from_register_exit_handler(
    enclave: farside.EnclaveClient, handler_log: list[Any]
) -> None:
    handler_log.clear()
    assert enclave.call("call_host", "registered_later", 4) == 40
    assert handler_log == [("registered_later", threading.get_ident(), (4,), {})]


def test_handler_registered_after_load_can_be_replaced(enclave: farside.EnclaveClient) -> None:
    enclave.register_exit_handler("swap", lambda: "first")
    assert enclave.call("call_host", "swap") == "first"
    enclave.register_exit_handler("swap", lambda: "second")
    assert enclave.call("call_host", "swap") == "second"


def test_handler_error_is_catchable_inside_the_enclave(enclave: farside.EnclaveClient) -> None:
    assert enclave.call("call_host_catch", "failing", "no such key") == {
        "caught": "HostCallError",
        "remote_type": "KeyError",
        "message": "'no such key'",
    }
    assert enclave.call("echo", "still usable") == {"args": ["still usable"], "kwargs": {}}


def test_unregistered_handler_is_a_host_call_error_inside(enclave: farside.EnclaveClient) -> None:
    caught = enclave.call("call_host_catch", "nobody_registered_this")
    assert caught["caught"] == "HostCallError"
    assert "nobody_registered_this" in caught["message"]


def test_uncaught_handler_error_reaches_the_client(enclave: farside.EnclaveClient) -> None:
    with pytest.raises(farside.EnclaveCallError) as info:
        enclave.call("call_host", "failing", "lost key")
    error = info.value
    assert error.remote_type == "KeyError"
    assert "lost key" in error.message
    assert "lost key" in str(error)
    assert enclave.call("echo", 1) == {"args": [1], "kwargs": {}}


def test_uncaught_handler_error_message_does_not_repeat_the_type(
    enclave: farside.EnclaveClient,
) -> None:
    with pytest.raises(farside.EnclaveCallError) as info:
        enclave.call("call_host", "failing", "lost key")
    assert info.value.message == "'lost key'"
    assert str(info.value).startswith("KeyError: 'lost key'")
    assert "KeyError: KeyError" not in str(info.value)


def test_enclave_error_through_a_nested_call_keeps_its_plain_message(
    enclave: farside.EnclaveClient,
) -> None:
    """enclave raises -> host handler (uncaught) -> enclave (uncaught) -> client."""
    enclave.register_exit_handler("reenter_fail", lambda: enclave.call("fail", "deep down"))
    with pytest.raises(farside.EnclaveCallError) as info:
        enclave.call("call_host", "reenter_fail")
    assert info.value.remote_type == "ValueError"
    assert info.value.message == "deep down"
    caught = enclave.call("call_host_catch", "reenter_fail")
    assert caught == {
        "caught": "HostCallError",
        "remote_type": "ValueError",
        "message": "deep down",
    }


def test_enclave_error_carries_remote_type_message_and_debug_traceback(
    enclave: farside.EnclaveClient,
) -> None:
    with pytest.raises(farside.EnclaveCallError) as info:
        enclave.call("fail", "the enclave says no")
    error = info.value
    assert error.remote_type == "ValueError"
    assert error.message == "the enclave says no"
    assert error.code == farside.StatusCode.UNKNOWN
    assert error.remote_traceback is not None
    assert "raise ValueError(message)" in error.remote_traceback  # the enclave's own source
    assert str(error).startswith("ValueError: the enclave says no")


def test_non_debug_enclave_errors_carry_no_traceback() -> None:
    with farside.load(WORKER, debug=False) as enclave:
        with pytest.raises(farside.EnclaveCallError) as info:
            enclave.call("fail", "quiet")
        assert info.value.remote_type == "ValueError"
        assert info.value.message == "quiet"
        assert info.value.remote_traceback is None
        assert "Traceback" not in str(info.value)


def test_notify_reaches_the_handler_before_the_call_returns(
    enclave: farside.EnclaveClient,
) -> None:
    got: list[Any] = []
    enclave.register_exit_handler("notified", lambda *a: got.append((threading.get_ident(), a)))
    assert enclave.call("notify_host", "notified", 1, "x") == "notified"
    assert got == [(threading.get_ident(), (1, "x"))]


def test_notify_to_a_failing_or_missing_handler_does_not_break_the_call(
    enclave: farside.EnclaveClient,
) -> None:
    assert enclave.call("notify_host", "failing", "ignored") == "notified"
    assert enclave.call("notify_host", "nobody_registered_this") == "notified"
    assert enclave.call("echo", 2) == {"args": [2], "kwargs": {}}


def check_nesting(levels: list[Any], tag: Any, depth: int, client_ident: int) -> None:
    """``levels`` alternates enclave/host from ``depth`` down to 0, all on one thread pair."""
    expected_sides = ["enclave", "host"] * depth + ["enclave"]
    assert [level[0] for level in levels] == expected_sides
    assert all(level[1] == tag for level in levels), "a result reached the wrong thread"
    enclave_depths = [level[2] for level in levels if level[0] == "enclave"]
    assert enclave_depths == list(range(depth, -1, -1))
    host_idents = {level[3] for level in levels if level[0] == "host"}
    enclave_idents = {level[3] for level in levels if level[0] == "enclave"}
    assert host_idents <= {client_ident}, "an exit handler ran on another client thread"
    assert len(enclave_idents) == 1, "nested entry calls ran on different enclave workers"


def test_nested_reentrancy_depth_10(enclave: farside.EnclaveClient) -> None:
    levels = enclave.call("nest", DEPTH, "solo")
    check_nesting(levels, "solo", DEPTH, threading.get_ident())
    # The worker is the same one that serves this thread's plain calls.
    (worker_ident,) = {level[3] for level in levels if level[0] == "enclave"}
    assert enclave.call("ident") == worker_ident


def test_thread_affinity_of_sequential_calls(enclave: farside.EnclaveClient) -> None:
    first = enclave.call("ident")
    assert all(enclave.call("ident") == first for _ in range(5))

    other: list[int] = []
    thread = threading.Thread(target=lambda: other.extend(enclave.call("ident") for _ in range(3)))
    thread.start()
    thread.join(30)
    assert len(set(other)) == 1
    assert other[0] != first


def test_eight_concurrent_threads_with_nested_calls(enclave: farside.EnclaveClient) -> None:
    threads = 8
    barrier = threading.Barrier(threads)

    def work(index: int) -> tuple[int, int, list[Any]]:
        barrier.wait(10)
        results = []
        for round_ in range(3):
            tag = f"t{index}-r{round_}"
            levels = enclave.call("nest", DEPTH, tag)
            check_nesting(levels, tag, DEPTH, threading.get_ident())
            results.append(levels)
        return index, threading.get_ident(), results

    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(work, range(threads)))

    workers_by_thread = {}
    for index, _client_ident, results in outcomes:
        idents = {level[3] for levels in results for level in levels if level[0] == "enclave"}
        assert len(idents) == 1, f"thread {index} used several enclave workers"
        workers_by_thread[index] = idents.pop()
    assert len(set(workers_by_thread.values())) == threads, "client threads shared a worker"


def test_nesting_beyond_the_limit_fails_cleanly() -> None:
    manager = farside.EnclaveManager.instance()
    client = manager.load_enclave(long_form_config(WORKER, "shallow", max_depth=6))
    try:
        client.register_exit_handler(
            "nest", lambda depth, tag: [["host"], *client.call("nest", depth, tag)]
        )
        assert len(client.call("nest", 2, "ok")) == 5
        with pytest.raises(farside.EnclaveError) as info:
            client.call("nest", 10, "too deep")
        assert info.value.code == farside.StatusCode.RESOURCE_EXHAUSTED
        assert len(client.call("nest", 2, "again")) == 5
    finally:
        manager.destroy_enclave(client)


def test_timeout_cancels_and_the_next_call_does_not_wait(enclave: farside.EnclaveClient) -> None:
    with pytest.raises(farside.DeadlineExceededError):
        enclave.call("sleep", 3.0, timeout=0.3)
    # This thread gets a fresh worker: no waiting behind the abandoned sleep.
    assert enclave.call("echo", "prompt", timeout=2.0) == {"args": ["prompt"], "kwargs": {}}


@pytest.mark.slow
def test_sixteen_threads_nesting_thirty_deep(enclave: farside.EnclaveClient) -> None:
    threads, depth = 16, 30
    barrier = threading.Barrier(threads)

    def work(index: int) -> int:
        barrier.wait(10)
        for round_ in range(5):
            tag = f"deep{index}-{round_}"
            check_nesting(enclave.call("nest", depth, tag), tag, depth, threading.get_ident())
        return index

    with ThreadPoolExecutor(threads) as pool:
        assert sorted(pool.map(work, range(threads))) == list(range(threads))
