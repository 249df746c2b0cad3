"""The asyncio client's driver (``AsyncEndpoint``) against a proxy core in memory.

No processes, no sockets: the fake transport hands the client's frames to a proxy-role
``SessionCore`` that the test drives by hand, playing a proxy (honest or not), and
feeds the proxy's frames back on the loop, as a transport's reader would.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from farside._errors import (
    DeadlineExceededError,
    EnclaveCallError,
    EnclaveUnavailableError,
    ProtocolError,
)
from farside._proto.v1 import session_pb2 as pb
from farside.attestation import Bundle, Manifest
from farside.protocol import (
    CallKind,
    CallReceived,
    CancelReceived,
    Event,
    RemoteError,
    Role,
    SessionCore,
)
from farside.untrusted._exits import ExitHandlers
from farside.untrusted.aio._endpoint import AsyncEndpoint

BUNDLE = Bundle(manifest=Manifest(name="tiny", entry="e.py"), files={"e.py": b"x = 1\n"})


class MemoryTransport:
    """Frames the client sends are kept for the proxy core; nothing blocks."""

    target = "memory"

    def __init__(self) -> None:
        self.sent: list[pb.Frame] = []

    def send(self, frames: list[pb.Frame]) -> None:
        wire = pb.Batch(frames=frames).SerializeToString()
        self.sent.extend(pb.Batch.FromString(wire).frames)

    @property
    def backlog(self) -> int:
        return 0

    async def drain(self) -> None:
        return None


class Rig:
    def __init__(self, tmp_path: Path, handlers: dict[str, Any] | None = None) -> None:
        self.transport = MemoryTransport()
        self.proxy = SessionCore(Role.PROXY)
        self.endpoint = AsyncEndpoint(
            SessionCore(Role.CLIENT),
            self.transport,  # type: ignore[arg-type]
            ExitHandlers(tmp_path, handlers or {}),
            error_from_exception=lambda exc: RemoteError.from_exception(exc, debug=False),
            loop=asyncio.get_running_loop(),
        )

    def to_proxy(self) -> list[Event]:
        frames, self.transport.sent = self.transport.sent, []
        return self.proxy.receive(frames)

    def to_client(self, frames: list[pb.Frame] | None = None) -> None:
        self.endpoint.feed(frames if frames is not None else self.proxy.frames_to_send())

    async def open(self) -> Rig:
        self.endpoint.run(lambda core: core.open(BUNDLE))
        self.to_proxy()
        self.proxy.loaded(BUNDLE.measurement())
        self.to_client()
        await self.endpoint.wait_loaded(1.0)
        self.endpoint.run(lambda core: core.accept_evidence())
        return self

    async def calls_at_proxy(self, count: int) -> list[CallReceived]:
        """Let the tasks run until ``count`` calls reached the proxy; return them."""
        got: list[CallReceived] = []
        async with asyncio.timeout(5):
            while len(got) < count:
                await asyncio.sleep(0)
                got += [e for e in self.to_proxy() if isinstance(e, CallReceived)]
        return got


def run(scenario: Any) -> Any:
    return asyncio.run(scenario())


def test_results_reach_their_own_tasks_in_any_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = await Rig(tmp_path).open()
        tasks = [
            asyncio.create_task(rig.endpoint.call(tag, CallKind.ECALL, "f", (tag,)))
            for tag in (2, 3, 4)
        ]
        calls = await rig.calls_at_proxy(3)
        for call in reversed(calls):  # answered last first
            rig.proxy.send_result(call.thread, call.call_id, call.args[0] * 10)
            rig.to_client()
        assert await asyncio.gather(*tasks) == [20, 30, 40]

    run(scenario)


def test_an_exit_call_is_served_by_the_waiting_task_sync_or_async(tmp_path: Path) -> None:
    served: list[Any] = []

    def plain(value: Any) -> Any:
        served.append(("plain", asyncio.current_task()))
        return value + 1

    async def awaited(value: Any) -> Any:
        await asyncio.sleep(0)
        served.append(("async", asyncio.current_task()))
        return value + 2

    async def scenario() -> None:
        rig = await Rig(tmp_path, {"plain": plain, "async": awaited}).open()
        task = asyncio.create_task(rig.endpoint.call(2, CallKind.ECALL, "f"))
        [call] = await rig.calls_at_proxy(1)
        results = []
        for name in ("plain", "async"):
            exit_id = rig.proxy.start_call(2, CallKind.EXIT, name, (1,))
            rig.to_client()
            async with asyncio.timeout(5):
                while not (answers := rig.to_proxy()):
                    await asyncio.sleep(0)
            [answer] = answers
            assert answer.call_id == exit_id  # type: ignore[union-attr]
            results.append(answer.value)  # type: ignore[union-attr]
        assert results == [2, 3]
        rig.proxy.send_result(2, call.call_id, "done")
        rig.to_client()
        assert await task == "done"
        assert served == [("plain", task), ("async", task)]

    run(scenario)


def test_an_error_result_is_an_enclave_call_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = await Rig(tmp_path).open()
        task = asyncio.create_task(rig.endpoint.call(2, CallKind.ECALL, "f"))
        [call] = await rig.calls_at_proxy(1)
        error = RemoteError.from_exception(ValueError("no"), debug=False)
        rig.proxy.send_result(2, call.call_id, error=error)
        rig.to_client()
        with pytest.raises(EnclaveCallError, match="no"):
            await task

    run(scenario)


def test_a_protocol_violation_fails_every_waiting_task_and_tells_the_proxy(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        rig = await Rig(tmp_path).open()
        tasks = [asyncio.create_task(rig.endpoint.call(t, CallKind.ECALL, "f")) for t in (2, 3)]
        await rig.calls_at_proxy(2)
        bogus = pb.Frame(result=pb.Result(call_id=999, value=b"\xc0"))  # never made
        rig.to_client([bogus])
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            assert isinstance(outcome, ProtocolError)
        assert any(f.HasField("close") for f in rig.transport.sent)
        with pytest.raises(ProtocolError):
            await rig.endpoint.call(4, CallKind.ECALL, "f")

    run(scenario)


def test_the_peers_close_and_a_lost_connection_fail_every_waiting_task(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = await Rig(tmp_path).open()
        task = asyncio.create_task(rig.endpoint.call(2, CallKind.ECALL, "f"))
        await rig.calls_at_proxy(1)
        rig.proxy.close()
        rig.to_client()
        with pytest.raises(EnclaveUnavailableError, match="closed by the peer"):
            await task

        rig = await Rig(tmp_path).open()
        task = asyncio.create_task(rig.endpoint.call(2, CallKind.ECALL, "f"))
        await rig.calls_at_proxy(1)
        rig.endpoint.fail(EnclaveUnavailableError("the wire broke"))
        with pytest.raises(EnclaveUnavailableError, match="the wire broke"):
            await task

    run(scenario)


def test_a_deadline_and_a_cancellation_send_cancel_and_late_results_are_dropped(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        rig = await Rig(tmp_path).open()
        with pytest.raises(DeadlineExceededError):
            await rig.endpoint.call(2, CallKind.ECALL, "f", timeout=0.05)
        events = rig.to_proxy()
        [call] = [e for e in events if isinstance(e, CallReceived)]
        assert [e for e in events if isinstance(e, CancelReceived)] == [
            CancelReceived(thread=2, call_id=call.call_id)
        ]
        rig.proxy.send_result(2, call.call_id, "late")
        rig.to_client()  # dropped: no error, no task gets it

        task = asyncio.create_task(rig.endpoint.call(3, CallKind.ECALL, "f"))
        [call] = await rig.calls_at_proxy(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert rig.to_proxy() == [CancelReceived(thread=3, call_id=call.call_id)]
        assert rig.endpoint.failure is None

    run(scenario)


def test_a_task_cancelled_in_its_async_handler_answers_the_exit_call_cancelled(
    tmp_path: Path,
) -> None:
    entered = asyncio.Event()

    async def forever() -> None:
        entered.set()
        await asyncio.sleep(3600)

    async def scenario() -> None:
        rig = await Rig(tmp_path, {"forever": forever}).open()
        task = asyncio.create_task(rig.endpoint.call(2, CallKind.ECALL, "f"))
        [call] = await rig.calls_at_proxy(1)
        exit_id = rig.proxy.start_call(2, CallKind.EXIT, "forever")
        rig.to_client()
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cancel, answer = rig.to_proxy()
        assert cancel == CancelReceived(thread=2, call_id=call.call_id)
        assert answer.call_id == exit_id  # type: ignore[union-attr]
        assert answer.error.type == "CancelledError"  # type: ignore[union-attr]

    run(scenario)
