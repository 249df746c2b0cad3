"""Large values out of band: bytes-like values of 64 KiB or more bypass msgpack.

The codec leaves a placeholder and hands the bytes over by reference; the session
sends them in Blob frames, which the stream transport follows with raw chunks
received into one buffer allocated from the declared size, and which gRPC and the
memory pipe carry inline. Hostile framing (a raw chunk nobody announced, a wrong
length, missing bytes, oversized announcements) ends the connection with a clear
error; every waiter hears it, nobody hangs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from farside import _values
from farside._errors import EnclaveUnavailableError, ProtocolError
from farside._proto.v1 import session_pb2 as pb
from farside.protocol import CallKind, CallReceived, Role, SessionCore
from farside.transport.framing import LENGTH, RAW, FrameReader, encode_frames

from .test_endpoint import WAIT, Session
from .test_leader_follower import StreamSession

BIG = bytes(range(256)) * (3 * 4096 + 1)  # 3 MiB and a bit: several raw chunks' worth


def values() -> list[Any]:
    return [
        BIG,
        bytearray(BIG[:100_000]),
        memoryview(BIG)[7 : 7 + 2**17],
        [b"small", {"big": BIG[:70_000], "n": 1}, (BIG[:65_536], "t")],
    ]


def as_received(value: Any) -> Any:
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, list):
        return [as_received(v) for v in value]
    if isinstance(value, tuple):
        return tuple(as_received(v) for v in value)
    if isinstance(value, dict):
        return {k: as_received(v) for k, v in value.items()}
    return value


@pytest.fixture
def msgpack_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of everything msgpack packs or unpacks from here on."""
    sizes: list[int] = []
    packb, unpackb = msgpack.packb, msgpack.unpackb

    def counting_packb(value: Any, **kwargs: Any) -> bytes:
        data: bytes = packb(value, **kwargs)
        sizes.append(len(data))
        return data

    def counting_unpackb(data: bytes, **kwargs: Any) -> Any:
        sizes.append(len(data))
        return unpackb(data, **kwargs)

    monkeypatch.setattr(_values.msgpack, "packb", counting_packb)
    monkeypatch.setattr(_values.msgpack, "unpackb", counting_unpackb)
    return sizes


# ------------------------------------------------------------------ the codec


def test_the_codec_hands_large_bytes_over_by_reference() -> None:
    blobs: list[bytes | memoryview] = []
    data = _values.encode([BIG, b"x" * 100, {"k": BIG}], blobs=blobs)
    assert len(data) < 100 + 64
    assert [b is BIG for b in blobs] == [True, True]  # not copied
    assert _values.decode(data, blobs=[bytes(b) for b in blobs]) == [BIG, b"x" * 100, {"k": BIG}]
    # Without a list for them, the same value goes inline (and decodes the same).
    assert _values.decode(_values.encode([BIG])) == [BIG]


@pytest.mark.parametrize(
    ("blobs", "why"),
    [
        (None, "unknown msgpack extension type 3"),
        ([b"a"], "a blob reference to #1 of 1"),
        ([b"a", b"b", b"c"], "1 of 3 blobs were sent but not referenced"),
    ],
)
def test_hostile_blob_references_are_refused(blobs: list[bytes] | None, why: str) -> None:
    data = _values.encode([BIG, BIG[:70_000]], blobs=[])
    with pytest.raises(ValueError, match=why):
        _values.decode(data, blobs=blobs)
    twice = msgpack.packb([msgpack.ExtType(3, b"\0\0\0\0")] * 2)
    with pytest.raises(ValueError, match="or one made twice"):
        _values.decode(twice, blobs=[b"a"])


# ------------------------------------------------------------------ sessions


@pytest.fixture
def stream_session(tmp_path: Path) -> Iterator[StreamSession]:
    s = StreamSession(tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.mark.parametrize("value", values(), ids=["bytes", "bytearray", "memoryview", "nested"])
def test_large_values_cross_the_stream_exactly_without_msgpack(
    stream_session: StreamSession, msgpack_sizes: list[int], value: Any
) -> None:
    s = stream_session
    seen: list[Any] = []

    def echo(event: CallReceived) -> Any:
        seen.append(event.args[0])
        return event.args[0]

    s.ph.entries["echo"] = echo
    assert s.call(1, "echo", value) == as_received(value)
    assert seen == [as_received(value)]
    assert msgpack_sizes, "msgpack was not used at all"
    assert max(msgpack_sizes) < _values.BLOB_THRESHOLD  # the big bytes never went through it


def test_large_values_cross_inline_too(msgpack_sizes: list[int]) -> None:
    """The memory pipe, like gRPC, carries blobs inside their frames."""
    s = Session()
    try:
        s.ph.entries["echo"] = lambda e: e.args[0]
        s.ch.exits["back"] = lambda e: e.args[0]
        s.ph.entries["nested"] = lambda e: s.proxy.call(e.thread, CallKind.EXIT, "back", e.args)
        for value in values():
            assert s.call(1, "echo", value) == as_received(value)
            assert s.call(1, "nested", value) == as_received(value)
        assert max(msgpack_sizes) < _values.BLOB_THRESHOLD
    finally:
        s.close()


def test_concurrent_large_and_small_values_stay_exact(stream_session: StreamSession) -> None:
    s = stream_session
    s.ph.entries["echo"] = lambda e: e.args[0]
    failures: list[BaseException] = []

    def run(tag: int) -> None:
        try:
            for k in range(4):
                value = BIG[tag * 1000 + k :] if k % 2 else f"{tag}-{k}"
                assert s.call(tag, "echo", value) == value
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(tag,)) for tag in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert not failures


# ------------------------------------------------------------------ hostile framing


def announce(*sizes: int) -> bytes:
    frames = [pb.Frame(blob=pb.Blob(size=size)) for size in sizes]
    body = pb.Batch(frames=frames).SerializeToString()
    return LENGTH.pack(len(body)) + body


def raw(data: bytes) -> bytes:
    return LENGTH.pack(RAW | len(data)) + data


@pytest.mark.parametrize(
    ("stream", "why"),
    [
        (raw(b"abc"), "raw bytes no blob announced"),
        (announce(4) + raw(b"abcdef"), "a 6-byte raw chunk where its blob needs 4 more"),
        (announce(4) + raw(b"ab") + announce(1), "a batch before the bytes of its blobs"),
        (announce(2**40), "blobs of 1099511627776 bytes"),  # refused before allocating
        (announce(2**20, 2**20), "beyond the limit of 1048576"),
        (announce(0), "empty"),
        (LENGTH.pack(RAW | 2**30), "message"),
    ],
    ids=["unannounced", "too-long", "missing", "huge", "two-over-limit", "empty", "giant-chunk"],
)
def test_hostile_framing_is_a_clear_connection_error(stream: bytes, why: str) -> None:
    reader = FrameReader(max_blob_bytes=2**20)
    reader.feed(stream)
    with pytest.raises(ConnectionError, match=why):
        reader.take()


def test_blob_bytes_are_reassembled_from_any_cut() -> None:
    frames = [pb.Frame(blob=pb.Blob(size=len(BIG))), pb.Frame(result=pb.Result(call_id=1))]
    stream = b"".join(bytes(part) for part in encode_frames(frames, [BIG]))
    reader = FrameReader()
    got_frames: list[pb.Frame] = []
    got_blobs: list[bytearray] = []
    for start in range(0, len(stream), 99_991):  # odd cuts through headers and chunks
        reader.feed(stream[start : start + 99_991])
        more_frames, more_blobs = reader.take()
        got_frames += more_frames
        got_blobs += more_blobs
    assert [f.WhichOneof("kind") for f in got_frames] == ["blob", "result"]
    assert got_blobs == [bytearray(BIG)]


def test_a_hostile_raw_chunk_fails_every_waiter_promptly(stream_session: StreamSession) -> None:
    s = stream_session
    s.ph.entries["block"] = lambda e: s.release.wait(WAIT)
    waiters = [threading.Thread(target=lambda t=t: results.append(call(t))) for t in (1, 2)]
    results: list[Any] = []

    def call(tag: int) -> Any:
        try:
            return s.call(tag, "block", timeout=None)
        except EnclaveUnavailableError as exc:
            return exc

    for waiter in waiters:
        waiter.start()
    while len(s.ph.calls) < 2:
        threading.Event().wait(0.005)
    assert s.connection is not None
    s.connection._queue([raw(b"no blob announced this")])  # as a hostile proxy would
    for waiter in waiters:
        waiter.join(WAIT)
    assert len(results) == 2
    for result in results:
        assert isinstance(result, EnclaveUnavailableError)
        assert "raw bytes no blob announced" in str(result)


def test_blob_frames_the_core_refuses() -> None:
    core = SessionCore(Role.PROXY)
    core.state = core.state.READY  # as after a load; only blobs matter here
    with pytest.raises(ProtocolError, match="without its bytes"):
        core.receive([pb.Frame(blob=pb.Blob(size=5))])
    core = SessionCore(Role.PROXY)
    core.state = core.state.READY
    with pytest.raises(ProtocolError, match="of 3 bytes declared as 5"):
        core.receive([pb.Frame(blob=pb.Blob(size=5))], [b"abc"])
    core = SessionCore(Role.PROXY)
    core.state = core.state.READY
    with pytest.raises(ProtocolError, match="larger than the limit"):
        core.receive([pb.Frame(blob=pb.Blob(size=2**40))])
    core = SessionCore(Role.PROXY)
    core.state = core.state.READY
    with pytest.raises(ProtocolError, match="more of a blob it never started"):
        core.receive([pb.Frame(blob=pb.Blob(data=b"x"))])


def test_blobs_are_received_into_fresh_buffers() -> None:
    """Large ones straight into a bytes object (no copy after), small ones never into a
    shared one (a hostile one-byte blob cannot change the interpreter's b"\\x00")."""
    reader = FrameReader()
    reader.feed(announce(1, 2**16) + raw(b"z") + raw(b"y" * 2**16))
    frames, blobs = reader.take()
    assert len(frames) == 2
    assert blobs == [b"z", b"y" * 2**16]
    assert type(blobs[0]) is bytearray
    assert type(blobs[1]) is bytes
    assert bytes(1) == b"\x00"
    assert bytes(2**16) == b"\x00" * 2**16


@pytest.mark.parametrize("size", [0, 1, 120, 127, 128, 200, 16_383, 16_384, 2**21 + 5])
def test_one_frame_messages_are_the_batch_bytes(size: int) -> None:
    """The one-frame shortcut writes exactly what serializing a Batch writes, and the
    reader reads it back, alone or with more."""
    frame = pb.Frame(output=pb.Output(thread=3, data=b"o" * size))
    body = pb.Batch(frames=[frame]).SerializeToString()
    [message] = encode_frames([frame])
    assert message == LENGTH.pack(len(body)) + body
    reader = FrameReader()
    reader.feed(bytes(message))
    frames, blobs = reader.take()
    assert frames == [frame]
    assert blobs == []
    assert not reader.buffer
    reader.feed(bytes(message) * 2 + bytes(message)[:3])  # the general path: two and a bit
    frames, blobs = reader.take()
    assert frames == [frame, frame]
    assert blobs == []
    assert len(reader.buffer) == 3
