"""The sans-IO session core (``farside.protocol``), driven as a client/proxy pair in memory.

No threads, no transport: ``CorePair`` moves the frames one core queued into the other's
``receive`` (through the wire encoding, or as objects) and hands back the events, like
h11's ``ConnectionPair``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

import pytest

from farside import _values
from farside._errors import (
    EnclaveError,
    EnclaveUnavailableError,
    HostCallError,
    ProtocolError,
    StatusCode,
)
from farside._proto.v1 import session_pb2 as pb
from farside.attestation import Bundle, Manifest
from farside.protocol import (
    PROTOCOL_VERSION,
    BundleReceived,
    CallKind,
    CallReceived,
    CancelReceived,
    CloseReceived,
    DisposeReceived,
    Event,
    Limits,
    LoadedReceived,
    OutputReceived,
    RemoteError,
    ResultReceived,
    Role,
    SessionCore,
    State,
    Stream,
)
from farside.transport.base import inline_blobs

BUNDLE = Bundle(manifest=Manifest(name="tiny", entry="e.py"), files={"e.py": b"x = 1\n"})
T = 7  # a client thread tag


def big_bundle() -> Bundle:
    return Bundle(
        manifest=Manifest(name="big", entry="__init__.py", product_id=9, security_version=2),
        files={
            "lib/util.py": bytes(range(37)),
            "__init__.py": b"#" * 100,
            "z.bin": b"",
        },
    )


def wire(frames: list[pb.Frame]) -> list[pb.Frame]:
    """What the peer gets after a transport serialized the frames in one Batch."""
    return list(pb.Batch.FromString(pb.Batch(frames=frames).SerializeToString()).frames)


class CorePair:
    """A client core and a proxy core talking to each other in memory."""

    def __init__(
        self,
        *,
        client_limits: Limits | None = None,
        proxy_limits: Limits | None = None,
        serialize: bool = True,
    ) -> None:
        self.client = SessionCore(Role.CLIENT, limits=client_limits)
        self.proxy = SessionCore(Role.PROXY, limits=proxy_limits)
        self.serialize = serialize

    def _move(self, source: SessionCore, target: SessionCore) -> list[Event]:
        frames = source.frames_to_send()
        blobs = source.blobs_to_send()
        if self.serialize:  # blobs inline, as gRPC carries them
            return target.receive(wire(inline_blobs(frames, blobs)))
        return target.receive(frames, [bytes(blob) for blob in blobs])  # out of band

    def to_proxy(self) -> list[Event]:
        """Deliver what the client queued; return the proxy's events."""
        return self._move(self.client, self.proxy)

    def to_client(self) -> list[Event]:
        """Deliver what the proxy queued; return the client's events."""
        return self._move(self.proxy, self.client)

    def open(self, bundle: Bundle = BUNDLE) -> CorePair:
        """Open the session and load ``bundle``: both cores end READY."""
        self.client.open(bundle)
        [received] = self.to_proxy()
        assert isinstance(received, BundleReceived)
        assert received.bundle == bundle
        self.proxy.loaded(bundle.measurement())
        assert self.to_client() == [LoadedReceived(measurement=bundle.measurement())]
        assert self.client.state is State.ATTESTING
        self.client.accept_evidence()
        assert self.client.state is self.proxy.state is State.READY
        return self

    # Calls, each delivered and checked: return the call id.

    def entry(self, thread: int, name: str = "f", *args: Any, **kwargs: Any) -> int:
        call_id = self.client.start_call(thread, CallKind.ECALL, name, args, kwargs)
        [event] = self.to_proxy()
        assert isinstance(event, CallReceived)
        assert (event.thread, event.call_id, event.name) == (thread, call_id, name)
        assert (event.args, dict(event.kwargs)) == (args, kwargs)
        return call_id

    def exit(self, thread: int, name: str = "h", *args: Any, **kwargs: Any) -> int:
        call_id = self.proxy.start_call(thread, CallKind.EXIT, name, args, kwargs)
        [event] = self.to_client()
        assert isinstance(event, CallReceived)
        assert (event.thread, event.call_id, event.name) == (thread, call_id, name)
        assert (event.args, dict(event.kwargs)) == (args, kwargs)
        return call_id


@pytest.fixture(params=[True, False], ids=["wire", "objects"])
def pair(request: pytest.FixtureRequest) -> CorePair:
    """A session that is open and loaded, frames moved through the wire or as objects."""
    return CorePair(serialize=request.param).open()


# ----------------------------------------------------------------- opening


def test_open_streams_a_multi_chunk_bundle() -> None:
    bundle = big_bundle()  # 137 bytes in 3 files
    p = CorePair(client_limits=Limits(bundle_chunk_size=16, max_depth=20))
    p.client.open(bundle)
    assert p.client.state is State.LOADING
    frames = wire(p.client.frames_to_send())
    assert [f.WhichOneof("kind") for f in frames] == ["open"] + ["bundle"] * 9

    header = frames[0].open
    assert header.protocol_version == PROTOCOL_VERSION
    assert header.manifest.name == "big"
    assert header.manifest.entry == "__init__.py"
    assert (header.manifest.product_id, header.manifest.security_version) == (9, 2)
    assert header.manifest.debug is True
    assert [(f.path, f.size) for f in header.files] == [
        ("__init__.py", 100),
        ("lib/util.py", 37),
        ("z.bin", 0),
    ]
    assert header.max_depth == 20
    assert [len(f.bundle.data) for f in frames[1:]] == [16] * 8 + [9]

    # Chunk by chunk: nothing happens until the last byte arrives.
    for frame in frames[:-1]:
        assert p.proxy.receive([frame]) == []
        assert p.proxy.state is State.RECEIVING_BUNDLE
    [received] = p.proxy.receive(frames[-1:])
    assert received == BundleReceived(bundle=bundle, max_depth=20)
    assert received.bundle.measurement() == bundle.measurement()
    assert p.proxy.state is State.LOADING
    assert p.proxy.frames_to_send() == []


def test_empty_bundle_file_needs_no_chunk() -> None:
    bundle = Bundle(manifest=Manifest(name="empty", entry="e.py"), files={"e.py": b""})
    p = CorePair()
    p.client.open(bundle)
    frames = p.client.frames_to_send()
    assert [f.WhichOneof("kind") for f in frames] == ["open"]
    assert p.proxy.receive(wire(frames)) == [BundleReceived(bundle=bundle, max_depth=64)]


@pytest.mark.parametrize(("client_depth", "proxy_depth", "agreed"), [(64, 5, 5), (3, 64, 3)])
def test_nesting_limit_is_the_smaller_of_both(
    client_depth: int, proxy_depth: int, agreed: int
) -> None:
    p = CorePair(
        client_limits=Limits(max_depth=client_depth), proxy_limits=Limits(max_depth=proxy_depth)
    )
    p.client.open(BUNDLE)
    [received] = p.to_proxy()
    assert isinstance(received, BundleReceived)
    assert received.max_depth == agreed


def test_loaded_reaches_the_client() -> None:
    p = CorePair()
    p.client.open(BUNDLE)
    p.to_proxy()
    p.proxy.loaded(b"\x01" * 32)
    assert p.proxy.state is State.READY
    assert p.to_client() == [LoadedReceived(measurement=b"\x01" * 32)]
    assert p.client.state is State.ATTESTING  # until the client accepts the evidence
    p.client.accept_evidence()
    assert p.client.state is State.READY


def raw_call(thread: int, name: str, *, call_id: int = 0, oneway: bool = True) -> pb.Frame:
    args = _values.encode([[], {}])
    return pb.Frame(
        call=pb.Call(call_id=call_id, thread=thread, kind=5, name=name, args=args, oneway=oneway)
    )


@pytest.mark.parametrize(
    "frame",
    [
        raw_call(1, "farside.fs.open"),  # one-way
        raw_call(1, "audit", call_id=2, oneway=False),
        pb.Frame(output=pb.Output(thread=1, stream=1, data=b"PWNED\n")),
        pb.Frame(result=pb.Result(call_id=1, value=_values.encode(None))),
    ],
    ids=["one-way call", "exit call", "output", "result"],
)
def test_nothing_but_close_is_accepted_before_the_evidence_is(frame: pb.Frame) -> None:
    """The review's attack: frames right after Loaded, before the client checked the
    evidence, reached its handlers, files and terminal. Now they end the session."""
    p = CorePair()
    p.client.open(BUNDLE)
    p.to_proxy()
    p.proxy.loaded(BUNDLE.measurement())
    loaded = pb.Frame(loaded=pb.Loaded(measurement=BUNDLE.measurement()))
    with pytest.raises(ProtocolError, match="attesting"):
        p.client.receive([loaded, frame])
    assert p.client.state is State.ERROR


def test_a_one_way_call_for_a_thread_that_is_not_waiting_is_refused() -> None:
    p = CorePair().open()
    with pytest.raises(ProtocolError, match="not waiting"):
        p.client.receive([raw_call(7, "audit")])


def test_a_one_way_call_for_an_abandoned_thread_is_dropped() -> None:
    p = CorePair().open()
    p.entry(1)
    p.client.abandon_thread(1)
    assert p.client.receive([raw_call(1, "audit")]) == []
    assert p.client.state is State.READY


def test_the_proxy_makes_one_way_calls_only_from_an_entry_call() -> None:
    p = CorePair().open()
    with pytest.raises(RuntimeError, match="only while an entry call runs"):
        p.proxy.start_call(1, CallKind.EXIT, "audit", oneway=True)
    with pytest.raises(RuntimeError, match="cannot make calls"):
        p.proxy.start_call(0, CallKind.EXIT, "audit", oneway=True)


def test_failed_load_reaches_the_client_and_ends_the_session() -> None:
    p = CorePair()
    p.client.open(BUNDLE)
    p.to_proxy()
    error = RemoteError(code=StatusCode.FAILED_PRECONDITION, type="SyntaxError", message="bad")
    p.proxy.loaded(error=error)
    assert p.proxy.state is State.CLOSED
    frames = p.proxy.frames_to_send()
    assert [f.WhichOneof("kind") for f in frames] == ["loaded", "close"]
    # The Close after the failed Loaded is not reported again.
    assert p.client.receive(wire(frames)) == [LoadedReceived(error=error)]
    assert p.client.state is State.CLOSED
    with pytest.raises(EnclaveUnavailableError):
        p.client.start_call(T, CallKind.RUN)


def test_output_before_loaded_is_a_protocol_error() -> None:
    """No enclave code runs before the client accepted the evidence, so no output can
    come before it either: a proxy that sends some is broken or hostile."""
    p = CorePair()
    p.client.open(BUNDLE)
    p.to_proxy()
    output = pb.Frame(output=pb.Output(thread=0, stream=1, data=b"importing\n"))
    with pytest.raises(ProtocolError, match="output while the session is loading"):
        p.client.receive([output])


def test_open_twice_is_refused_locally() -> None:
    p = CorePair()
    p.client.open(BUNDLE)
    p.client.frames_to_send()
    with pytest.raises(RuntimeError, match="only once"):
        p.client.open(BUNDLE)
    assert p.client.frames_to_send() == []


# ------------------------------------------------------------------- calls


def test_entry_call_and_result(pair: CorePair) -> None:
    call_id = pair.client.start_call(T, CallKind.ECALL, "add", (2, (3,)), {"scale": 10})
    assert call_id % 2 == 1
    assert pair.to_proxy() == [
        CallReceived(
            thread=T,
            call_id=call_id,
            kind=CallKind.ECALL,
            name="add",
            args=(2, (3,)),
            kwargs={"scale": 10},
            depth=1,
        )
    ]
    assert pair.client.depth(T) == pair.proxy.depth(T) == 1
    assert pair.client.busy_threads() == pair.proxy.busy_threads() == [T]

    pair.proxy.send_result(T, call_id, {"sum": 50, "raw": b"\x00"})
    assert pair.to_client() == [
        ResultReceived(thread=T, call_id=call_id, value={"sum": 50, "raw": b"\x00"})
    ]
    assert pair.client.depth(T) == pair.proxy.depth(T) == 0
    assert pair.client.busy_threads() == pair.proxy.busy_threads() == []


@pytest.mark.parametrize("kind", [CallKind.INITIALIZE, CallKind.RUN, CallKind.FINALIZE])
def test_every_entry_kind_travels(pair: CorePair, kind: CallKind) -> None:
    call_id = pair.client.start_call(T, kind, "", (None,))
    [event] = pair.to_proxy()
    assert isinstance(event, CallReceived)
    assert (event.kind, event.args) == (kind, (None,))
    pair.proxy.send_result(T, call_id)
    assert pair.to_client() == [ResultReceived(thread=T, call_id=call_id, value=None)]


def test_call_ids_are_odd_for_the_client_and_even_for_the_proxy(pair: CorePair) -> None:
    client_ids = [pair.entry(thread) for thread in (1, 2, 3)]
    proxy_ids = [pair.exit(thread) for thread in (1, 2, 3)]
    assert client_ids == [1, 3, 5]
    assert proxy_ids == [2, 4, 6]


def test_nesting_to_depth_10_both_ways(pair: CorePair) -> None:
    """entry, exit, entry, ... 10 of each on one thread; results unwind LIFO."""
    ids = []
    for level in range(1, 21):
        if level % 2:
            call_id = pair.client.start_call(T, CallKind.ECALL, "down", (level,))
            events = pair.to_proxy()
            kind = CallKind.ECALL
        else:
            call_id = pair.proxy.start_call(T, CallKind.EXIT, "up", (level,))
            events = pair.to_client()
            kind = CallKind.EXIT
        assert events == [
            CallReceived(
                thread=T, call_id=call_id, kind=kind, name="down" if level % 2 else "up",
                args=(level,), kwargs={}, depth=level,
            )
        ]  # fmt: skip
        assert pair.client.depth(T) == pair.proxy.depth(T) == level
        ids.append(call_id)

    value: Any = None
    for level in range(20, 0, -1):
        call_id = ids.pop()
        value = {"level": level, "inner": value}
        if level % 2:
            pair.proxy.send_result(T, call_id, value)
            events = pair.to_client()
        else:
            pair.client.send_result(T, call_id, value)
            events = pair.to_proxy()
        assert events == [ResultReceived(thread=T, call_id=call_id, value=value)]
        assert pair.client.depth(T) == pair.proxy.depth(T) == level - 1

    levels = []
    while value is not None:
        levels.append(value["level"])
        value = value["inner"]
    assert levels == list(range(1, 21))


def test_interleaved_threads_each_with_nested_calls(pair: CorePair) -> None:
    threads = [3, 11, 42, 2**40]
    rng = random.Random(1234)

    outer = {t: pair.client.start_call(t, CallKind.ECALL, "outer", (t,)) for t in threads}
    events = pair.to_proxy()  # one batch, four threads
    assert [(e.thread, e.call_id) for e in events] == [(t, outer[t]) for t in threads]  # type: ignore[union-attr]

    order = rng.sample(threads, len(threads))
    mid = {t: pair.proxy.start_call(t, CallKind.EXIT, "mid", (t,)) for t in order}
    events = pair.to_client()
    assert [(e.thread, e.call_id) for e in events] == [(t, mid[t]) for t in order]  # type: ignore[union-attr]

    order = rng.sample(threads, len(threads))
    inner = {t: pair.client.start_call(t, CallKind.ECALL, "inner", (t,)) for t in order}
    events = pair.to_proxy()
    assert all(isinstance(e, CallReceived) and e.depth == 3 for e in events)
    assert [(e.thread, e.call_id) for e in events] == [(t, inner[t]) for t in order]  # type: ignore[union-attr]

    # Unwind in a different interleaving per level; every result names its own thread.
    for calls, answering, deliver in [
        (inner, pair.proxy, pair.to_client),
        (mid, pair.client, pair.to_proxy),
        (outer, pair.proxy, pair.to_client),
    ]:
        order = rng.sample(threads, len(threads))
        for t in order:
            answering.send_result(t, calls[t], f"{t}:{calls[t]}")
        assert deliver() == [
            ResultReceived(thread=t, call_id=calls[t], value=f"{t}:{calls[t]}") for t in order
        ]
    assert pair.client.busy_threads() == pair.proxy.busy_threads() == []


def test_exit_call_answered_with_an_error(pair: CorePair) -> None:
    pair.entry(T)
    exit_id = pair.exit(T, "lookup", "key")
    error = RemoteError(
        code=StatusCode.NOT_FOUND, type="KeyError", message="'key'", traceback="Traceback..."
    )
    pair.client.send_result(T, exit_id, error=error)
    assert pair.to_proxy() == [ResultReceived(thread=T, call_id=exit_id, error=error)]
    assert pair.proxy.depth(T) == pair.client.depth(T) == 1


def test_entry_call_answered_with_an_error(pair: CorePair) -> None:
    call_id = pair.entry(T)
    error = RemoteError(code=StatusCode.INVALID_ARGUMENT, type="ValueError", message="no")
    pair.proxy.send_result(T, call_id, error=error)
    assert pair.to_client() == [ResultReceived(thread=T, call_id=call_id, error=error)]


def test_unknown_status_code_from_the_peer_becomes_unknown(pair: CorePair) -> None:
    call_id = pair.client.start_call(T, CallKind.RUN)
    pair.client.frames_to_send()
    frame = pb.Frame(result=pb.Result(call_id=call_id, error=pb.Error(code=999, type="X")))
    [event] = pair.client.receive([frame])
    assert isinstance(event, ResultReceived)
    assert event.error == RemoteError(code=StatusCode.UNKNOWN, type="X")


def test_result_that_cannot_be_encoded_is_sent_as_an_error(pair: CorePair) -> None:
    call_id = pair.entry(T)
    pair.proxy.send_result(T, call_id, {"bad": {1, 2}})  # does not raise: the answer is owed
    [event] = pair.to_client()
    assert isinstance(event, ResultReceived)
    assert event.value is None
    assert event.error is not None
    assert event.error.code is StatusCode.INVALID_ARGUMENT
    assert event.error.type == "TypeError"
    assert "result['bad']" in event.error.message


def test_send_result_must_answer_the_innermost_call(pair: CorePair) -> None:
    outer = pair.entry(T)
    pair.exit(T)
    with pytest.raises(RuntimeError, match="not the innermost"):
        pair.proxy.send_result(T, outer, 1)
    with pytest.raises(RuntimeError, match="not the innermost"):
        pair.proxy.send_result(T + 1, outer, 1)
    assert pair.proxy.frames_to_send() == []


# ------------------------------------------------------------------ output


def test_output_is_coalesced_and_arrives_before_the_result(pair: CorePair) -> None:
    call_id = pair.entry(T)
    lines = [b"line %d\n" % n for n in range(100)]
    for line in lines:
        pair.proxy.write_output(T, Stream.STDOUT, line)
    assert pair.proxy.frames_to_send() == []  # buffered output stays in the core
    assert pair.proxy.pending_output == sum(map(len, lines))
    pair.proxy.send_result(T, call_id, "done")
    frames = pair.proxy.frames_to_send()
    assert [f.WhichOneof("kind") for f in frames] == ["output", "result"]
    assert pair.client.receive(wire(frames)) == [
        OutputReceived(thread=T, stream=Stream.STDOUT, data=b"".join(lines)),
        ResultReceived(thread=T, call_id=call_id, value="done"),
    ]
    assert pair.proxy.pending_output == 0


def test_output_keeps_order_across_streams_and_threads(pair: CorePair) -> None:
    pair.entry(T)
    pair.entry(T + 1)
    writes = [
        (T, Stream.STDOUT, b"a"),
        (T, Stream.STDOUT, b"b"),
        (T, Stream.STDERR, b"c"),
        (T, Stream.STDOUT, b"d"),
        (T + 1, Stream.STDOUT, b"e"),
        (T + 1, Stream.STDOUT, b""),  # empty writes are no-ops
        (T, Stream.STDOUT, b"f"),
        (0, Stream.STDERR, b"g"),
    ]
    for thread, stream, data in writes:
        pair.proxy.write_output(thread, stream, data)
    pair.proxy.flush_output()
    assert pair.to_client() == [
        OutputReceived(thread=T, stream=Stream.STDOUT, data=b"ab"),
        OutputReceived(thread=T, stream=Stream.STDERR, data=b"c"),
        OutputReceived(thread=T, stream=Stream.STDOUT, data=b"d"),
        OutputReceived(thread=T + 1, stream=Stream.STDOUT, data=b"e"),
        OutputReceived(thread=T, stream=Stream.STDOUT, data=b"f"),
        OutputReceived(thread=0, stream=Stream.STDERR, data=b"g"),
    ]


def test_output_chunk_size_flushes_a_full_buffer() -> None:
    p = CorePair(proxy_limits=Limits(output_chunk_size=64)).open()
    p.entry(T)
    for _ in range(6):
        p.proxy.write_output(T, Stream.STDOUT, b"0123456789")
    assert p.proxy.frames_to_send() == []
    assert p.proxy.pending_output == 60
    p.proxy.write_output(T, Stream.STDOUT, b"0123456789")
    assert p.proxy.pending_output == 0
    frames = p.proxy.frames_to_send()
    assert [(f.WhichOneof("kind"), len(f.output.data)) for f in frames] == [("output", 70)]
    # Many writes become few frames.
    for _ in range(100):
        p.proxy.write_output(T, Stream.STDOUT, b"0123456789")
    p.proxy.flush_output()
    sizes = [len(f.output.data) for f in p.proxy.frames_to_send()]
    assert sum(sizes) == 1000
    assert len(sizes) <= 1000 // 64 + 1


def test_output_before_an_exit_call_arrives_first(pair: CorePair) -> None:
    pair.entry(T)
    pair.proxy.write_output(T, Stream.STDOUT, b"before\n")
    exit_id = pair.proxy.start_call(T, CallKind.EXIT, "h")
    events = pair.to_client()
    assert [type(e) for e in events] == [OutputReceived, CallReceived]
    assert events[0] == OutputReceived(thread=T, stream=Stream.STDOUT, data=b"before\n")
    assert events[1].call_id == exit_id  # type: ignore[union-attr]


def test_output_of_another_thread_precedes_a_result_written_after_it(pair: CorePair) -> None:
    a, b = pair.entry(1), pair.entry(2)
    pair.proxy.write_output(2, Stream.STDOUT, b"from 2")
    pair.proxy.send_result(1, a, "one")
    pair.proxy.send_result(2, b, "two")
    assert pair.to_client() == [
        OutputReceived(thread=2, stream=Stream.STDOUT, data=b"from 2"),
        ResultReceived(thread=1, call_id=a, value="one"),
        ResultReceived(thread=2, call_id=b, value="two"),
    ]


# ------------------------------------------------------------------ one-way


def test_one_way_exit_call(pair: CorePair) -> None:
    call_id = pair.entry(T)
    pair.proxy.write_output(T, Stream.STDOUT, b"a")
    assert pair.proxy.start_call(T, CallKind.EXIT, "log", ("hi",), {"level": 3}, oneway=True) == 0
    pair.proxy.write_output(T, Stream.STDOUT, b"b")
    assert pair.proxy.depth(T) == 1
    pair.proxy.send_result(T, call_id, "ok")
    assert pair.to_client() == [
        OutputReceived(thread=T, stream=Stream.STDOUT, data=b"a"),
        CallReceived(
            thread=T,
            call_id=0,
            kind=CallKind.EXIT,
            name="log",
            args=("hi",),
            kwargs={"level": 3},
            oneway=True,
        ),
        OutputReceived(thread=T, stream=Stream.STDOUT, data=b"b"),
        ResultReceived(thread=T, call_id=call_id, value="ok"),
    ]
    assert pair.client.frames_to_send() == []  # nobody answers a one-way call


def test_only_exit_calls_can_be_one_way(pair: CorePair) -> None:
    with pytest.raises(RuntimeError, match="one-way"):
        pair.client.start_call(T, CallKind.ECALL, "f", oneway=True)
    with pytest.raises(RuntimeError, match="cannot make a EXIT call"):
        pair.client.start_call(T, CallKind.EXIT, "f", oneway=True)
    assert pair.client.frames_to_send() == []


# -------------------------------------------------------------- depth limit


def test_start_call_beyond_the_depth_limit_raises_resource_exhausted() -> None:
    p = CorePair(client_limits=Limits(max_depth=4)).open()
    p.entry(T)
    p.exit(T)
    p.entry(T)
    last_exit = p.exit(T)
    with pytest.raises(EnclaveError) as excinfo:
        p.client.start_call(T, CallKind.ECALL, "deeper")
    assert excinfo.value.code is StatusCode.RESOURCE_EXHAUSTED
    assert not isinstance(excinfo.value, ProtocolError)
    assert p.client.frames_to_send() == []
    assert p.client.depth(T) == 4
    assert p.client.state is State.READY
    # The thread unwinds normally.
    p.client.send_result(T, last_exit, None)
    assert p.to_proxy() == [ResultReceived(thread=T, call_id=last_exit, value=None)]
    assert p.client.depth(T) == p.proxy.depth(T) == 3


def test_proxy_start_call_beyond_the_depth_limit_it_was_told() -> None:
    # The limit comes through Open: the proxy enforces the client's limit on its own calls.
    p = CorePair(client_limits=Limits(max_depth=3)).open()
    p.entry(T)
    p.exit(T)
    p.entry(T)
    with pytest.raises(EnclaveError) as excinfo:
        p.proxy.start_call(T, CallKind.EXIT, "deeper")
    assert excinfo.value.code is StatusCode.RESOURCE_EXHAUSTED
    assert p.proxy.frames_to_send() == []
    assert p.proxy.depth(T) == 3


def test_peer_exceeding_the_depth_limit_gets_an_error_result() -> None:
    p = CorePair(proxy_limits=Limits(max_depth=2)).open()  # the client allows 64
    outer = p.entry(T)
    exit_id = p.exit(T)
    nested = p.client.start_call(T, CallKind.ECALL, "too-deep")
    assert p.to_proxy() == []
    assert p.proxy.state is State.READY
    [event] = p.to_client()
    assert isinstance(event, ResultReceived)
    assert (event.thread, event.call_id) == (T, nested)
    assert event.error is not None
    assert event.error.code is StatusCode.RESOURCE_EXHAUSTED
    assert p.client.depth(T) == p.proxy.depth(T) == 2
    # And the session carries on.
    p.client.send_result(T, exit_id, "x")
    assert p.to_proxy() == [ResultReceived(thread=T, call_id=exit_id, value="x")]
    p.proxy.send_result(T, outer, "y")
    assert p.to_client() == [ResultReceived(thread=T, call_id=outer, value="y")]


def test_proxy_exceeding_the_clients_depth_limit_gets_an_error_result() -> None:
    p = CorePair(client_limits=Limits(max_depth=3)).open()
    p.entry(T)
    exit_id = p.exit(T)
    p.entry(T)
    # A rogue proxy ignores the limit it was told in Open.
    rogue = pb.Frame(
        call=pb.Call(call_id=exit_id + 2, thread=T, kind=5, name="x", args=_values.encode([[], {}]))
    )
    assert p.client.receive([rogue]) == []
    [answer] = p.client.frames_to_send()
    assert answer.result.call_id == exit_id + 2
    assert answer.result.error.code == StatusCode.RESOURCE_EXHAUSTED
    assert p.client.depth(T) == 3
    assert p.client.state is State.READY


# ----------------------------------------------------------------- abandon


def test_abandon_thread_cancels_and_drops_the_late_result(pair: CorePair) -> None:
    call_id = pair.entry(T)
    assert pair.client.abandon_thread(T) == [call_id]
    assert pair.client.is_abandoned(T)
    assert pair.client.depth(T) == 0
    assert pair.to_proxy() == [CancelReceived(thread=T, call_id=call_id)]
    pair.proxy.send_result(T, call_id, "late")
    assert pair.to_client() == []
    assert pair.client.state is State.READY
    assert pair.client.frames_to_send() == []
    assert pair.proxy.depth(T) == 0
    # Other threads are not affected.
    other = pair.entry(T + 1)
    pair.proxy.send_result(T + 1, other, 1)
    assert pair.to_client() == [ResultReceived(thread=T + 1, call_id=other, value=1)]


def test_a_late_result_with_large_values_is_dropped_whole(pair: CorePair) -> None:
    big = b"\x01" * _values.BLOB_THRESHOLD
    call_id = pair.entry(T)
    pair.client.abandon_thread(T)
    pair.to_proxy()
    pair.proxy.send_result(T, call_id, [big, big])
    assert pair.to_client() == []
    other = pair.entry(T + 1)  # its value's blobs are its own, not the dropped ones
    pair.proxy.send_result(T + 1, other, big)
    assert pair.to_client() == [ResultReceived(thread=T + 1, call_id=other, value=big)]


def test_late_exit_calls_of_an_abandoned_thread_are_refused(pair: CorePair) -> None:
    call_id = pair.entry(T)
    pair.client.abandon_thread(T)
    pair.to_proxy()
    exit_id = pair.proxy.start_call(T, CallKind.EXIT, "h")
    assert pair.to_client() == []
    [event] = pair.to_proxy()
    assert isinstance(event, ResultReceived)
    assert (event.thread, event.call_id) == (T, exit_id)
    assert event.error is not None
    assert event.error.code is StatusCode.CANCELLED
    assert event.error.type == "CancelledError"
    # One-way calls of the abandoned worker are dropped: nobody waits on that thread.
    pair.proxy.start_call(T, CallKind.EXIT, "log", oneway=True)
    assert pair.to_client() == []
    pair.proxy.send_result(T, call_id, "late")
    assert pair.to_client() == []
    assert pair.client.state is pair.proxy.state is State.READY


def test_abandon_an_idle_thread_sends_nothing(pair: CorePair) -> None:
    assert pair.client.abandon_thread(T) == []
    assert pair.client.frames_to_send() == []
    assert pair.client.is_abandoned(T)


def test_abandon_nested_calls_cancels_the_outermost(pair: CorePair) -> None:
    outer = pair.entry(T)
    pair.exit(T)
    inner = pair.entry(T)
    assert pair.client.abandon_thread(T) == [outer, inner]
    assert pair.to_proxy() == [CancelReceived(thread=T, call_id=outer)]


def test_abandoned_exit_call_in_progress_is_still_answered(pair: CorePair) -> None:
    pair.entry(T)
    exit_id = pair.exit(T)
    inner = pair.entry(T)
    pair.client.abandon_thread(T)
    pair.to_proxy()  # Cancel
    pair.proxy.send_result(T, inner, "late inner result")
    assert pair.to_client() == []
    # The proxy worker now waits for exit_id; the client must answer it (CANCELLED).
    events = pair.to_proxy()
    assert [(e.call_id, e.error and e.error.code) for e in events] == [  # type: ignore[union-attr]
        (exit_id, StatusCode.CANCELLED)
    ]


def test_abandoned_while_serving_an_exit_call_answers_it_after_the_cancel(
    pair: CorePair,
) -> None:
    """An asyncio task cancelled in its async exit handler: no call of its own is nested
    in the exit call, so no late result would ever unwind it; the core answers it now."""
    outer = pair.entry(T)
    exit_id = pair.exit(T)
    assert pair.client.abandon_thread(T) == [outer]
    events = pair.to_proxy()
    assert events[0] == CancelReceived(thread=T, call_id=outer)
    assert [(e.call_id, e.error and e.error.code) for e in events[1:]] == [  # type: ignore[union-attr]
        (exit_id, StatusCode.CANCELLED)
    ]
    pair.proxy.send_result(T, outer, "late")  # the worker unwinds: dropped, no error
    assert pair.to_client() == []
    assert pair.client.state is pair.proxy.state is State.READY


def test_start_call_on_an_abandoned_thread_is_refused_locally(pair: CorePair) -> None:
    pair.entry(T)
    pair.client.abandon_thread(T)
    pair.to_proxy()
    with pytest.raises(RuntimeError):
        pair.client.start_call(T, CallKind.ECALL, "again")
    assert pair.client.frames_to_send() == []


def test_cancel_of_a_finished_call_is_ignored(pair: CorePair) -> None:
    call_id = pair.entry(T)
    pair.proxy.send_result(T, call_id, 1)
    frames = pair.proxy.frames_to_send()  # the result is on its way...
    pair.client.abandon_thread(T)  # ...when the client gives up
    assert pair.to_proxy() == []
    assert pair.proxy.state is State.READY
    assert pair.client.receive(frames) == []


def test_abandon_thread_is_for_the_client(pair: CorePair) -> None:
    with pytest.raises(RuntimeError, match="client"):
        pair.proxy.abandon_thread(T)


# ------------------------------------------------------- values that can't go


def test_unsupported_argument_raises_type_error_and_sends_nothing(pair: CorePair) -> None:
    with pytest.raises(TypeError, match=r"builtins\.set"):
        pair.client.start_call(T, CallKind.ECALL, "f", ([1, {2}],))
    with pytest.raises(TypeError, match=r"builtins\.object"):
        pair.client.start_call(T, CallKind.ECALL, "f", (), {"k": object()})
    assert pair.client.frames_to_send() == []
    assert pair.client.depth(T) == 0
    assert pair.entry(T) == 1  # no call id was used up


def test_type_error_names_the_argument_as_the_caller_sees_it(pair: CorePair) -> None:
    with pytest.raises(TypeError) as excinfo:
        pair.client.start_call(T, CallKind.ECALL, "f", ([1, {2}],))
    assert "at args[0][1]:" in str(excinfo.value)


def test_unsupported_exit_argument_raises_type_error_and_sends_nothing(pair: CorePair) -> None:
    pair.entry(T)
    with pytest.raises(TypeError):
        pair.proxy.start_call(T, CallKind.EXIT, "h", (object(),))
    assert pair.proxy.frames_to_send() == []
    assert pair.proxy.depth(T) == 1


def test_bad_call_name_leaves_no_phantom_call(pair: CorePair) -> None:
    with pytest.raises((TypeError, ValueError)):
        pair.client.start_call(T, CallKind.ECALL, "caf\udce9")
    assert pair.client.depth(T) == 0


def test_error_message_that_is_not_valid_unicode_still_answers(pair: CorePair) -> None:
    call_id = pair.entry(T)
    error = RemoteError(type="FileNotFoundError", message="no file caf\udce9.txt")
    pair.proxy.send_result(T, call_id, error=error)
    [event] = pair.to_client()
    assert isinstance(event, ResultReceived)
    assert event.error is not None


def test_deeply_nested_result_is_sent_as_an_error(pair: CorePair) -> None:
    call_id = pair.entry(T)
    value: Any = None
    for n in range(2000):
        value = (n, value)
    pair.proxy.send_result(T, call_id, value)
    [event] = pair.to_client()
    assert isinstance(event, ResultReceived)
    assert event.error is not None


def test_call_on_thread_zero_is_refused_locally(pair: CorePair) -> None:
    with pytest.raises((ValueError, RuntimeError)):
        pair.client.start_call(0, CallKind.RUN)
    assert pair.client.frames_to_send() == []


# ------------------------------------------------------------ local misuse


@pytest.mark.parametrize(
    ("role", "action"),
    [
        (Role.CLIENT, lambda c: c.loaded(b"\x00" * 32)),
        (Role.CLIENT, lambda c: c.write_output(1, Stream.STDOUT, b"x")),
        (Role.PROXY, lambda c: c.open(BUNDLE)),
        (Role.PROXY, lambda c: c.abandon_thread(1)),
        (Role.CLIENT, lambda c: c.start_call(1, CallKind.RUN)),  # before the session is ready
    ],
    ids=["client-loaded", "client-write_output", "proxy-open", "proxy-abandon", "not-ready"],
)
def test_local_misuse_raises_runtime_error(
    role: Role, action: Callable[[SessionCore], object]
) -> None:
    core = SessionCore(role)
    with pytest.raises(RuntimeError):
        action(core)
    assert core.frames_to_send() == []
    assert core.error is None


def test_wrong_side_calls_raise_runtime_error(pair: CorePair) -> None:
    with pytest.raises(RuntimeError, match="cannot make a EXIT call"):
        pair.client.start_call(T, CallKind.EXIT)
    with pytest.raises(RuntimeError, match="cannot make a RUN call"):
        pair.proxy.start_call(T, CallKind.RUN)
    with pytest.raises(RuntimeError, match="only while an entry call runs"):
        pair.proxy.start_call(T, CallKind.EXIT)
    pair.client.start_call(T, CallKind.RUN)
    with pytest.raises(RuntimeError, match="already waiting"):
        pair.client.start_call(T, CallKind.RUN)
    with pytest.raises(RuntimeError, match="loaded"):
        pair.proxy.loaded(b"\x00" * 32)
    assert [f.WhichOneof("kind") for f in pair.client.frames_to_send()] == ["call"]
    assert pair.proxy.frames_to_send() == []


# ------------------------------------------------------------------- close


def test_close_is_idempotent(pair: CorePair) -> None:
    pair.client.close()
    pair.client.close()
    assert [f.WhichOneof("kind") for f in pair.client.frames_to_send()] == ["close"]
    pair.client.close()
    assert pair.client.frames_to_send() == []
    assert pair.client.state is State.CLOSED


def test_close_events_and_state(pair: CorePair) -> None:
    error = RemoteError(code=StatusCode.ABORTED, type="Stop", message="bye")
    pair.proxy.close(error)
    assert pair.to_client() == [CloseReceived(error=error)]
    assert pair.client.closed_by_peer == error
    assert pair.client.state is State.CLOSED
    with pytest.raises(EnclaveUnavailableError):
        pair.client.start_call(T, CallKind.RUN)
    with pytest.raises(EnclaveUnavailableError):
        pair.proxy.start_call(T, CallKind.EXIT)
    # Frames after the end are ignored, not errors.
    assert pair.client.receive([pb.Frame()]) == []


def test_plain_close_has_no_error(pair: CorePair) -> None:
    pair.client.close()
    assert pair.to_proxy() == [CloseReceived(error=None)]
    assert pair.proxy.closed_by_peer is None


def test_frames_after_close_in_one_batch_are_ignored(pair: CorePair) -> None:
    pair.client.start_call(T, CallKind.RUN)
    pair.client.close()
    events = pair.to_proxy()
    assert [type(e) for e in events] == [CallReceived, CloseReceived]
    call = pb.Frame(call=pb.Call(call_id=99, thread=1, kind=2, args=_values.encode([[], {}])))
    fresh = CorePair().open()
    fresh.client.close()
    frames = [*fresh.client.frames_to_send(), call, pb.Frame()]
    assert fresh.proxy.receive(frames) == [CloseReceived()]


def test_connection_lost_closes_without_error(pair: CorePair) -> None:
    call_id = pair.entry(T)
    pair.proxy.write_output(T, Stream.STDOUT, b"lost")
    pair.proxy.connection_lost()
    assert pair.proxy.state is State.CLOSED
    assert pair.proxy.error is None
    assert pair.proxy.pending_output == 0
    with pytest.raises(EnclaveUnavailableError):
        pair.proxy.send_result(T, call_id, 1)
    pair.client.connection_lost()
    with pytest.raises(EnclaveUnavailableError):
        pair.client.start_call(T + 1, CallKind.RUN)


# --------------------------------------------------------- protocol errors


def args_bytes(args: Any = (), kwargs: Any = None) -> bytes:
    return _values.encode([list(args), dict(kwargs or {})])


def call_frame(
    call_id: int,
    thread: int = T,
    kind: int = CallKind.ECALL,
    *,
    args: bytes | None = None,
    oneway: bool = False,
) -> pb.Frame:
    return pb.Frame(
        call=pb.Call(
            call_id=call_id,
            thread=thread,
            kind=int(kind),  # type: ignore[arg-type]
            name="f",
            args=args_bytes() if args is None else args,
            oneway=oneway,
        )
    )


def result_frame(call_id: int, value: Any = None) -> pb.Frame:
    return pb.Frame(result=pb.Result(call_id=call_id, value=_values.encode(value)))


def open_frame(
    files: list[tuple[str, int]], *, entry: str = "e.py", name: str = "n", version: int = 1
) -> pb.Frame:
    return pb.Frame(
        open=pb.Open(
            protocol_version=version,
            manifest=pb.Manifest(name=name, entry=entry),
            files=[pb.FileEntry(path=p, size=s) for p, s in files],
        )
    )


def chunk(data: bytes) -> pb.Frame:
    return pb.Frame(bundle=pb.BundleChunk(data=data))


Scenario = Callable[[], tuple[CorePair, SessionCore, list[pb.Frame]]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(fn: Scenario) -> Scenario:
    SCENARIOS[fn.__name__] = fn
    return fn


def ready() -> CorePair:
    return CorePair().open()


@scenario
def empty_frame_to_proxy() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    return p, p.proxy, [pb.Frame()]


@scenario
def empty_frame_to_client() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.client, [pb.Frame()]


@scenario
def bad_frame_after_good_ones() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    p.entry(T)
    out = pb.Frame(output=pb.Output(thread=T, stream=1, data=b"x"))
    return p, p.client, [out, pb.Frame()]


@scenario
def second_open() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    return p, p.proxy, [open_frame([("e.py", 2)]), open_frame([("e.py", 2)])]


@scenario
def open_when_ready() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [open_frame([("e.py", 2)]), chunk(b"ab")]


@scenario
def wrong_protocol_version() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    return p, p.proxy, [open_frame([("e.py", 2)], version=PROTOCOL_VERSION + 1)]


@scenario
def bundle_chunk_before_open() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    return p, p.proxy, [chunk(b"x")]


@scenario
def bundle_bytes_beyond_declared_size() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    return p, p.proxy, [open_frame([("e.py", 4)]), chunk(b"abc"), chunk(b"de")]


@scenario
def bundle_chunk_after_the_bundle() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    return p, p.proxy, [open_frame([("e.py", 2)]), chunk(b"ab"), chunk(b"c")]


@scenario
def dotdot_path_in_file_index() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    return p, p.proxy, [open_frame([("e.py", 1), ("../x", 1)]), chunk(b"ab")]


@scenario
def absolute_path_in_file_index() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    return p, p.proxy, [open_frame([("e.py", 1), ("/abs", 1)]), chunk(b"ab")]


@scenario
def backslash_path_in_file_index() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    return p, p.proxy, [open_frame([("e.py", 1), ("a\\b", 1)]), chunk(b"ab")]


@scenario
def duplicate_path_in_file_index() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    return p, p.proxy, [open_frame([("e.py", 1), ("e.py", 1)]), chunk(b"ab")]


@scenario
def entry_missing_from_file_index() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    return p, p.proxy, [open_frame([("other.py", 1)]), chunk(b"a")]


@scenario
def empty_file_index() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    return p, p.proxy, [open_frame([])]


@scenario
def manifest_entry_outside_the_bundle() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    return p, p.proxy, [open_frame([("e.py", 1)], entry="../e.py")]


@scenario
def manifest_without_name() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    return p, p.proxy, [open_frame([("e.py", 1)], name="")]


@scenario
def too_many_files() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair(proxy_limits=Limits(max_bundle_files=2))
    return p, p.proxy, [open_frame([("e.py", 1), ("a.py", 1), ("b.py", 1)])]


@scenario
def bundle_too_large() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair(proxy_limits=Limits(max_bundle_size=4))
    return p, p.proxy, [open_frame([("e.py", 3), ("a.py", 2)])]


@scenario
def loaded_sent_to_the_proxy() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [pb.Frame(loaded=pb.Loaded(measurement=b"\x00" * 32))]


@scenario
def loaded_with_31_byte_measurement() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    p.client.open(BUNDLE)
    p.to_proxy()
    return p, p.client, [pb.Frame(loaded=pb.Loaded(measurement=b"\x00" * 31))]


@scenario
def loaded_without_outcome() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    p.client.open(BUNDLE)
    p.to_proxy()
    return p, p.client, [pb.Frame(loaded=pb.Loaded())]


@scenario
def loaded_before_open() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    return p, p.client, [pb.Frame(loaded=pb.Loaded(measurement=b"\x00" * 32))]


@scenario
def loaded_twice() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.client, [pb.Frame(loaded=pb.Loaded(measurement=b"\x00" * 32))]


@scenario
def open_sent_to_the_client() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    return p, p.client, [open_frame([("e.py", 1)])]


@scenario
def bundle_chunk_sent_to_the_client() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.client, [chunk(b"x")]


@scenario
def output_sent_to_the_proxy() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [pb.Frame(output=pb.Output(thread=T, stream=1, data=b"x"))]


@scenario
def output_of_unknown_stream() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.client, [pb.Frame(output=pb.Output(thread=T, stream=7, data=b"x"))]


@scenario
def output_before_open() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    return p, p.client, [pb.Frame(output=pb.Output(thread=0, stream=1, data=b"x"))]


@scenario
def cancel_sent_to_the_client() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    p.entry(T)
    return p, p.client, [pb.Frame(cancel=pb.Cancel(call_id=1))]


@scenario
def call_before_the_bundle_is_loaded() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = CorePair()
    p.client.open(BUNDLE)
    p.to_proxy()
    return p, p.proxy, [call_frame(1)]


@scenario
def result_for_a_call_never_made_client() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    p.entry(T)
    return p, p.client, [result_frame(99)]


@scenario
def result_for_a_call_never_made_proxy() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    p.entry(T)
    return p, p.proxy, [result_frame(2)]


@scenario
def result_with_the_peers_parity() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    p.entry(T)
    exit_id = p.exit(T)
    return p, p.client, [result_frame(exit_id)]


@scenario
def result_for_a_call_already_answered() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    call_id = p.entry(T)
    p.proxy.send_result(T, call_id, 1)
    p.to_client()
    return p, p.client, [result_frame(call_id)]


@scenario
def result_out_of_lifo_order() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    outer = p.entry(T)
    p.exit(T)
    p.entry(T)
    return p, p.client, [result_frame(outer)]


@scenario
def result_while_the_client_serves_a_nested_call() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    outer = p.entry(T)
    p.exit(T)
    return p, p.client, [result_frame(outer)]


@scenario
def result_value_that_does_not_decode() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    call_id = p.entry(T)
    return p, p.client, [pb.Frame(result=pb.Result(call_id=call_id, value=b"\xc1"))]


@scenario
def exit_call_on_a_thread_not_waiting() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    p.entry(T)
    return p, p.client, [call_frame(2, T + 1, CallKind.EXIT)]


@scenario
def exit_call_while_the_client_runs_one() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    p.entry(T)
    exit_id = p.exit(T)
    return p, p.client, [call_frame(exit_id + 2, T, CallKind.EXIT)]


@scenario
def entry_call_on_a_thread_running_one() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    call_id = p.entry(T)
    return p, p.proxy, [call_frame(call_id + 2, T)]


@scenario
def entry_call_on_thread_zero() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [call_frame(1, 0)]


@scenario
def args_that_do_not_decode() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [call_frame(1, args=b"\xc1")]


@scenario
def args_that_are_a_dict() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [call_frame(1, args=_values.encode({"a": 1}))]


@scenario
def args_of_one_element() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [call_frame(1, args=_values.encode([[]]))]


@scenario
def args_of_three_elements() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [call_frame(1, args=_values.encode([[], {}, 1]))]


@scenario
def args_tuple_instead_of_list() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [call_frame(1, args=_values.encode([(), {}]))]


@scenario
def kwargs_that_are_a_list() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [call_frame(1, args=_values.encode([[], []]))]


@scenario
def kwargs_with_an_int_key() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [call_frame(1, args=_values.encode([[], {1: 2}]))]


@scenario
def exit_call_args_that_do_not_decode() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    p.entry(T)
    return p, p.client, [call_frame(2, T, CallKind.EXIT, args=b"\x92\x90")]


@scenario
def reused_call_id() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    call_id = p.entry(T)
    p.proxy.send_result(T, call_id, None)
    p.to_client()
    return p, p.proxy, [call_frame(call_id)]


@scenario
def call_id_going_backwards() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [call_frame(5, 1), call_frame(3, 2)]


@scenario
def even_call_id_from_the_client() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [call_frame(2)]


@scenario
def zero_call_id_for_a_call_expecting_a_result() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [call_frame(0)]


@scenario
def odd_call_id_from_the_proxy() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    p.entry(T)
    return p, p.client, [call_frame(3, T, CallKind.EXIT)]


@scenario
def entry_kind_call_sent_to_the_client() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    p.entry(T)
    return p, p.client, [call_frame(2, T, CallKind.RUN)]


@scenario
def exit_kind_call_sent_to_the_proxy() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [call_frame(1, T, CallKind.EXIT)]


@scenario
def call_of_kind_zero() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [call_frame(1, T, 0)]


@scenario
def call_of_unknown_kind() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [call_frame(1, T, 99)]


@scenario
def one_way_call_with_a_call_id() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    p.entry(T)
    return p, p.client, [call_frame(2, T, CallKind.EXIT, oneway=True)]


@scenario
def one_way_entry_call() -> tuple[CorePair, SessionCore, list[pb.Frame]]:
    p = ready()
    return p, p.proxy, [call_frame(0, T, CallKind.ECALL, oneway=True)]


@pytest.mark.parametrize("make", list(SCENARIOS.values()), ids=list(SCENARIOS))
def test_protocol_violation_breaks_the_session_for_good(make: Scenario) -> None:
    p, core, frames = make()
    peer = p.proxy if core is p.client else p.client
    core.frames_to_send()  # whatever was queued before the bad frames

    with pytest.raises(ProtocolError) as excinfo:
        core.receive(frames)
    error = excinfo.value
    assert error.code is StatusCode.INTERNAL
    assert core.state is State.ERROR
    assert core.error is error

    # The peer is told why, with a Close carrying the error.
    [close] = core.frames_to_send()
    assert close.WhichOneof("kind") == "close"
    assert close.close.HasField("error")
    assert close.close.error.type == "ProtocolError"
    assert close.close.error.code == StatusCode.INTERNAL
    assert close.close.error.message == str(error)
    assert peer.receive(wire([close])) == [
        CloseReceived(
            error=RemoteError(code=StatusCode.INTERNAL, type="ProtocolError", message=str(error))
        )
    ]
    assert peer.state is State.CLOSED

    # Sticky: every later use raises the same error, and nothing more is sent.
    kind = CallKind.ECALL if core.role is Role.CLIENT else CallKind.EXIT
    for later in (
        lambda: core.receive([]),
        lambda: core.receive([pb.Frame(close=pb.Close())]),
        lambda: core.start_call(T, kind, "again"),
    ):
        with pytest.raises(ProtocolError) as again:
            later()
        assert again.value is error
    core.close()
    assert core.state is State.ERROR
    assert core.frames_to_send() == []


def test_there_are_many_violation_scenarios() -> None:
    # A guard against the table silently shrinking.
    assert len(SCENARIOS) >= 50


# ------------------------------------------------------------------ events


class CustomError(Exception):
    pass


def test_remote_error_from_a_builtin_exception() -> None:
    assert RemoteError.from_exception(ValueError("bad")) == RemoteError(
        code=StatusCode.UNKNOWN, type="ValueError", message="bad", traceback=""
    )


def test_remote_error_from_a_user_exception_is_qualified() -> None:
    error = RemoteError.from_exception(CustomError("x"))
    assert error.type == f"{CustomError.__module__}.CustomError"


def test_remote_error_from_an_enclave_error_keeps_its_code() -> None:
    error = RemoteError.from_exception(EnclaveError("gone", code=StatusCode.NOT_FOUND))
    assert (error.code, error.type, error.message) == (
        StatusCode.NOT_FOUND,
        "farside.EnclaveError",
        "gone",
    )


def test_remote_error_from_a_call_error_passes_the_remote_type_through() -> None:
    exc = HostCallError("boom", remote_type="ValueError", code=StatusCode.ABORTED)
    error = RemoteError.from_exception(exc)
    assert (error.type, error.code) == ("ValueError", StatusCode.ABORTED)


def test_remote_error_from_a_call_error_keeps_the_plain_message() -> None:
    exc = HostCallError(
        "boom", remote_type="ValueError", remote_traceback="Traceback ...\nValueError: boom\n"
    )
    assert RemoteError.from_exception(exc).message == "boom"


def test_remote_error_traceback_only_when_debug() -> None:
    try:
        raise CustomError("deep")
    except CustomError as exc:
        caught = exc
    assert RemoteError.from_exception(caught).traceback == ""
    traceback = RemoteError.from_exception(caught, debug=True).traceback
    assert "Traceback (most recent call last)" in traceback
    assert 'raise CustomError("deep")' in traceback


def test_events_are_frozen() -> None:
    event = ResultReceived(thread=1, call_id=1, value=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.value = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "build",
    [
        lambda: ResultReceived(thread=1, call_id=1, value=1, error=RemoteError()),
        lambda: CallReceived(thread=1, call_id=3, kind=CallKind.EXIT, name="n", oneway=True),
        lambda: OutputReceived(thread=1, stream=3, data=b""),  # type: ignore[arg-type]
    ],
    ids=["value-and-error", "oneway-with-id", "bad-stream"],
)
def test_events_validate_themselves(build: Callable[[], object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        build()


# -------------------------------------------------------------- disposal


def test_a_disposed_thread_reaches_the_proxy(pair: CorePair) -> None:
    call_id = pair.entry(T)
    pair.proxy.send_result(T, call_id, None)
    pair.to_client()
    pair.client.dispose_thread(T)
    assert pair.to_proxy() == [DisposeReceived(thread=T)]


def test_a_thread_with_calls_in_flight_is_not_disposed(pair: CorePair) -> None:
    pair.entry(T)
    pair.client.dispose_thread(T)
    assert pair.client.frames_to_send() == []


def test_disposing_of_thread_zero_is_a_protocol_error(pair: CorePair) -> None:
    with pytest.raises(ProtocolError, match="thread 0"):
        pair.proxy.receive([pb.Frame(dispose=pb.Dispose(thread=0))])


def test_only_the_proxy_receives_dispose(pair: CorePair) -> None:
    with pytest.raises(ProtocolError, match="dispose frame, which a client never receives"):
        pair.client.receive([pb.Frame(dispose=pb.Dispose(thread=T))])


@pytest.mark.parametrize(("call_id", "oneway", "trace"), [(3, False, b""), (0, True, b"t" * 2000)])
def test_call_frames_built_in_place_are_the_constructors_bytes(
    call_id: int, oneway: bool, trace: bytes
) -> None:
    from farside.protocol._core import MAX_TRACE, _call_frame

    built = _call_frame(call_id, 1, CallKind.EXIT, "é", b"\x92\x90\x80", oneway, trace)
    expected = pb.Frame(
        call=pb.Call(
            call_id=call_id,
            thread=1,
            kind=int(CallKind.EXIT),  # type: ignore[arg-type]
            name="é",
            args=b"\x92\x90\x80",
            oneway=oneway,
            trace=trace[:MAX_TRACE],
        )
    )
    assert built.SerializeToString() == expected.SerializeToString()
