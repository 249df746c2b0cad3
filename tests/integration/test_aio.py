"""farside.aio: the asyncio client, on both transports (the ``transport`` fixture).

Each test runs its own event loop (``asyncio.run``) and loads its own enclave: a
client belongs to the loop it was loaded on.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import farside
import farside.aio
from farside.attestation.bundle_files import load_bundle

from ._provision import QUICKSTART, ServerFactory, pki, servers
from ._support import ENCLAVES, process_gone, wait_until

__all__ = ["pki", "servers"]  # fixtures used here

PROBE = ENCLAVES / "aio_probe.py"


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario())


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# --------------------------------------------------------------------- loading and calling


def test_async_with_loads_calls_and_destroys(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with farside.aio.load(PROBE, name="aio-basic", files_root=tmp_path) as enclave:
            assert isinstance(enclave, farside.aio.AsyncEnclaveClient)
            assert enclave.name == "aio-basic"
            assert enclave.measurement == load_bundle(PROBE).measurement().hex()
            assert enclave.identity.measurement.hex() == enclave.measurement
            assert not enclave.closed
            assert await enclave.call("add", 2, 3) == 5
            assert await enclave.call("echo", 1, b"x", k=[None]) == {
                "args": [1, b"x"],
                "kwargs": {"k": [None]},
            }
            assert await enclave.enter_and_run({"in": 1}) == {"ran": {"in": 1}}
        assert enclave.closed
        with pytest.raises(farside.ClientClosedError):
            await enclave.call("add", 1, 1)

    run(scenario)


def test_load_is_awaitable_and_aclose_is_idempotent(tmp_path: Path) -> None:
    async def scenario() -> None:
        enclave = await farside.aio.load(PROBE, files_root=tmp_path)
        try:
            assert await enclave.call("add", 1, 2) == 3
        finally:
            await enclave.aclose()
        await enclave.aclose()  # a no-op
        assert enclave.closed

    run(scenario)


def test_the_same_errors_as_the_sync_client(tmp_path: Path) -> None:
    async def scenario() -> None:
        with pytest.raises(farside.EnclaveLoadError):
            await farside.aio.load(tmp_path / "missing.py", files_root=tmp_path)
        async with farside.aio.load(PROBE, name="aio-errors", files_root=tmp_path) as enclave:
            with pytest.raises(farside.EnclaveNameError):
                await farside.aio.load(PROBE, name="aio-errors", files_root=tmp_path)
            with pytest.raises(farside.EnclaveCallError) as caught:
                await enclave.call("fail", "no thanks")
            assert caught.value.remote_type == "ValueError"
            assert "no thanks" in str(caught.value)
            with pytest.raises(farside.EnclaveCallError):
                await enclave.call("no_such_entry_point")
            with pytest.raises(ValueError, match="timeout must be positive"):
                await enclave.call("add", 1, 1, timeout=0)
            assert await enclave.call("add", 1, 1) == 2  # still usable

    run(scenario)


def test_attestation_comes_before_any_input(tmp_path: Path) -> None:
    """A policy the enclave cannot meet: AttestationError, and no exit handler, file or
    initialize ever ran."""
    served: list[str] = []

    async def scenario() -> None:
        policy = farside.AttestationPolicy(measurements=(b"\x00" * 32,), allow_debug=True)
        with pytest.raises(farside.AttestationError):
            await farside.aio.load(
                PROBE,
                policy=policy,
                files_root=tmp_path,
                exit_handlers={"anything": lambda *a: served.append("called")},
            )

    run(scenario)
    assert served == []


# --------------------------------------------------------------------- tasks and workers


def test_each_task_has_its_own_worker_disposed_when_it_ends(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with farside.aio.load(PROBE, files_root=tmp_path) as enclave:
            mine = await enclave.call("worker")
            assert await enclave.call("worker") == mine  # the same task, the same worker
            gate = asyncio.Event()

            async def task_worker() -> tuple[str, str]:
                first = await enclave.call("worker")
                await gate.wait()
                return first, await enclave.call("worker")

            tasks = [asyncio.create_task(task_worker()) for _ in range(5)]
            await asyncio.sleep(0.2)
            alive = set(await enclave.call("workers"))
            gate.set()
            pairs = await asyncio.gather(*tasks)
            assert all(a == b for a, b in pairs)
            theirs = {a for a, _ in pairs}
            assert len(theirs | {mine}) == 6
            assert theirs | {mine} <= alive

            async def theirs_gone() -> bool:
                return not theirs & set(await enclave.call("workers"))

            assert await eventually(theirs_gone)  # the ended tasks' workers went
            assert mine in await enclave.call("workers")

    run(scenario)


def test_exit_handlers_sync_and_async_run_in_the_calling_task(tmp_path: Path) -> None:
    who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")
    seen: list[tuple[str, Any]] = []

    def sync_handler(value: Any) -> Any:
        seen.append((who.get(), asyncio.current_task()))
        return ["sync", value]

    async def async_handler(value: Any) -> Any:
        await asyncio.sleep(0.01)
        seen.append((who.get(), asyncio.current_task()))
        return ["async", value]

    async def scenario() -> None:
        async with farside.aio.load(
            PROBE, files_root=tmp_path, exit_handlers={"sync": sync_handler}
        ) as enclave:
            enclave.register_exit_handler("async", async_handler)

            async def caller(name: str) -> Any:
                who.set(name)
                return (
                    await enclave.call("call_host", "sync", name),
                    await enclave.call("call_host", "async", name),
                    asyncio.current_task(),
                )

            results = await asyncio.gather(caller("a"), caller("b"))
            for name, (sync_result, async_result, task) in zip("ab", results, strict=True):
                assert sync_result == ["sync", name]
                assert async_result == ["async", name]
                assert seen.count((name, task)) == 2

    run(scenario)


def test_async_handlers_nest_on_the_same_worker_up_to_the_depth_limit(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with farside.aio.load(PROBE, files_root=tmp_path) as enclave:

            async def nest(depth: int) -> Any:
                return await enclave.call("nest", depth)

            enclave.register_exit_handler("nest", nest)
            mine = await enclave.call("ident")
            assert await enclave.call("nest", 5) == [mine] * 6
            with pytest.raises(farside.EnclaveError):
                await enclave.call("nest", 200)  # deeper than max_depth (64)
            assert await enclave.call("nest", 1) == [mine] * 2  # still usable

    run(scenario)


def test_file_exit_calls(tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_text("from the client's disk")

    async def scenario() -> None:
        async with farside.aio.load(PROBE, files_root=tmp_path) as enclave:
            assert await enclave.call("read_file", "note.txt") == "from the client's disk"

    run(scenario)


# --------------------------------------------------------------------- cancellation, deadlines


def test_cancelling_a_task_cancels_its_call_in_the_enclave(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with farside.aio.load(PROBE, files_root=tmp_path) as enclave:
            task = asyncio.create_task(enclave.call("spin", 30, "task"))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await enclave.call("spin", 30, "timeout")

            async def both_seen() -> bool:
                return sorted(await enclave.call("cancelled_keys")) == ["task", "timeout"]

            assert await eventually(both_seen)
            assert await enclave.call("add", 1, 1) == 2  # the session stays usable

    run(scenario)


def test_cancelled_inside_an_async_exit_handler(tmp_path: Path) -> None:
    """The task is cancelled while its handler awaits: the exit call is answered
    CANCELLED and cancelled() is true in the enclave."""

    async def scenario() -> None:
        started = asyncio.Event()

        async def forever() -> None:
            started.set()
            await asyncio.sleep(3600)

        async with farside.aio.load(
            PROBE, files_root=tmp_path, exit_handlers={"forever": forever}
        ) as enclave:
            task = asyncio.create_task(enclave.call("call_host_then_check", "forever", "exit"))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

            async def seen() -> bool:
                return await enclave.call("cancelled_keys") == ["exit"]

            assert await eventually(seen)
            assert await enclave.call("add", 2, 2) == 4

    run(scenario)


def test_a_nested_call_given_up_fails_the_outer_call_too(tmp_path: Path) -> None:
    """An async handler's nested call times out, or its task is cancelled there: the
    whole task's stack is given up, in the enclave too, and the session goes on."""

    async def scenario() -> None:
        async with farside.aio.load(PROBE, files_root=tmp_path) as enclave:

            async def times_out() -> Any:
                return await enclave.call("spin", 30, "inner deadline", timeout=0.3)

            async def runs_long() -> Any:
                return await enclave.call("spin", 30, "inner cancelled")

            enclave.register_exit_handler("times_out", times_out)
            enclave.register_exit_handler("runs_long", runs_long)
            with pytest.raises(farside.DeadlineExceededError):
                await enclave.call("call_host", "times_out")
            task = asyncio.create_task(enclave.call("call_host", "runs_long"))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

            async def both_seen() -> bool:
                keys = await enclave.call("cancelled_keys")
                return sorted(keys) == ["inner cancelled", "inner deadline"]

            assert await eventually(both_seen)
            assert await enclave.call("add", 2, 2) == 4

    run(scenario)


def test_a_deadline_raises_and_cancels_in_the_enclave(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with farside.aio.load(PROBE, files_root=tmp_path) as enclave:
            mine = await enclave.call("worker")
            with pytest.raises(farside.DeadlineExceededError):
                await enclave.call("spin", 30, "deadline", timeout=0.3)

            async def seen() -> bool:
                return await enclave.call("cancelled_keys") == ["deadline"]

            assert await eventually(seen)
            assert await enclave.call("worker") != mine  # a fresh worker after a timeout

    run(scenario)


# --------------------------------------------------------------------- semantics


def test_output_comes_before_the_result_and_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    at_notify: list[str] = []

    def after_output(count: int) -> None:
        at_notify.append(capsys.readouterr().out)

    async def scenario() -> None:
        async with farside.aio.load(
            PROBE, files_root=tmp_path, exit_handlers={"after_output": after_output}
        ) as enclave:
            assert await enclave.call("print_then", 50, "done") == "done"

    run(scenario)
    assert at_notify == ["".join(f"line {i}\n" for i in range(50))]


def test_one_way_calls_and_output_keep_their_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    numbered: list[tuple[int, str]] = []

    async def numbered_handler(index: int) -> None:  # async one-way handlers too
        numbered.append((index, capsys.readouterr().out))

    async def scenario() -> None:
        async with farside.aio.load(
            PROBE, files_root=tmp_path, exit_handlers={"numbered": numbered_handler}
        ) as enclave:
            assert await enclave.call("notify_many", 200) == 200
            assert [i for i, _ in numbered] == list(range(200))  # all before the result
            await asyncio.gather(*(enclave.call("notify_many", 20) for _ in range(5)))
            assert len(numbered) == 300

    run(scenario)
    # every "at N" line printed before a notification was written before its handler ran
    # (output is written as it arrives, so later lines may be there already)
    written = ""
    for index, out in numbered[:200]:
        written += out
        assert written.startswith("".join(f"at {k}\n" for k in range(0, index, 10)))
    assert written == "".join(f"at {k}\n" for k in range(0, 200, 10))


def test_large_values_both_ways(tmp_path: Path) -> None:
    size = 20 * 2**20 + 12345

    async def scenario() -> None:
        async with farside.aio.load(PROBE, files_root=tmp_path) as enclave:
            blob = await enclave.call("blob", size)
            assert blob == bytes(range(256)) * (size // 256) + bytes(size % 256)
            sent = os.urandom(size)
            assert await enclave.call("measure", sent) == [size, sum(sent[::4096])]

    run(scenario)


def test_a_thousand_concurrent_calls_over_one_enclave(tmp_path: Path) -> None:
    async def scenario() -> None:
        provision = farside.LocalProvision(max_workers=1100)
        async with farside.aio.load(PROBE, files_root=tmp_path, provision=provision) as enclave:
            results = await asyncio.gather(*(enclave.call("add", i, i) for i in range(1000)))
            assert results == [2 * i for i in range(1000)]

    run(scenario)


def test_peer_death_fails_every_waiting_task(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with farside.aio.load(PROBE, files_root=tmp_path) as enclave:
            pid = await enclave.call("pid")
            waiting = [asyncio.create_task(enclave.call("sleep", 30)) for _ in range(5)]
            await asyncio.sleep(0.3)
            os.kill(pid, signal.SIGKILL)
            outcomes = await asyncio.gather(*waiting, return_exceptions=True)
            assert all(isinstance(o, farside.EnclaveUnavailableError) for o in outcomes), outcomes
            with pytest.raises(farside.EnclaveUnavailableError):
                await enclave.call("add", 1, 1)

    run(scenario)


def test_a_client_belongs_to_its_loop(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with farside.aio.load(PROBE, files_root=tmp_path) as enclave:
            errors: list[BaseException] = []

            def elsewhere() -> None:
                try:
                    asyncio.run(enclave.call("add", 1, 1))
                except BaseException as exc:
                    errors.append(exc)

            thread = threading.Thread(target=elsewhere)
            thread.start()
            await asyncio.to_thread(thread.join)
            assert len(errors) == 1
            assert isinstance(errors[0], RuntimeError)
            assert "belongs to the event loop it was loaded on" in str(errors[0])
            assert await enclave.call("add", 1, 1) == 2

    run(scenario)


def test_loading_does_not_block_the_loop(tmp_path: Path) -> None:
    """The provisioner (which blocks, starting a process) runs off the loop: a ticker
    task keeps ticking while it works."""
    ticks = 0
    during: list[int] = []

    class Watched(farside.LocalProvision):
        def provision(self, *, name: str, timeout: float) -> farside.ProxyLease:
            start = ticks
            time.sleep(0.3)  # blocking, as starting a process is
            lease = super().provision(name=name, timeout=timeout)
            during.append(ticks - start)
            return lease

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def scenario() -> None:
        tick = asyncio.create_task(ticker())
        try:
            async with farside.aio.load(PROBE, files_root=tmp_path, provision=Watched()) as e:
                assert await e.call("add", 1, 1) == 2
        finally:
            tick.cancel()

    run(scenario)
    assert len(during) == 1
    assert during[0] >= 5  # 0 if the loop had been blocked


def test_remote_provisioning_over_mtls(servers: ServerFactory) -> None:
    """A provision server's proxy, over TLS (asyncio's, on the stream; grpc.aio's)."""
    server = servers()
    provision = servers.remote(server)

    async def scenario() -> None:
        async with farside.aio.load(
            QUICKSTART, provision=provision, policy=servers.pki.policy()
        ) as enclave:
            sealed = await enclave.call("encrypt", "Asylo Rocks")
            assert await enclave.call("decrypt", sealed) == "Asylo Rocks"
            assert server.enclave_count() == 1
            many = await asyncio.gather(*(enclave.call("encrypt", str(i)) for i in range(50)))
            assert [await enclave.call("decrypt", s) for s in many] == [str(i) for i in range(50)]

    run(scenario)
    assert wait_until(lambda: server.enclave_count() == 0, 10)


def test_a_load_cancelled_while_its_proxy_starts_leaves_nothing(tmp_path: Path) -> None:
    """The provisioner runs in a thread, past the cancellation: its proxy is released
    once it is up (the suite's leak check fails the test otherwise)."""
    started = threading.Event()
    leases: list[farside.ProxyLease] = []

    class Slow(farside.LocalProvision):
        def provision(self, *, name: str, timeout: float) -> farside.ProxyLease:
            started.set()
            time.sleep(0.3)
            lease = super().provision(name=name, timeout=timeout)
            leases.append(lease)
            return lease

    async def scenario() -> None:
        loading = asyncio.create_task(_load_then_close(Slow(stop_timeout=0.5), tmp_path))
        await asyncio.to_thread(started.wait, 10)
        loading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loading

    run(scenario)
    assert wait_until(lambda: len(leases) == 1, 10)
    pid = leases[0].handle.process.pid
    assert wait_until(lambda: process_gone(pid), 10)


async def _load_then_close(provision: farside.Provisioner, root: Path) -> None:
    async with farside.aio.load(PROBE, files_root=root, provision=provision):
        raise AssertionError("the load was to be cancelled")
