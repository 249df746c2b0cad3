"""The threaded driver (``farside.transport.Endpoint``), client and proxy over in-memory pipes.

Two endpoints, a client core and a proxy core, are joined by two ``MemoryPipe``s (one per
direction), wired the way ``untrusted._session.open_session`` and ``proxy.server`` wire
the real ones. The handlers are small test doubles that record which OS thread ran what.
Every wait has a short bound, so a deadlock fails a test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from farside._errors import (
    DeadlineExceededError,
    EnclaveCallError,
    EnclaveError,
    EnclaveUnavailableError,
    HostCallError,
    ProtocolError,
    StatusCode,
)
from farside._proto.v1 import session_pb2 as pb
from farside.attestation import Bundle, Manifest
from farside.protocol import (
    BundleReceived,
    CallKind,
    CallReceived,
    CancelReceived,
    Event,
    Limits,
    OutputReceived,
    RemoteError,
    Role,
    SessionCore,
    State,
    Stream,
)
from farside.transport import Endpoint
from farside.transport.memory import MemoryPipe

BUNDLE = Bundle(manifest=Manifest(name="t", entry="e.py"), files={"e.py": b"pass\n"})
WAIT = 5.0  # upper bound for anything that should take milliseconds
T = 1

Call = Callable[[CallReceived], Any]


def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
    """Run ``fn`` on a daemon thread; its outcome lands in the returned future."""
    future: Future[Any] = Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True, name="test-caller").start()
    return future


def wait_until(predicate: Callable[[], object], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(0.002)


class ClientHandler:
    """The client's side: serves exit calls by name on the waiting client thread."""

    def __init__(self) -> None:
        self.endpoint: Endpoint | None = None
        self.exits: dict[str, Call] = {}
        self.calls: list[tuple[int, str, int]] = []  # (tag, name, OS thread)
        self.events: list[Event] = []
        self.started: list[int] = []

    def handle_call(self, event: CallReceived) -> Any:
        self.calls.append((event.thread, event.name, threading.get_ident()))
        return self.exits[event.name](event)

    def handle_event(self, event: Event) -> None:
        self.events.append(event)

    def start_thread(self, thread: int, kind: CallKind) -> bool:
        self.started.append(thread)  # the client never needs a new thread
        return True

    def output(self, stream: Stream | None = None) -> bytes:
        return b"".join(
            e.data
            for e in list(self.events)
            if isinstance(e, OutputReceived) and (stream is None or e.stream is stream)
        )


class ProxyHandler:
    """The proxy's side: one worker thread per client thread tag, serving entry calls."""

    def __init__(self) -> None:
        self.endpoint: Endpoint | None = None
        self.entries: dict[str, Call] = {}
        self.calls: list[tuple[int, str, int]] = []
        self.events: list[Event] = []
        self.workers: dict[int, int] = {}  # tag -> OS thread serving it
        self.threads: list[threading.Thread] = []

    def handle_call(self, event: CallReceived) -> Any:
        self.calls.append((event.thread, event.name, threading.get_ident()))
        return self.entries[event.name](event)

    def handle_event(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, BundleReceived):
            measurement = event.bundle.measurement()
            self.ep.run_locked(lambda core: core.loaded(measurement))

    def start_thread(self, thread: int, kind: CallKind) -> bool:
        worker = threading.Thread(
            target=self._serve, args=(thread,), daemon=True, name=f"test-worker-{thread}"
        )
        self.threads.append(worker)
        worker.start()
        return True

    def _serve(self, thread: int) -> None:
        self.workers[thread] = threading.get_ident()
        with contextlib.suppress(EnclaveError):  # the session ended
            self.ep.serve(thread)

    @property
    def ep(self) -> Endpoint:
        assert self.endpoint is not None
        return self.endpoint


class Session:
    """A loaded session: ``client`` and ``proxy`` endpoints, their handlers and pipes."""

    def __init__(self, *, client_limits: Limits | None = None, output_delay: float = 0.002) -> None:
        self.release = threading.Event()  # handlers that block wait for this
        self.ch = ClientHandler()
        self.ph = ProxyHandler()
        self.c2p = MemoryPipe("client-to-proxy")
        self.p2c = MemoryPipe("proxy-to-client")
        self.client = Endpoint(
            SessionCore(Role.CLIENT, limits=client_limits),
            self.c2p,
            self.ch,
            error_from_exception=RemoteError.from_exception,
        )
        self.proxy = Endpoint(
            SessionCore(Role.PROXY),
            self.p2c,
            self.ph,
            error_type=HostCallError,
            error_from_exception=lambda e: RemoteError.from_exception(e, debug=True),
            output_delay=output_delay,
        )
        self.ch.endpoint, self.ph.endpoint = self.client, self.proxy
        self.c2p.start(self.proxy.feed, self.proxy.fail)
        self.p2c.start(self.client.feed, self.client.fail)
        self.client.run_locked(lambda core: core.open(BUNDLE))
        loaded = self.client.wait_loaded(WAIT)
        assert loaded.measurement == BUNDLE.measurement()
        self.client.run_locked(lambda core: core.accept_evidence())  # as if it verified
        assert self.client.core.state is self.proxy.core.state is State.READY

    def call(self, thread: int, name: str, *args: Any, timeout: float | None = WAIT) -> Any:
        return self.client.call(thread, CallKind.ECALL, name, args, timeout=timeout)

    def close(self) -> None:
        self.release.set()
        self.c2p.close(timeout=WAIT)
        self.p2c.close(timeout=WAIT)
        self.proxy.stop_threads()
        for worker in self.ph.threads:
            worker.join(WAIT)
        stuck = [w.name for w in self.ph.threads if w.is_alive()]
        assert not stuck, f"proxy workers still running after the session ended: {stuck}"


@pytest.fixture
def session() -> Iterator[Session]:
    s = Session()
    try:
        yield s
    finally:
        s.close()


def blocking(session: Session, result: Any = "released") -> Call:
    def block(event: CallReceived) -> Any:
        session.release.wait(WAIT)
        return result

    return block


# --------------------------------------------------------------- basic calls


def test_entry_call_returns_its_value(session: Session) -> None:
    session.ph.entries["echo"] = lambda e: {"args": e.args, "kwargs": dict(e.kwargs)}
    got = session.client.call(T, CallKind.ECALL, "echo", (1, (2,)), {"k": b"v"}, timeout=WAIT)
    assert got == {"args": (1, (2,)), "kwargs": {"k": b"v"}}
    assert session.ph.workers.keys() == {T}


def test_enclave_error_reaches_the_client_as_enclave_call_error(session: Session) -> None:
    def fail(event: CallReceived) -> Any:
        raise EnclaveError("no such thing", code=StatusCode.NOT_FOUND)

    session.ph.entries["fail"] = fail
    with pytest.raises(EnclaveCallError) as excinfo:
        session.call(T, "fail")
    assert type(excinfo.value) is EnclaveCallError
    assert excinfo.value.code is StatusCode.NOT_FOUND
    assert excinfo.value.remote_type == "farside.EnclaveError"
    assert excinfo.value.message == "no such thing"
    assert excinfo.value.remote_traceback is not None  # the proxy side is a debug enclave
    # The session carries on.
    session.ph.entries["ok"] = lambda e: "ok"
    assert session.call(T, "ok") == "ok"


def test_unsupported_argument_is_a_type_error_and_the_session_survives(session: Session) -> None:
    session.ph.entries["echo"] = lambda e: e.args
    with pytest.raises(TypeError, match=r"builtins\.set"):
        session.call(T, "echo", {1, 2})
    assert session.call(T, "echo", [1, 2]) == ([1, 2],)
    assert session.client.failure is None


def test_result_that_cannot_be_encoded_becomes_an_error(session: Session) -> None:
    session.ph.entries["bad"] = lambda e: {1, 2}
    with pytest.raises(EnclaveCallError) as excinfo:
        session.call(T, "bad")
    assert excinfo.value.remote_type == "TypeError"
    assert excinfo.value.code is StatusCode.INVALID_ARGUMENT


# ------------------------------------------------------- threads and nesting


def test_concurrent_threads_with_nested_calls_keep_thread_affinity(session: Session) -> None:
    proxy, client = session.proxy, session.client

    def outer(event: CallReceived) -> Any:
        (n,) = event.args
        return proxy.call(event.thread, CallKind.EXIT, "mid", (n,)) + 1

    def mid(event: CallReceived) -> Any:
        (n,) = event.args
        return client.call(event.thread, CallKind.ECALL, "inner", (n,), timeout=WAIT) + 1

    session.ph.entries.update(outer=outer, inner=lambda e: e.args[0] * 2)
    session.ch.exits["mid"] = mid

    tags = list(range(1, 9))
    barrier = threading.Barrier(len(tags))
    client_threads: dict[int, int] = {}

    def run(tag: int) -> list[int]:
        client_threads[tag] = threading.get_ident()
        barrier.wait(WAIT)
        return [session.call(tag, "outer", tag * 100 + k) for k in range(5)]

    futures = {tag: in_thread(run, tag) for tag in tags}
    for tag, future in futures.items():
        assert future.result(WAIT * 2) == [(tag * 100 + k) * 2 + 2 for k in range(5)]

    # One worker per tag, started once, and every entry call of a tag ran on it.
    assert sorted(session.ph.workers) == tags
    assert len(set(session.ph.workers.values())) == len(tags)
    assert len(session.ph.calls) == len(tags) * 5 * 2
    for tag, name, ident in session.ph.calls:
        assert ident == session.ph.workers[tag], f"{name} of tag {tag} ran off its worker"
    # Every exit call ran on the client thread whose call was waiting.
    assert len(session.ch.calls) == len(tags) * 5
    for tag, _, ident in session.ch.calls:
        assert ident == client_threads[tag]
    assert session.ch.started == []
    assert session.client.failure is session.proxy.failure is None
    assert session.client.core.busy_threads() == session.proxy.core.busy_threads() == []


def test_nesting_to_depth_10_both_ways_across_threads(session: Session) -> None:
    proxy, client = session.proxy, session.client
    levels = 20  # 10 entry calls and 10 exit calls in flight at the deepest point

    def down(event: CallReceived) -> Any:
        level, trail = event.args
        trail = [*trail, ["enclave", level, event.depth]]
        if level == levels:
            return trail
        return proxy.call(event.thread, CallKind.EXIT, "up", (level + 1, trail))

    def up(event: CallReceived) -> Any:
        level, trail = event.args
        trail = [*trail, ["host", level, event.depth]]
        if level == levels:
            return trail
        return client.call(event.thread, CallKind.ECALL, "down", (level + 1, trail))

    session.ph.entries["down"] = down
    session.ch.exits["up"] = up

    trail = session.call(T, "down", 1, [])
    assert trail == [
        ["enclave" if level % 2 else "host", level, level] for level in range(1, levels + 1)
    ]
    me = threading.get_ident()
    assert {ident for _, _, ident in session.ch.calls} == {me}
    assert {ident for _, _, ident in session.ph.calls} == {session.ph.workers[T]}
    assert len(session.ph.calls) == len(session.ch.calls) == levels // 2


# ----------------------------------------------------------- exit call errors


def boom(event: CallReceived) -> Any:
    raise ValueError("boom")


def test_exit_handler_error_can_be_caught_in_the_enclave(session: Session) -> None:
    proxy = session.proxy

    def careful(event: CallReceived) -> Any:
        try:
            proxy.call(event.thread, CallKind.EXIT, "boom")
        except HostCallError as exc:
            return [type(exc).__name__, exc.remote_type, exc.message, int(exc.code)]
        return "not raised"

    session.ph.entries["careful"] = careful
    session.ch.exits["boom"] = boom
    assert session.call(T, "careful") == ["HostCallError", "ValueError", "boom", 2]
    # Both sides are still in business.
    session.ph.entries["ok"] = lambda e: "ok"
    assert session.call(T, "ok") == "ok"


def test_exit_handler_error_not_caught_reaches_the_client(session: Session) -> None:
    proxy = session.proxy
    session.ph.entries["careless"] = lambda e: proxy.call(e.thread, CallKind.EXIT, "boom")
    session.ch.exits["boom"] = boom
    with pytest.raises(EnclaveCallError) as excinfo:
        session.call(T, "careless")
    error = excinfo.value
    assert type(error) is EnclaveCallError  # the client's error type, not HostCallError
    # RemoteError.from_exception passes the HostCallError's remote_type through: the
    # client sees the type its own handler raised, and the enclave's traceback.
    assert error.remote_type == "ValueError"
    assert error.message.endswith("boom")
    assert error.code is StatusCode.UNKNOWN
    assert error.remote_traceback is not None
    assert error.remote_traceback.rstrip().endswith("ValueError: boom")
    assert "proxy.call(e.thread, CallKind.EXIT" in error.remote_traceback


def test_exit_handler_error_not_caught_is_not_prefixed_twice(session: Session) -> None:
    proxy = session.proxy
    session.ph.entries["careless"] = lambda e: proxy.call(e.thread, CallKind.EXIT, "boom")
    session.ch.exits["boom"] = boom
    with pytest.raises(EnclaveCallError) as excinfo:
        session.call(T, "careless")
    assert excinfo.value.message == "boom"
    assert str(excinfo.value).startswith("ValueError: boom")


def ping_pong(session: Session, *, fail_at: int | None = None) -> None:
    """Enclave "down" and host "up" call each other, level + 1 each time, without end."""
    proxy, client = session.proxy, session.client

    def down(event: CallReceived) -> Any:
        (level,) = event.args
        if level == fail_at:
            raise ValueError("boom")
        return proxy.call(event.thread, CallKind.EXIT, "up", (level + 1,))

    def up(event: CallReceived) -> Any:
        (level,) = event.args
        return client.call(event.thread, CallKind.ECALL, "down", (level + 1,))

    session.ph.entries["down"] = down
    session.ch.exits["up"] = up


def test_runaway_recursion_stops_at_the_depth_limit() -> None:
    s = Session(client_limits=Limits(max_depth=10))
    try:
        ping_pong(s)
        with pytest.raises(EnclaveCallError) as excinfo:
            s.call(T, "down", 1)
        assert excinfo.value.code is StatusCode.RESOURCE_EXHAUSTED
        assert s.client.core.busy_threads() == []
        wait_until(lambda: s.proxy.core.busy_threads() == [])
        s.ph.entries["ok"] = lambda e: "ok"
        assert s.call(T, "ok") == "ok"
    finally:
        s.close()


def test_error_unwinding_through_deep_nesting_stays_small(session: Session) -> None:
    ping_pong(session, fail_at=21)
    with pytest.raises(EnclaveCallError) as excinfo:
        session.call(T, "down", 1)
    error = excinfo.value
    assert error.remote_type == "ValueError"
    assert len(str(error)) < 100_000, f"{len(str(error))} characters"


# -------------------------------------------------------------------- output


def test_all_output_is_handled_before_the_call_returns() -> None:
    # The flusher waits 30 s, so only the result can be what pushes the output out.
    s = Session(output_delay=30.0)
    try:
        proxy = s.proxy

        def chatty(event: CallReceived) -> Any:
            for i in range(300):
                stream = Stream.STDERR if i % 3 == 0 else Stream.STDOUT
                proxy.write_output(event.thread, stream, b"%d\n" % i)
            return "done"

        s.ph.entries["chatty"] = chatty
        assert s.call(T, "chatty") == "done"
        outputs = [e for e in s.ch.events if isinstance(e, OutputReceived)]
        assert {e.thread for e in outputs} == {T}
        assert s.ch.output(Stream.STDERR) == b"".join(b"%d\n" % i for i in range(0, 300, 3))
        assert s.ch.output(Stream.STDOUT) == b"".join(b"%d\n" % i for i in range(300) if i % 3)
    finally:
        s.close()


def test_many_small_writes_are_coalesced() -> None:
    s = Session(output_delay=30.0)
    try:
        proxy = s.proxy

        def loop(event: CallReceived) -> Any:
            for i in range(500):
                proxy.write_output(event.thread, Stream.STDOUT, b"line %d\n" % i)

        s.ph.entries["loop"] = loop
        s.call(T, "loop")
        outputs = [e for e in s.ch.events if isinstance(e, OutputReceived)]
        assert len(outputs) == 1
        assert outputs[0].data == b"".join(b"line %d\n" % i for i in range(500))
    finally:
        s.close()


def test_flusher_sends_output_while_the_call_still_runs(session: Session) -> None:
    proxy = session.proxy

    def tick(event: CallReceived) -> Any:
        proxy.write_output(event.thread, Stream.STDOUT, b"tick\n")
        session.release.wait(WAIT)
        return "done"

    session.ph.entries["tick"] = tick
    future = in_thread(session.call, T, "tick")
    wait_until(lambda: session.ch.output() == b"tick\n")
    assert not future.done()
    session.release.set()
    assert future.result(WAIT) == "done"


def test_one_way_exit_call_is_served_before_the_result(session: Session) -> None:
    proxy = session.proxy

    def notify(event: CallReceived) -> Any:
        proxy.notify(event.thread, "log", ("hello",), {"level": 1})
        return "ok"

    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    session.ph.entries["notify"] = notify
    session.ch.exits["log"] = lambda e: seen.append((e.args, dict(e.kwargs)))
    assert session.call(T, "notify") == "ok"
    assert seen == [(("hello",), {"level": 1})]
    assert session.ch.calls == [(T, "log", threading.get_ident())]


def test_one_way_exit_calls_only_come_from_an_entry_call(session: Session) -> None:
    """A thread the enclave started has no waiting client thread to serve its notify:
    the proxy refuses it there, and nothing runs on the client's reader thread."""
    with pytest.raises(RuntimeError, match="cannot make calls"):
        session.proxy.notify(0, "log", ("from a background thread",))
    assert session.ch.events == []


# ------------------------------------------------------------------ timeouts


def test_timeout_raises_deadline_exceeded_and_abandons_the_tag(session: Session) -> None:
    session.ph.entries["sleep"] = blocking(session)
    session.ph.entries["echo"] = lambda e: e.args[0]
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        session.call(T, "sleep", timeout=0.2)
    assert time.monotonic() - started < 2.0
    assert session.client.core.is_abandoned(T)
    # The proxy hears about it.
    wait_until(lambda: CancelReceived(thread=T, call_id=1) in session.ph.events)
    # A fresh tag gets a fresh worker and is not stuck behind the abandoned one.
    assert session.call(T + 1, "echo", "fresh") == "fresh"
    assert session.ph.workers[T + 1] != session.ph.workers[T]
    # The abandoned worker finishes; its late result is dropped without harm.
    session.release.set()
    wait_until(lambda: session.proxy.core.depth(T) == 0)
    assert session.call(T + 1, "echo", "still fine") == "still fine"
    assert session.client.failure is session.proxy.failure is None


def test_abandoned_worker_unwinds_after_a_nested_timeout(session: Session) -> None:
    proxy, client = session.proxy, session.client
    unwound = threading.Event()

    def outer(event: CallReceived) -> Any:
        try:
            return proxy.call(event.thread, CallKind.EXIT, "mid")
        finally:
            unwound.set()

    def mid(event: CallReceived) -> Any:
        return client.call(event.thread, CallKind.ECALL, "inner", timeout=0.2)

    session.ph.entries.update(outer=outer, inner=blocking(session))
    session.ch.exits["mid"] = mid
    with pytest.raises(DeadlineExceededError):
        session.call(T, "outer")
    session.release.set()  # the inner call returns: its result is dropped
    assert unwound.wait(1.0), "the abandoned worker is still waiting for the exit call"


# ------------------------------------------------------------ the session ends


def test_closing_the_clients_inbound_pipe_fails_waiting_calls_promptly(
    session: Session,
) -> None:
    session.ph.entries["block"] = blocking(session)
    futures = [in_thread(session.call, tag, "block", timeout=None) for tag in (1, 2, 3)]
    wait_until(lambda: len(session.ph.calls) == 3)
    started = time.monotonic()
    session.p2c.close()
    for future in futures:
        with pytest.raises(EnclaveUnavailableError):
            future.result(WAIT)
    assert time.monotonic() - started < 2.0
    assert isinstance(session.client.failure, EnclaveUnavailableError)
    with pytest.raises(EnclaveUnavailableError):
        session.call(4, "block")


def test_closing_the_proxys_inbound_pipe_fails_its_waiting_exit_calls(session: Session) -> None:
    proxy = session.proxy
    outcome: list[BaseException] = []

    def ask_host(event: CallReceived) -> Any:
        try:
            return proxy.call(event.thread, CallKind.EXIT, "slow")
        except EnclaveError as exc:
            outcome.append(exc)
            raise

    session.ph.entries["ask"] = ask_host
    session.ch.exits["slow"] = blocking(session)
    in_thread(session.call, T, "ask", timeout=None)
    wait_until(lambda: session.ch.calls)
    session.c2p.close()
    wait_until(lambda: outcome)
    assert isinstance(outcome[0], EnclaveUnavailableError)
    assert isinstance(session.proxy.failure, EnclaveUnavailableError)


def test_malformed_frame_fails_waiters_with_protocol_error(session: Session) -> None:
    session.ph.entries["block"] = blocking(session)
    future = in_thread(session.call, T, "block", timeout=None)
    wait_until(lambda: session.ph.calls)
    session.client.feed([pb.Frame()])  # as if the reader got an empty frame
    with pytest.raises(ProtocolError) as excinfo:
        future.result(WAIT)
    error = excinfo.value
    assert session.client.failure is error
    assert session.client.core.state is State.ERROR
    with pytest.raises(ProtocolError) as again:
        session.call(T + 1, "block")
    assert again.value is error
    # The proxy was told why, and ended too.
    wait_until(lambda: session.proxy.failure is not None)
    assert isinstance(session.proxy.failure, ProtocolError)
    assert "peer closed the session" in str(session.proxy.failure)


def test_peer_closing_the_session_fails_waiters(session: Session) -> None:
    session.ph.entries["block"] = blocking(session)
    future = in_thread(session.call, T, "block", timeout=None)
    wait_until(lambda: session.ph.calls)
    session.proxy.run_locked(lambda core: core.close())
    with pytest.raises(EnclaveUnavailableError, match="closed by the peer"):
        future.result(WAIT)


def test_wait_loaded_times_out_when_the_proxy_never_answers() -> None:
    sent: list[list[pb.Frame]] = []

    class Recorder:
        def send(self, frames: list[pb.Frame]) -> None:
            sent.append(frames)

    endpoint = Endpoint(
        SessionCore(Role.CLIENT),
        Recorder(),
        ClientHandler(),
        error_from_exception=RemoteError.from_exception,
    )
    endpoint.run_locked(lambda core: core.open(BUNDLE))
    assert [f.WhichOneof("kind") for batch in sent for f in batch][:1] == ["open"]
    with pytest.raises(DeadlineExceededError):
        endpoint.wait_loaded(0.05)
