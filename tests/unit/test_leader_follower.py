"""Leader/follower on the stream transport: a waiting thread reads the wire itself.

Two endpoints (client and proxy, the test doubles of ``test_endpoint``) joined by a
real stream connection on a Unix socket in the test's directory. The endpoints count
their reads of the wire (by waiting threads, by the transport's reader thread) and
the waiting threads they woke with mail another thread read (``Endpoint.stats``):
one calling thread must cost no wake-up at either end, concurrent threads must be
handed their frames, and every result must stay exact.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farside._errors import (
    DeadlineExceededError,
    EnclaveError,
    EnclaveUnavailableError,
    HostCallError,
)
from farside.protocol import (
    CallKind,
    CallReceived,
    OutputReceived,
    RemoteError,
    Role,
    SessionCore,
    State,
    Stream,
)
from farside.transport import Endpoint
from farside.transport.base import Admission, FrameSender, FrameSink
from farside.transport.stream import StreamClientTransport, StreamConnection, StreamListener

from .test_endpoint import BUNDLE, WAIT, ClientHandler, ProxyHandler, in_thread, wait_until

TOKEN = "leader-follower"


class StreamSession:
    """A loaded session over a stream connection; ``grace`` is both readers' grace."""

    def __init__(self, directory: Path, *, grace: float | None = None) -> None:
        self.release = threading.Event()
        self.ch, self.ph = ClientHandler(), ProxyHandler()
        self.grace = {} if grace is None else {"reader_grace": grace}
        self.proxy: Endpoint | None = None
        self.connection: StreamConnection | None = None
        self.listener = StreamListener(
            f"unix:{directory / 'lf.sock'}",
            admission=Admission(TOKEN),
            on_open=self._on_open,
            on_lost=self._on_lost,
        )
        address = self.listener.start()
        self.transport = StreamClientTransport(address, token=TOKEN)
        self.client = Endpoint(
            SessionCore(Role.CLIENT),
            self.transport,
            self.ch,
            error_from_exception=RemoteError.from_exception,
            **self.grace,
        )
        self.ch.endpoint = self.client
        self.transport.start(self.client.feed, self.client.fail)
        self.client.run_locked(lambda core: core.open(BUNDLE))
        self.client.wait_loaded(WAIT)
        self.client.run_locked(lambda core: core.accept_evidence())
        assert self.client.core.state is State.READY

    def _on_lost(self, error: EnclaveError) -> None:
        self.ph.ep.fail(error)

    def _on_open(self, sender: FrameSender) -> FrameSink:
        assert isinstance(sender, StreamConnection)
        self.connection = sender
        self.proxy = Endpoint(
            SessionCore(Role.PROXY),
            sender,
            self.ph,
            error_type=HostCallError,
            error_from_exception=lambda e: RemoteError.from_exception(e, debug=True),
            **self.grace,
        )
        self.ph.endpoint = self.proxy
        return self.proxy.feed

    def call(self, thread: int, name: str, *args: Any, timeout: float | None = WAIT) -> Any:
        return self.client.call(thread, CallKind.ECALL, name, args, timeout=timeout)

    def close(self) -> None:
        self.release.set()
        stopping = in_thread(self.listener.stop, WAIT)  # both ends close at once
        self.transport.close(timeout=WAIT)
        stopping.result(WAIT * 2)
        if self.proxy is not None:
            self.proxy.stop_threads()
        for worker in self.ph.threads:
            worker.join(WAIT)
        stuck = [w.name for w in self.ph.threads if w.is_alive()]
        assert not stuck, f"proxy workers still running after the session ended: {stuck}"


@pytest.fixture
def session(tmp_path: Path) -> Iterator[StreamSession]:
    s = StreamSession(tmp_path)
    try:
        yield s
    finally:
        s.close()


def test_one_calling_thread_reads_its_own_results_and_wakes_nobody(tmp_path: Path) -> None:
    # A long grace: the readers never take a turn back from the waiting threads, so
    # the count is exact whatever the scheduling.
    s = StreamSession(tmp_path, grace=60.0)
    try:
        s.ph.entries["echo"] = lambda e: e.args[0]
        s.ch.exits["back"] = lambda e: e.args[0] + 1
        s.ph.entries["nested"] = lambda e: s.ph.ep.call(e.thread, CallKind.EXIT, "back", (1,))
        assert s.call(1, "echo", 0) == 0  # the worker starts; the readers let go
        assert s.proxy is not None
        client, proxy = s.client.stats.snapshot(), s.proxy.stats.snapshot()
        for n in range(100):
            assert s.call(1, "echo", n) == n
            assert s.call(1, "nested") == 2  # an exit call, served on the waiting thread
        after_client, after_proxy = s.client.stats.snapshot(), s.proxy.stats.snapshot()
        for before, after in ((client, after_client), (proxy, after_proxy)):
            assert after["wakeups"] == before["wakeups"], (before, after)
            assert after["reader_reads"] == before["reader_reads"], (before, after)
            assert after["led_reads"] - before["led_reads"] >= 200
    finally:
        s.close()


def test_concurrent_threads_are_handed_their_frames(session: StreamSession) -> None:
    arrived = threading.Semaphore(0)
    tags = list(range(1, 9))

    def gather(event: CallReceived) -> Any:
        arrived.release()
        session.release.wait(WAIT)
        return event.args[0] * 3

    session.ph.entries["gather"] = gather
    before = session.client.stats.snapshot()
    futures = {tag: in_thread(session.call, tag, "gather", tag) for tag in tags}
    for _ in tags:  # every thread is waiting: one reads, the others follow
        assert arrived.acquire(timeout=WAIT)
    session.release.set()
    for tag, future in futures.items():
        assert future.result(WAIT) == tag * 3
    after = session.client.stats.snapshot()
    assert after["wakeups"] > before["wakeups"]


def test_many_threads_with_nested_calls_and_output_stay_exact(session: StreamSession) -> None:
    proxy, client = session.ph.ep, session.client

    def outer(event: CallReceived) -> Any:
        (n,) = event.args
        proxy.write_output(event.thread, Stream.STDOUT, f"<{event.thread}:{n}>".encode())
        return proxy.call(event.thread, CallKind.EXIT, "mid", (n,)) + 1

    def mid(event: CallReceived) -> Any:
        (n,) = event.args
        return client.call(event.thread, CallKind.ECALL, "inner", (n,), timeout=WAIT) + 1

    session.ph.entries.update(outer=outer, inner=lambda e: e.args[0] * 2)
    session.ch.exits["mid"] = mid
    tags = list(range(1, 13))

    def run(tag: int) -> list[int]:
        results = []
        for k in range(15):
            results.append(session.call(tag, "outer", tag * 100 + k))
            # the call's output was handled before its result came back
            assert f"<{tag}:{tag * 100 + k}>".encode() in session.ch.output()
        return results

    futures = {tag: in_thread(run, tag) for tag in tags}
    for tag, future in futures.items():
        assert future.result(WAIT * 4) == [(tag * 100 + k) * 2 + 2 for k in range(15)]
    assert client.failure is None
    assert proxy.failure is None
    assert client.core.busy_threads() == proxy.core.busy_threads() == []
    assert all(isinstance(e, OutputReceived) for e in session.ch.events)


def test_a_leader_that_times_out_passes_the_lead_on(session: StreamSession) -> None:
    session.ph.entries["sleep"] = lambda e: session.release.wait(WAIT) and "late"
    session.ph.entries["echo"] = lambda e: e.args[0]
    # Thread 1 leads and times out; thread 2, waiting meanwhile, must still get its
    # result (someone reads for it) and later calls work.
    slow = in_thread(session.call, 1, "sleep", timeout=0.3)
    time.sleep(0.05)
    other = in_thread(session.call, 2, "sleep", timeout=None)
    with pytest.raises(DeadlineExceededError):
        slow.result(WAIT)
    assert session.call(3, "echo", "after the timeout") == "after the timeout"
    session.release.set()
    assert other.result(WAIT) == "late"
    assert session.call(4, "echo", "a fresh tag") == "a fresh tag"


def test_peer_death_fails_every_waiter(session: StreamSession) -> None:
    session.ph.entries["block"] = lambda e: session.release.wait(WAIT)
    futures = [in_thread(session.call, tag, "block", timeout=None) for tag in (1, 2, 3, 4)]
    wait_until(lambda: len(session.ph.calls) == 4)
    started = time.monotonic()
    assert session.connection is not None
    session.connection.close(timeout=0.1)  # the proxy's end goes away
    for future in futures:
        with pytest.raises(EnclaveUnavailableError):
            future.result(WAIT)
    assert time.monotonic() - started < WAIT
    with pytest.raises(EnclaveUnavailableError):
        session.call(5, "block")


def test_the_reader_sees_what_arrives_when_nobody_waits(session: StreamSession) -> None:
    """Output after the call returned, with no thread waiting, still arrives."""
    done = threading.Event()

    def later(event: CallReceived) -> Any:
        proxy = session.ph.ep

        def write() -> None:
            time.sleep(0.05)
            proxy.write_output(event.thread, Stream.STDERR, b"after the result")
            done.set()

        threading.Thread(target=write, daemon=True).start()
        return "returned"

    session.ph.entries["later"] = later
    assert session.call(1, "later") == "returned"
    assert done.wait(WAIT)
    wait_until(lambda: session.ch.output(Stream.STDERR) == b"after the result")


def test_cancelled_nested_call_unwinds(session: StreamSession) -> None:
    proxy, client = session.ph.ep, session.client
    unwound = threading.Event()

    def outer(event: CallReceived) -> Any:
        try:
            return proxy.call(event.thread, CallKind.EXIT, "mid")
        except EnclaveError:
            return None
        finally:
            unwound.set()

    def mid(event: CallReceived) -> Any:
        return client.call(event.thread, CallKind.ECALL, "inner", timeout=0.2)

    session.ph.entries.update(outer=outer, inner=lambda e: session.release.wait(WAIT))
    session.ch.exits["mid"] = mid
    with pytest.raises(DeadlineExceededError):
        session.call(1, "outer")
    session.release.set()
    assert unwound.wait(WAIT)
    session.ph.entries["echo"] = lambda e: e.args[0]
    assert session.call(2, "echo", 7) == 7


class CountingSocket:
    """A socket whose writes are counted (everything else goes to the real one)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.writes: list[int] = []  # messages' parts per write

    def send(self, data: Any, *args: Any) -> int:
        self.writes.append(1)
        return int(self._sock.send(data, *args))

    def sendmsg(self, parts: list[Any], *args: Any) -> int:
        self.writes.append(len(parts))
        return int(self._sock.sendmsg(parts, *args))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_frames_of_threads_queued_while_one_writes_leave_in_one_write(
    session: StreamSession,
) -> None:
    session.ph.entries["echo"] = lambda e: e.args[0]
    assert session.call(1, "echo", 0) == 0
    connection = session.transport._connection
    assert connection is not None
    counting = CountingSocket(connection._sock)
    connection._sock = counting  # type: ignore[assignment]
    tags = list(range(1, 7))
    with connection._send_lock:  # as if a thread were writing: the others only queue
        futures = {tag: in_thread(session.call, tag, "echo", tag * 7) for tag in tags}
        wait_until(lambda: len(connection.outbox.parts) == len(tags))
        assert counting.writes == []
    connection.flush()  # what the writing thread does once it let go of the lock
    for tag, future in futures.items():
        assert future.result(WAIT) == tag * 7
    assert counting.writes[0] == len(tags)  # six calls' messages, one system call
