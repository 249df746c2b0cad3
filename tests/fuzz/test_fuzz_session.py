"""Fuzzing the session: frames into the sans-IO core, the value codec, the endpoint, a proxy.

What must hold for any input a peer can send:

* ``SessionCore.receive`` returns events, or raises ``ProtocolError`` and is then broken for
  good (state ``ERROR``, a ``Close`` carrying the error queued for the peer, the same error
  raised again by every later use). No other exception, whatever the frames and the state.
* ``_values.decode`` returns farside values (re-encodable, stable) or raises ``ValueError``.
* ``Endpoint.feed`` never raises; after a ``ProtocolError`` every waiter fails with it.
* A real proxy answers a malformed batch with that ``Close``, ends the stream and exits 0,
  without waiting for the client to hang up; the provisioner that started it keeps working.

tests/unit/test_core.py has the hand-made violations and tests/unit/test_values.py the
codec's own properties (random bytes, one corrupted byte); this module generates input
from the wire's structure instead: every oneof kind and field of ``Frame``, mutations of a
real session's transcript, and msgpack documents built from msgpack's grammar.

The default run takes about 25 s. For a long one, scale the example counts (the proxy
tests keep theirs: each example starts a proxy) and lift the per-test timeout:

    FARSIDE_FUZZ_SCALE=50 python -m pytest tests/fuzz --timeout=0

scripts/fuzz_atheris.py fuzzes the same targets with coverage guidance.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import msgpack
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

import farside
from farside import _values
from farside._errors import (
    EnclaveCallError,
    EnclaveError,
    EnclaveUnavailableError,
    ProtocolError,
    StatusCode,
)
from farside._proto.v1 import attestation_pb2 as att_pb, session_pb2 as pb
from farside.attestation import Bundle, Manifest, load_bundle
from farside.protocol import (
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
from farside.transport import Endpoint
from farside.transport.base import inline_blobs
from farside.transport.grpc import TOKEN_METADATA_KEY, GrpcClientTransport, channel_options

BUNDLE = Bundle(
    manifest=Manifest(name="fuzz", entry="e.py"),
    files={"e.py": b"x = 1\n", "lib/u.py": b"y = 2\n"},
)
MEASUREMENT = BUNDLE.measurement()
QUICKSTART = Path(farside.__file__).resolve().parent / "examples" / "quickstart" / "demo_enclave.py"
WAIT = 5.0  # bound for anything that takes milliseconds when it works


SCALE = float(os.environ.get("FARSIDE_FUZZ_SCALE", "1"))
"""Multiplies the in-process tests' example counts: FARSIDE_FUZZ_SCALE=50 for a long run."""


def fuzz(examples: int) -> settings:
    """Hypothesis settings for the in-process tests (each example takes milliseconds)."""
    return settings(deadline=None, max_examples=max(1, int(examples * SCALE)))


PROXY_EXAMPLES = settings(
    deadline=None,
    max_examples=3,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def wire(frames: list[pb.Frame]) -> list[pb.Frame]:
    """The frames as the peer parses them from one serialized Batch."""
    return list(pb.Batch.FromString(pb.Batch(frames=frames).SerializeToString()).frames)


def clone(frame: pb.Frame) -> pb.Frame:
    copy = pb.Frame()
    copy.CopyFrom(frame)
    return copy


# ================================================================== msgpack documents

# Built from msgpack's grammar, with declared lengths that may lie, extension codes of every
# value, truncation and trailing bytes, so decode meets the shapes random bytes rarely hit.


def _head(
    n: int, fix: int | None, fix_max: int, codes: tuple[int, int, int] | tuple[int, int]
) -> bytes:
    if fix is not None and n <= fix_max:
        return bytes([fix | n])
    for code, width in zip(codes, (1, 2, 4)[-len(codes) :], strict=True):
        if n < 2 ** (8 * width):
            return bytes([code]) + n.to_bytes(width, "big")
    return bytes([codes[-1]]) + (2**32 - 1).to_bytes(4, "big")


def mp_array(items: list[bytes], declared: int | None = None) -> bytes:
    n = len(items) if declared is None else declared
    return _head(n, 0x90, 15, (0xDC, 0xDD)) + b"".join(items)


def mp_map(pairs: list[tuple[bytes, bytes]], declared: int | None = None) -> bytes:
    n = len(pairs) if declared is None else declared
    return _head(n, 0x80, 15, (0xDE, 0xDF)) + b"".join(k + v for k, v in pairs)


def mp_str(raw: bytes) -> bytes:
    return _head(len(raw), 0xA0, 31, (0xD9, 0xDA, 0xDB)) + raw


def mp_bin(raw: bytes) -> bytes:
    return _head(len(raw), None, 0, (0xC4, 0xC5, 0xC6)) + raw


def mp_ext(code: int, payload: bytes) -> bytes:
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    n = len(payload)
    if n in fixed:
        return bytes([fixed[n], code & 0xFF]) + payload
    return _head(n, None, 0, (0xC7, 0xC8, 0xC9)) + bytes([code & 0xFF]) + payload


TIMESTAMP = -1  # msgpack's own timestamp extension: see test_decode_refuses_the_timestamp_...

text = st.text(st.characters(codec="utf-8"), max_size=16)
declared = st.one_of(st.none(), st.integers(0, 20), st.integers(0, 2**32 - 1))
ext_codes = st.one_of(
    st.sampled_from([1, 2]), st.integers(-128, 127).filter(lambda c: c != TIMESTAMP)
)
mp_scalars = st.one_of(
    st.sampled_from([b"\xc0", b"\xc2", b"\xc3", b"\xc1"]),  # nil, false, true, never used
    st.integers(-(2**63), 2**64 - 1).map(msgpack.packb),
    st.floats().map(msgpack.packb),
    st.binary(min_size=4, max_size=4).map(lambda b: b"\xca" + b),  # float32
    st.binary(max_size=8).map(mp_str),  # maybe not UTF-8
    text.map(lambda s: mp_str(s.encode())),
    st.binary(max_size=8).map(mp_bin),
    st.tuples(ext_codes, st.binary(max_size=17)).map(lambda t: mp_ext(*t)),
    st.binary(max_size=6),  # raw bytes in place of a value
)


def _extend(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.tuples(st.lists(children, max_size=4), declared).map(lambda t: mp_array(*t)),
        st.tuples(st.lists(st.tuples(children, children), max_size=3), declared).map(
            lambda t: mp_map(*t)
        ),
        st.lists(children, max_size=4).map(lambda items: mp_ext(1, mp_array(items))),  # tuple
        children.map(lambda c: mp_ext(1, c)),  # a tuple extension around anything
        children.map(lambda c: mp_ext(2, c)),  # a big integer of any bytes
        st.tuples(children, st.integers(0, 40)).map(lambda t: t[0][: t[1]]),  # truncated
    )


msgpack_documents = st.recursive(mp_scalars, _extend, max_leaves=12)
msgpack_input = st.one_of(
    msgpack_documents,
    st.tuples(msgpack_documents, msgpack_documents).map(lambda t: t[0] + t[1]),  # extra data
)


@st.composite
def deep_documents(draw: st.DrawFn) -> bytes:
    """Nesting near and past the limits: runs of arrays and maps inside tuple extensions."""
    data = draw(mp_scalars)
    for _ in range(draw(st.integers(0, 36))):  # tuple levels (the limit is 32)
        kind = draw(st.sampled_from(["arrays", "maps", "tuple"]))
        if kind == "arrays":
            data = b"\x91" * draw(st.integers(1, 1100)) + data  # msgpack stops near 1,024
        elif kind == "maps":
            data = b"\x81\xa1k" * draw(st.integers(1, 300)) + data
        else:
            data = mp_ext(1, b"\x91" + data)
    return data


# ================================================================== farside values

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**130), max_value=2**130)
    | st.floats()
    | text
    | st.binary(max_size=16)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(text | st.integers(-(2**63), 2**64 - 1), children, max_size=4)
    ),
    max_leaves=12,
)
ALLOWED_TYPES = (type(None), bool, int, float, str, bytes, list, tuple, dict)


def check_farside_value(value: Any) -> int:
    """Assert that ``value`` is made of farside's types only; return its nesting depth."""
    depth, stack = 0, [(value, 1)]
    while stack:  # iterative: decoded values may nest tens of thousands of levels
        item, level = stack.pop()
        depth = max(depth, level)
        kind = type(item)
        assert kind in ALLOWED_TYPES, f"decode produced a {kind.__module__}.{kind.__qualname__}"
        if kind in (list, tuple):
            stack.extend((x, level + 1) for x in item)
        elif kind is dict:
            for key, x in item.items():
                assert type(key) in (str, int), f"decode produced a {type(key).__name__} key"
                stack.append((x, level + 1))
    return depth


def same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down; NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def tuple_depth_is_reset() -> bool:
    return getattr(_values._nesting, "depth", 0) == 0


def check_decode(data: bytes) -> Any:
    """decode(data) is a ValueError or a stable farside value; return it (or the error)."""
    try:
        value = _values.decode(data)
    except ValueError as exc:
        error: ValueError | None = exc
    else:
        error = None
    assert tuple_depth_is_reset()  # the tuple nesting count is back to 0 either way
    if error is not None:
        assert str(error).startswith("invalid value encoding"), error
        return error
    depth = check_farside_value(value)
    if depth <= _values.MAX_DEPTH:  # deeper values decode but cannot be sent back
        again = _values.decode(_values.encode(value))
        assert same(again, value), (again, value)
    return value


# ================================================================== the codec


@fuzz(400)
@given(msgpack_input)
def test_decode_of_msgpack_documents_is_a_value_or_a_value_error(data: bytes) -> None:
    check_decode(data)


DEEP_HOLDING_FF = [
    b"\x91" * 400 + b"\xff",  # -1 (0xff) inside 400 arrays: a valid value
    b"\x91" * 400 + b"\xd6\xff" + bytes(4),  # a timestamp 400 arrays deep: invalid
    mp_ext(1, b"\x91" * 301 + mp_ext(1, b"\x91" * 301 + b"\xff")),  # 604 levels, -1
]


@settings(fuzz(150))
@example(mp_ext(1, b"\x91" * 1000 + mp_ext(1, b"\x91" * 1000 + b"\xff")))
@given(deep_documents())
def test_decode_of_deep_nesting_is_a_value_or_a_value_error(data: bytes) -> None:
    check_decode(data)


@pytest.mark.parametrize("data", DEEP_HOLDING_FF, ids=["minus-one", "timestamp", "tuples"])
def test_decode_of_deep_values_holding_0xff_raises_only_value_error(data: bytes) -> None:
    check_decode(data)


def test_call_arguments_nested_deep_around_0xff_are_received() -> None:
    proxy = setup_proxy_ready()
    args = b"\x92\x91" + DEEP_HOLDING_FF[0] + b"\x80"  # [[deep], {}]
    frame = pb.Frame(call=pb.Call(call_id=1, thread=7, kind=CallKind.ECALL, name="f", args=args))
    [event] = receive_checked(proxy, wire([frame]))
    assert isinstance(event, CallReceived)


@fuzz(200)
@given(values, st.data())
def test_decode_of_spliced_encodings_is_a_value_or_a_value_error(
    value: Any, data: st.DataObject
) -> None:
    # test_values corrupts one byte; here whole msgpack documents are spliced into valid ones.
    encoded = _values.encode(value)
    at = data.draw(st.integers(0, len(encoded)))
    cut = data.draw(st.integers(at, len(encoded)))
    check_decode(encoded[:at] + data.draw(msgpack_documents) + encoded[cut:])


TIMESTAMPS = [
    b"\xd6\xff" + (1).to_bytes(4, "big"),  # timestamp 32
    b"\xd7\xff" + (5 << 34 | 7).to_bytes(8, "big"),  # timestamp 64
    b"\xc7\x0c\xff" + (9).to_bytes(4, "big") + (-3).to_bytes(8, "big", signed=True),  # 96
    msgpack.packb([1, {"when": msgpack.Timestamp(0, 1)}]),  # inside containers
]


@pytest.mark.parametrize("data", TIMESTAMPS, ids=["ts32", "ts64", "ts96", "nested"])
def test_decode_refuses_the_timestamp_extension(data: bytes) -> None:
    with pytest.raises(ValueError, match="invalid value encoding"):
        _values.decode(data)


def test_call_arguments_holding_a_timestamp_are_a_protocol_error() -> None:
    proxy = setup_proxy_ready()
    args = msgpack.packb([[msgpack.Timestamp(1, 0)], {}])
    frame = pb.Frame(call=pb.Call(call_id=1, thread=7, kind=CallKind.ECALL, name="f", args=args))
    with pytest.raises(ProtocolError):
        proxy.receive(wire([frame]))


HEAVY_DECODE = """
import sys, threading, msgpack
from farside import _values

def ext(code, payload):
    return b"\\xc9" + len(payload).to_bytes(4, "big") + bytes([code & 0xFF]) + payload

def tuples(levels, arrays):
    data = msgpack.packb(None)
    for _ in range(levels):
        data = ext(1, b"\\x91" * arrays + b"\\x91" + data)
    return data

CASES = {
    "32 tuple levels of 1000 arrays": tuples(32, 1000),
    "33 tuple levels": tuples(33, 0),
    "5000 tuple levels": tuples(5000, 0),
    "1100 arrays": b"\\x91" * 1100 + b"\\xc0",
    "array32 declaring 2**32-1 items": b"\\xdd\\xff\\xff\\xff\\xff",
    "map32 declaring 2**32-1 pairs": b"\\xdf\\xff\\xff\\xff\\xff",
    "str32 declaring 4 GiB": b"\\xdb\\xff\\xff\\xff\\xff" + b"a" * 100,
    "bin32 declaring 4 GiB": b"\\xc6\\xff\\xff\\xff\\xff",
    "ext32 declaring 4 GiB": b"\\xc9\\xff\\xff\\xff\\xff\\x01",
    "1 MiB big integer": ext(2, b"\\x7f" * 2**20),
    "50k-entry map": b"\\xdf" + (50_000).to_bytes(4, "big")
    + b"".join(msgpack.packb(i) + b"\\xc0" for i in range(50_000)),
    "200k tuples in an array": b"\\xdd" + (200_000).to_bytes(4, "big")
    + b"\\xd4\\x01\\x90" * 200_000,
}

def run(results):
    for name, data in CASES.items():
        try:
            value = _values.decode(data)
        except ValueError:
            results.append(f"{name}: ValueError")
        else:  # sending it back is test_encode_refuses_lists_nested_in_tuples_...
            results.append(f"{name}: decoded")
            del value

# On the main thread, then on a thread like the proxy's gRPC reader (default stack size).
for target in ("main", "thread"):
    results = []
    if target == "main":
        run(results)
    else:
        worker = threading.Thread(target=run, args=(results,))
        worker.start()
        worker.join()
    assert len(results) == len(CASES), results
    print(target, *results, sep="\\n  ")
print("all decoded or refused")
"""


def test_heaviest_decodes_do_not_crash_the_interpreter() -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(HEAVY_DECODE)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-3000:]}"
    assert "all decoded or refused" in result.stdout
    assert "32 tuple levels of 1000 arrays: decoded" in result.stdout
    for refused in ("33 tuple levels", "5000 tuple levels", "1100 arrays", "declaring"):
        lines = [line for line in result.stdout.splitlines() if refused in line]
        assert lines, refused
        assert all(line.endswith("ValueError") for line in lines), lines


DEEP_IN_TUPLES = """
import sys
import msgpack
from farside import _values

if sys.argv[1] == "local":  # a value the caller made
    value = None
    for _ in range(20):
        for _ in range(1000):
            value = [value]
        value = (value,)
else:  # a value a peer sent: every tuple holds fewer than msgpack's 1,024 levels
    data = msgpack.packb(None)
    for _ in range(20):
        data = b"\\xc9" + (1001 + len(data)).to_bytes(4, "big") + b"\\x01" + b"\\x91" * 1001 + data
    value = _values.decode(data)
try:
    _values.encode(value)
except TypeError as exc:
    print("refused:", str(exc)[:60])
"""


@pytest.mark.parametrize("origin", ["local", "from-peer"])
def test_encode_refuses_lists_nested_in_tuples_without_crashing(origin: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DEEP_IN_TUPLES), origin],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, f"the interpreter died with {result.returncode}"
    assert "refused: cannot send containers nested deeper than 256" in result.stdout


# ================================================================== frames

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
ids = st.one_of(st.integers(0, 12), u64)
threads = st.one_of(st.sampled_from([0, 7, 8, 9, 10]), u64)
kinds = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 6]), i32)  # incl. unknown enum numbers
streams = st.one_of(st.sampled_from([0, 1, 2, 3]), i32)
names = st.one_of(
    st.sampled_from(["", "f", "h", "nest", "e.py", "lib/u.py", "../x", "/abs", "a\\b", "a//b"]),
    st.just("x" * 300),
    text,
)
blobs = st.binary(max_size=40)
well_formed_args = st.tuples(
    st.lists(values, max_size=3), st.dictionaries(text, values, max_size=3)
).map(lambda a: _values.encode([a[0], a[1]]))
payloads = st.one_of(well_formed_args, values.map(_values.encode), msgpack_documents, blobs)

errors = st.builds(
    pb.Error, code=st.one_of(st.integers(0, 17), i32), type=text, message=text, traceback=text
)
manifests = st.builds(
    pb.Manifest,
    name=names,
    entry=names,
    product_id=u32,
    security_version=u32,
    debug=st.booleans(),
)
file_entries = st.builds(pb.FileEntry, path=names, size=st.one_of(st.integers(0, 8), u64))
signatures = st.builds(
    pb.BundleSignature, public_key=st.binary(max_size=40), signature=st.binary(max_size=72)
)
opens = st.builds(
    pb.Open,
    protocol_version=st.one_of(st.sampled_from([0, 1, 2]), u32),
    manifest=st.none() | manifests,
    files=st.lists(file_entries, max_size=4),
    max_depth=st.one_of(st.integers(0, 70), u32),
    nonce=st.binary(max_size=80),
    client_nonce=st.binary(max_size=80),
    signature=st.none() | signatures,
    max_value_size=st.one_of(st.integers(0, 64), u64),
)
evidences = st.builds(att_pb.Evidence, format=text, body=blobs, signature=blobs, platform_key=blobs)
loadeds = st.one_of(
    st.builds(
        pb.Loaded,
        measurement=st.one_of(st.binary(min_size=32, max_size=32), blobs),
        evidence=st.none() | evidences,
        proxy_nonce=blobs,
    ),
    st.builds(pb.Loaded, error=errors),
    st.just(pb.Loaded()),
)
calls = st.builds(
    pb.Call,
    call_id=ids,
    thread=threads,
    kind=kinds,
    name=names,
    args=payloads,
    oneway=st.booleans(),
)
results = st.one_of(
    st.builds(pb.Result, call_id=ids, value=payloads),
    st.builds(pb.Result, call_id=ids, error=errors),
    st.builds(pb.Result, call_id=ids),
)
random_frames = st.one_of(
    st.just(pb.Frame()),
    opens.map(lambda m: pb.Frame(open=m)),
    blobs.map(lambda d: pb.Frame(bundle=pb.BundleChunk(data=d))),
    loadeds.map(lambda m: pb.Frame(loaded=m)),
    calls.map(lambda m: pb.Frame(call=m)),
    results.map(lambda m: pb.Frame(result=m)),
    st.builds(pb.Output, thread=threads, stream=streams, data=blobs).map(
        lambda m: pb.Frame(output=m)
    ),
    st.builds(pb.Cancel, call_id=ids).map(lambda m: pb.Frame(cancel=m)),
    blobs.map(lambda d: pb.Frame(chunk=pb.Chunk(data=d))),
    st.builds(pb.Close, error=st.none() | errors).map(lambda m: pb.Frame(close=m)),
)


# ------------------------------------------------------------------ a real session


SMALL_CHUNKS = Limits(value_chunk_size=8)  # so the transcript has Chunk frames both ways


def fault(exc: BaseException) -> RemoteError:
    return RemoteError.from_exception(exc)


class ProxyDriver:
    """A proxy core plus what a small enclave does with its events.

    It loads any bundle; answers entry calls at once, except ``nest`` (below depth 3), which
    first makes a one-way exit call ``log`` and an exit call ``h`` and answers when the
    exit call's result comes back; ``raise`` is answered with an error. Every call prints.
    """

    def __init__(self) -> None:
        self.core = SessionCore(Role.PROXY, limits=SMALL_CHUNKS)
        self.exits: dict[int, tuple[int, int]] = {}  # exit call id -> (thread, entry call id)

    def react(self, events: list[Event]) -> None:
        core = self.core
        for event in events:
            if core.state not in (State.LOADING, State.READY):
                return
            if isinstance(event, BundleReceived):
                core.loaded(event.bundle.measurement(), proxy_nonce=b"k" * 32)
            elif isinstance(event, CallReceived) and not event.oneway:
                core.write_output(event.thread, Stream.STDOUT, f"{event.name}\n".encode())
                if event.name == "nest" and event.depth < 3:
                    core.start_call(event.thread, CallKind.EXIT, "log", ("n",), oneway=True)
                    try:  # the limits the client set in its Open may refuse the exit call
                        exit_id = core.start_call(event.thread, CallKind.EXIT, "h", (event.depth,))
                    except (EnclaveError, ValueError) as exc:
                        core.send_result(event.thread, event.call_id, error=fault(exc))
                        continue
                    self.exits[exit_id] = (event.thread, event.call_id)
                elif event.name == "raise":
                    error = RemoteError(code=StatusCode.INVALID_ARGUMENT, type="E", message="no")
                    core.send_result(event.thread, event.call_id, error=error)
                else:
                    core.send_result(event.thread, event.call_id, [event.name, list(event.args)])
            elif isinstance(event, ResultReceived) and event.call_id in self.exits:
                thread, entry = self.exits.pop(event.call_id)
                core.send_result(thread, entry, event.value)


class ClientDriver:
    """A client core that opens ``BUNDLE``, makes four entry calls once it is loaded (one of
    them on thread 10, which it abandons at once), answers exit calls, and on thread 8 makes a
    nested entry call from inside the first exit call before answering it; thread 9 is
    disposed of once its call returned."""

    def __init__(self) -> None:
        self.core = SessionCore(Role.CLIENT, limits=SMALL_CHUNKS)
        self.core.open(BUNDLE, nonce=b"n" * 32, client_nonce=b"c" * 32)
        self.pending: dict[int, tuple[int, int]] = {}  # nested entry id -> (thread, exit id)

    def react(self, events: list[Event]) -> None:
        core = self.core
        for event in events:
            if isinstance(event, LoadedReceived) and core.state is State.ATTESTING:
                core.accept_evidence()  # as a client does once the evidence verified
            if core.state is not State.READY:
                return
            if isinstance(event, LoadedReceived):
                core.start_call(7, CallKind.INITIALIZE, "", ({"env": {"A": "1"}},))
                core.start_call(8, CallKind.ECALL, "nest", (1, "x"), {"k": (1, 2)})
                core.start_call(9, CallKind.ECALL, "raise", (b"\x07" * _values.BLOB_THRESHOLD,))
                core.start_call(10, CallKind.ECALL, "nest", (b"\x00",))
                core.abandon_thread(10)
            elif isinstance(event, CallReceived) and not event.oneway:
                if event.thread == 8 and event.args == (1,):
                    try:
                        nested = core.start_call(8, CallKind.ECALL, "f", ("nested",))
                    except (EnclaveError, ValueError) as exc:
                        core.send_result(event.thread, event.call_id, error=fault(exc))
                        continue
                    self.pending[nested] = (event.thread, event.call_id)
                else:
                    core.send_result(event.thread, event.call_id, f"handled {event.name}")
            elif isinstance(event, ResultReceived) and event.call_id in self.pending:
                thread, exit_id = self.pending.pop(event.call_id)
                core.send_result(thread, exit_id, event.value)
            elif isinstance(event, ResultReceived) and event.thread == 9:
                core.dispose_thread(9)  # thread 9 is done: its worker may go


def run_session() -> tuple[list[pb.Frame], list[pb.Frame]]:
    """A whole legitimate session: (frames client to proxy, frames proxy to client)."""
    client, proxy = ClientDriver(), ProxyDriver()
    up: list[pb.Frame] = []
    down: list[pb.Frame] = []
    for _ in range(50):
        sent = wire(inline_blobs(client.core.frames_to_send(), client.core.blobs_to_send()))
        up += sent
        if sent:
            proxy.react(proxy.core.receive(sent))
        proxy.core.flush_output()
        back = wire(inline_blobs(proxy.core.frames_to_send(), proxy.core.blobs_to_send()))
        down += back
        if back:
            client.react(client.core.receive(back))
        if not sent and not back:
            break
    client.core.close()
    final = wire(client.core.frames_to_send())
    up += final
    proxy.core.receive(final)
    assert client.core.state is proxy.core.state is State.CLOSED
    assert not client.pending
    assert not proxy.exits
    return up, down


UP, DOWN = run_session()
KINDS_SEEN = {f.WhichOneof("kind") for f in UP + DOWN}
assert {f.name for f in pb.Frame.DESCRIPTOR.oneofs_by_name["kind"].fields} == KINDS_SEEN
plausible_frames = st.sampled_from(UP + DOWN).map(clone)

_SCALAR_FIELDS = {
    FieldDescriptor.TYPE_UINT64: ids,
    FieldDescriptor.TYPE_UINT32: st.one_of(st.integers(0, 70), u32),
    FieldDescriptor.TYPE_INT32: i32,
    FieldDescriptor.TYPE_ENUM: kinds,
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_STRING: names,
    FieldDescriptor.TYPE_BYTES: payloads,
}


@st.composite
def near_misses_of(draw: st.DrawFn, frame: pb.Frame) -> pb.Frame:
    """``frame`` with one scalar field (of the frame or of a message in it) set anew."""
    out = clone(frame)
    kind = out.WhichOneof("kind")
    if kind is None:
        return out
    message = getattr(out, kind)
    inner = [
        getattr(message, fd.name)
        for fd in message.DESCRIPTOR.fields
        if fd.type == FieldDescriptor.TYPE_MESSAGE
        and not fd.is_repeated
        and message.HasField(fd.name)
    ]
    if inner and draw(st.booleans()):
        message = draw(st.sampled_from(inner))
    fields = [
        fd for fd in message.DESCRIPTOR.fields if not fd.is_repeated and fd.type in _SCALAR_FIELDS
    ]
    if fields:
        fd = draw(st.sampled_from(fields))
        value = draw(_SCALAR_FIELDS[fd.type])
        if fd.type == FieldDescriptor.TYPE_ENUM and fd.enum_type.name == "Stream":
            value = draw(streams)
        setattr(message, fd.name, value)
    return out


near_misses = plausible_frames.flatmap(near_misses_of)
frames = st.one_of(random_frames, plausible_frames, near_misses)


# ------------------------------------------------------------------ the invariant

STATE_ORDER = [
    State.IDLE,
    State.RECEIVING_BUNDLE,
    State.LOADING,
    State.ATTESTING,
    State.READY,
    State.CLOSED,
]
PROXY_EVENTS = (
    BundleReceived,
    CallReceived,
    CancelReceived,
    CloseReceived,
    DisposeReceived,
    ResultReceived,
)
CLIENT_EVENTS = (LoadedReceived, CallReceived, CloseReceived, OutputReceived, ResultReceived)


def check_event(core: SessionCore, event: Event) -> None:
    assert isinstance(event, PROXY_EVENTS if core.role is Role.PROXY else CLIENT_EVENTS), event
    if isinstance(event, CallReceived):
        assert event.kind.is_entry == (core.role is Role.PROXY)
        assert isinstance(event.args, tuple)
        assert all(isinstance(k, str) for k in event.kwargs)
        check_farside_value([list(event.args), dict(event.kwargs)])
        if event.oneway:
            assert event.call_id == 0
            assert event.kind is CallKind.EXIT
        else:
            assert event.thread != 0
            assert event.call_id % 2 == (core.role is Role.PROXY)
    elif isinstance(event, ResultReceived):
        assert event.call_id % 2 == (core.role is Role.CLIENT)
        check_farside_value(event.value)
    elif isinstance(event, OutputReceived):
        assert event.stream in (Stream.STDOUT, Stream.STDERR)
    elif isinstance(event, BundleReceived):
        assert event.bundle.manifest.entry in event.bundle.files
        assert 1 <= event.max_depth <= core.limits.max_depth


def check_broken(core: SessionCore, error: ProtocolError) -> None:
    """After a ProtocolError: ERROR for good, the peer told why, the same error every time."""
    assert core.state is State.ERROR
    assert core.error is error
    assert error.code is StatusCode.INTERNAL
    sent = core.frames_to_send()
    assert sent, "no Close was queued for the peer"
    assert sent[-1].WhichOneof("kind") == "close"
    told = sent[-1].close.error
    assert (told.type, told.code, told.message) == (
        "ProtocolError",
        StatusCode.INTERNAL,
        str(error),
    )
    pb.Batch(frames=sent).SerializeToString()  # what the transport sends must serialize
    for later in ([], [pb.Frame(close=pb.Close())], sent):
        with pytest.raises(ProtocolError) as again:
            core.receive(later)
        assert again.value is error
    core.close()
    assert core.state is State.ERROR
    assert core.frames_to_send() == []


def receive_checked(core: SessionCore, batch: list[pb.Frame]) -> list[Event] | ProtocolError:
    """Feed ``batch``; check the outcome; return the events, or the ProtocolError raised.

    Any exception but ProtocolError propagates: that is the bug the fuzzing looks for.
    """
    before = core.state
    pb.Batch(frames=core.frames_to_send()).SerializeToString()
    try:
        events = core.receive(batch)
    except ProtocolError as exc:
        check_broken(core, exc)
        return exc
    assert core.error is None
    assert core.state in STATE_ORDER
    assert STATE_ORDER.index(core.state) >= STATE_ORDER.index(before), (before, core.state)
    for event in events:
        check_event(core, event)
    sent = core.frames_to_send()
    pb.Batch(frames=sent).SerializeToString()
    assert {f.WhichOneof("kind") for f in sent} <= {"result", "output"}  # automatic answers
    return events


# ------------------------------------------------------------------ cores in every state


def setup_proxy_idle() -> SessionCore:
    return SessionCore(Role.PROXY)


def setup_proxy_receiving() -> SessionCore:
    core = SessionCore(Role.PROXY)
    opening = [f for f in UP if f.WhichOneof("kind") == "open"]
    core.receive(opening)
    assert core.state is State.RECEIVING_BUNDLE
    return core


def setup_proxy_loading() -> SessionCore:
    core = SessionCore(Role.PROXY)
    core.receive([f for f in UP if f.WhichOneof("kind") in ("open", "bundle")])
    assert core.state is State.LOADING
    return core


def setup_proxy_ready() -> SessionCore:
    core = setup_proxy_loading()
    core.loaded(MEASUREMENT)
    core.frames_to_send()
    return core


def busy_pair() -> tuple[ClientDriver, ProxyDriver]:
    """Both cores READY with calls in flight: the transcript until its first quiet moment
    with nested calls outstanding (threads 8 and 10 are mid-way)."""
    client, proxy = ClientDriver(), ProxyDriver()
    for _ in range(3):
        sent = wire(inline_blobs(client.core.frames_to_send(), client.core.blobs_to_send()))
        if sent:
            proxy.react(proxy.core.receive(sent))
        back = wire(inline_blobs(proxy.core.frames_to_send(), proxy.core.blobs_to_send()))
        if back:
            client.react(client.core.receive(back))
    assert proxy.core.busy_threads()
    assert client.core.busy_threads()
    client.core.frames_to_send()
    proxy.core.frames_to_send()
    return client, proxy


def setup_proxy_busy() -> SessionCore:
    return busy_pair()[1].core


def setup_proxy_at_depth_limit() -> SessionCore:
    """Thread 7 two calls deep (entry 1, exit 2) in a session opened with max_depth 2."""
    client = SessionCore(Role.CLIENT, limits=Limits(max_depth=2))
    proxy = SessionCore(Role.PROXY)
    client.open(BUNDLE)
    proxy.receive(wire(client.frames_to_send()))
    proxy.loaded(MEASUREMENT)
    client.receive(wire(proxy.frames_to_send()))
    client.accept_evidence()
    client.start_call(7, CallKind.ECALL, "f")
    proxy.receive(wire(client.frames_to_send()))
    proxy.start_call(7, CallKind.EXIT, "h")
    proxy.frames_to_send()
    assert proxy.depth(7) == 2
    return proxy


def setup_proxy_small_values() -> SessionCore:
    """A session whose client set max_value_size to 16 bytes (chunks soon exceed it)."""
    client = SessionCore(Role.CLIENT, limits=Limits(max_value_size=16))
    proxy = SessionCore(Role.PROXY)
    client.open(BUNDLE)
    proxy.receive(wire(client.frames_to_send()))
    proxy.loaded(MEASUREMENT)
    proxy.frames_to_send()
    return proxy


def setup_client_small_values() -> SessionCore:
    core = SessionCore(Role.CLIENT, limits=Limits(max_value_size=16))
    core.open(BUNDLE)
    core.frames_to_send()
    core.receive([pb.Frame(loaded=pb.Loaded(measurement=MEASUREMENT))])
    core.accept_evidence()
    core.start_call(7, CallKind.ECALL, "f")
    core.frames_to_send()
    return core


def setup_client_abandoned_nested() -> SessionCore:
    """Thread 7 abandoned three calls deep (entry 1, exit 2, entry 3): results still due."""
    client = setup_client_ready()
    client.start_call(7, CallKind.ECALL, "f")
    client.receive(
        [
            pb.Frame(
                call=pb.Call(
                    call_id=2, thread=7, kind=CallKind.EXIT, name="h", args=_values.encode([[], {}])
                )
            )
        ]
    )
    client.start_call(7, CallKind.ECALL, "g")
    assert client.abandon_thread(7) == [1, 3]
    client.frames_to_send()
    return client


def setup_client_loading() -> SessionCore:
    core = SessionCore(Role.CLIENT)
    core.open(BUNDLE)
    core.frames_to_send()
    return core


def setup_client_attesting() -> SessionCore:
    """Loaded arrived; the client has not accepted the evidence yet."""
    core = setup_client_loading()
    core.receive([pb.Frame(loaded=pb.Loaded(measurement=MEASUREMENT))])
    assert core.state is State.ATTESTING
    return core


def setup_client_ready() -> SessionCore:
    core = setup_client_attesting()
    core.accept_evidence()
    assert core.state is State.READY
    return core


def setup_client_busy() -> SessionCore:
    return busy_pair()[0].core


SETUPS: dict[str, Callable[[], SessionCore]] = {
    "proxy-idle": setup_proxy_idle,
    "proxy-receiving-bundle": setup_proxy_receiving,
    "proxy-loading": setup_proxy_loading,
    "proxy-ready": setup_proxy_ready,
    "proxy-ready-calls-in-flight": setup_proxy_busy,
    "proxy-at-depth-limit": setup_proxy_at_depth_limit,
    "proxy-small-values": setup_proxy_small_values,
    "client-loading": setup_client_loading,
    "client-attesting": setup_client_attesting,
    "client-ready": setup_client_ready,
    "client-ready-calls-in-flight": setup_client_busy,
    "client-small-values": setup_client_small_values,
    "client-abandoned-nested": setup_client_abandoned_nested,
}
each_state = pytest.mark.parametrize("setup", list(SETUPS.values()), ids=list(SETUPS))


def test_the_transcript_replays_frame_by_frame() -> None:
    # The mutation tests below depend on this: unmutated, a replay is a legitimate session.
    proxy = ProxyDriver()
    for frame in UP:
        events = receive_checked(proxy.core, [frame])
        assert not isinstance(events, ProtocolError), events
        proxy.react(events)
    client = ClientDriver()
    for frame in DOWN:
        events = receive_checked(client.core, [frame])
        assert not isinstance(events, ProtocolError), events
        client.react(events)
    assert proxy.core.state is State.CLOSED
    assert client.core.state is State.READY


@fuzz(40)
@each_state
@given(batch=st.lists(frames, min_size=1, max_size=6))
def test_any_batch_gives_events_or_a_protocol_error(
    setup: Callable[[], SessionCore], batch: list[pb.Frame]
) -> None:
    receive_checked(setup(), wire(batch))


@fuzz(40)
@each_state
@given(sequence=st.lists(frames, min_size=1, max_size=12))
def test_any_sequence_of_frames_gives_events_or_a_protocol_error(
    setup: Callable[[], SessionCore], sequence: list[pb.Frame]
) -> None:
    core = setup()
    for frame in sequence:
        outcome = receive_checked(core, wire([frame]))
        if isinstance(outcome, ProtocolError):
            for later in sequence:  # broken for good: nothing gets through any more
                with pytest.raises(ProtocolError) as again:
                    core.receive([later])
                assert again.value is outcome
            return


@st.composite
def guided_frame(draw: st.DrawFn, core: SessionCore, fresh_id: int) -> pb.Frame:
    """A frame aimed at ``core``'s present state: calls of the kinds its role receives on its
    busy threads (or thread 0, or a new one) with a fresh id of the peer's (``fresh_id``),
    results for its own small ids, value chunks, cancels; mostly well-formed."""
    if core.role is Role.PROXY and core.state is State.IDLE and draw(st.booleans()):
        paths = st.sampled_from(["e.py", "e.py", "lib/u.py", "a/../e.py", "", "x/"])
        opening = pb.Open(
            protocol_version=1,
            manifest=pb.Manifest(name="n", entry=draw(paths)),
            files=draw(st.lists(st.builds(pb.FileEntry, path=paths, size=st.integers(0, 4)))),
            max_depth=draw(st.integers(0, 3)),
            max_value_size=draw(st.integers(0, 64)),
        )
        return pb.Frame(open=opening)
    if core.state is State.RECEIVING_BUNDLE and draw(st.booleans()):
        return pb.Frame(bundle=pb.BundleChunk(data=draw(st.binary(max_size=14))))
    thread = draw(st.sampled_from([*core.busy_threads(), *core.busy_threads(), 0, 7, 11]))
    value = draw(st.sampled_from([well_formed_args] * 3 + [payloads]).flatmap(lambda s: s))
    kind = draw(st.sampled_from(["call"] * 4 + ["result"] * 2 + ["chunk", "cancel"]))
    if kind == "call":
        wanted = [1, 2, 3, 4] if core.role is Role.PROXY else [5]
        call = pb.Call(
            call_id=draw(st.sampled_from([fresh_id] * 6 + [fresh_id - 2, fresh_id + 1, 0])),
            thread=thread,
            kind=draw(st.sampled_from(wanted * 3 + [1, 5, 0, 9])),
            name=draw(st.sampled_from(["f", "nest"])),
            args=value,
            oneway=draw(st.sampled_from([False] * 5 + [True])),
        )
        return pb.Frame(call=call)
    own = st.sampled_from(range(1 if core.role is Role.CLIENT else 2, 16, 2))
    call_id = draw(st.one_of(own, st.integers(0, 16)))
    if kind == "result":
        if draw(st.sampled_from([True] * 3 + [False])):
            return pb.Frame(result=pb.Result(call_id=call_id, value=value))
        return pb.Frame(result=pb.Result(call_id=call_id, error=draw(errors)))
    if kind == "chunk":
        return pb.Frame(chunk=pb.Chunk(data=draw(st.binary(max_size=24))))
    return pb.Frame(cancel=pb.Cancel(call_id=call_id))


@fuzz(40)
@each_state
@given(data=st.data())
def test_sequences_aimed_at_the_state_give_events_or_a_protocol_error(
    setup: Callable[[], SessionCore], data: st.DataObject
) -> None:
    core = setup()
    fresh_id = 101 if core.role is Role.PROXY else 100
    for _ in range(data.draw(st.integers(1, 12))):
        if data.draw(st.sampled_from([True] * 4 + [False])):
            frame = data.draw(guided_frame(core, fresh_id))
            fresh_id += 2
        else:
            frame = data.draw(frames)
        outcome = receive_checked(core, wire([frame]))
        if isinstance(outcome, ProtocolError) or core.state is State.CLOSED:
            return


legit_batches = st.sampled_from(
    [pb.Batch(frames=UP[:3]).SerializeToString(), pb.Batch(frames=DOWN[:6]).SerializeToString()]
)


@st.composite
def batch_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, or a real batch with bytes flipped, cut or inserted."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    data = bytearray(draw(legit_batches))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        if not data:
            break
    return bytes(data)


@fuzz(300)
@given(data=batch_bytes())
def test_bytes_that_parse_as_a_batch_give_events_or_a_protocol_error(data: bytes) -> None:
    try:
        batch = pb.Batch.FromString(data)
    except DecodeError:
        return  # the transport refuses what does not parse (see the proxy tests below)
    for setup in SETUPS.values():
        receive_checked(setup(), list(batch.frames))


# ------------------------------------------------------------------ mutated transcripts


@st.composite
def mutated(draw: st.DrawFn, transcript: list[pb.Frame]) -> list[pb.Frame]:
    """``transcript`` with one to three mutations: frames dropped, duplicated, swapped,
    inserted or replaced, a field of one set to another value, or its bytes damaged."""
    out = [clone(f) for f in transcript]
    for _ in range(draw(st.integers(1, 3))):
        if not out:
            out.append(draw(frames))
            continue
        i = draw(st.integers(0, len(out) - 1))
        op = draw(st.sampled_from(["drop", "dup", "swap", "insert", "replace", "field", "bytes"]))
        if op == "drop":
            del out[i]
        elif op == "dup":
            out.insert(i, clone(out[i]))
        elif op == "swap":
            j = draw(st.integers(0, len(out) - 1))
            out[i], out[j] = out[j], out[i]
        elif op == "insert":
            out.insert(i, draw(frames))
        elif op == "replace":
            out[i] = draw(frames)
        elif op == "field":
            out[i] = draw(near_misses_of(out[i]))
        else:
            data = bytearray(out[i].SerializeToString())
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
            data = data[: draw(st.integers(0, len(data)))]
            try:
                out[i] = pb.Frame.FromString(bytes(data))
            except DecodeError:
                del out[i]  # the transport would have refused the whole batch
    return out


@fuzz(250)
@given(sequence=mutated(UP))
def test_mutated_client_transcript_against_a_working_proxy(sequence: list[pb.Frame]) -> None:
    proxy = ProxyDriver()
    for frame in sequence:
        outcome = receive_checked(proxy.core, wire([frame]))
        if isinstance(outcome, ProtocolError):
            return
        proxy.react(outcome)  # the enclave's own moves must stay legal whatever came in


@fuzz(250)
@given(sequence=mutated(DOWN))
def test_mutated_proxy_transcript_against_a_working_client(sequence: list[pb.Frame]) -> None:
    client = ClientDriver()
    for frame in sequence:
        outcome = receive_checked(client.core, wire([frame]))
        if isinstance(outcome, ProtocolError):
            return
        client.react(outcome)


# ================================================================== the endpoint


class Sent:
    """The transport of an endpoint under test: records what it sends."""

    def __init__(self) -> None:
        self.frames: list[pb.Frame] = []
        self._lock = threading.Lock()

    def send(self, frames: list[pb.Frame]) -> None:
        pb.Batch(frames=frames).SerializeToString()
        with self._lock:
            self.frames += frames

    def kinds(self) -> list[str | None]:
        with self._lock:
            return [f.WhichOneof("kind") for f in self.frames]


class WorkerHandler:
    """The proxy's handler: a worker thread per client thread, entry calls echoed."""

    def __init__(self) -> None:
        self.endpoint: Endpoint | None = None
        self.workers: list[threading.Thread] = []
        self.outcomes: list[BaseException | None] = []
        self.unexpected: list[BaseException] = []

    def handle_call(self, event: CallReceived) -> Any:
        if event.name == "raise":
            raise ValueError("asked to")
        return list(event.args)

    def handle_event(self, event: Event) -> None:
        if isinstance(event, BundleReceived):
            assert self.endpoint is not None
            self.endpoint.run_locked(lambda core: core.loaded(MEASUREMENT))

    def start_thread(self, thread: int, kind: CallKind | None = None) -> bool:
        worker = threading.Thread(target=self._work, args=(thread,), daemon=True)
        self.workers.append(worker)
        worker.start()
        return True

    def _work(self, thread: int) -> None:
        assert self.endpoint is not None
        try:
            self.endpoint.serve(thread)
        except EnclaveError as exc:
            self.outcomes.append(exc)
        except BaseException as exc:
            self.unexpected.append(exc)
        else:
            self.outcomes.append(None)


def error_from_exception(exc: BaseException) -> RemoteError:
    return RemoteError.from_exception(exc)


entry_calls = st.builds(
    pb.Call,
    call_id=st.integers(1, 15),
    thread=st.sampled_from([7, 8]),
    kind=st.just(CallKind.ECALL),
    name=st.sampled_from(["f", "raise"]),
    args=well_formed_args,
).map(lambda m: pb.Frame(call=m))


@fuzz(40)
@given(sequence=st.lists(st.one_of(frames, entry_calls), min_size=1, max_size=8))
def test_proxy_endpoint_fails_its_workers_with_the_protocol_error(
    sequence: list[pb.Frame],
) -> None:
    handler, sent = WorkerHandler(), Sent()
    core = SessionCore(Role.PROXY)
    endpoint = Endpoint(core, sent, handler, error_from_exception=error_from_exception)
    handler.endpoint = endpoint
    endpoint.feed([f for f in UP if f.WhichOneof("kind") in ("open", "bundle")])
    assert core.state is State.READY
    for frame in sequence:
        endpoint.feed(wire([frame]))  # never raises, whatever arrives
    if core.error is None and endpoint.failure is None:
        endpoint.stop_threads()
    for worker in handler.workers:
        worker.join(WAIT)
        assert not worker.is_alive(), "a worker still waits after the session ended"
    assert handler.unexpected == []
    if core.error is not None:
        assert endpoint.failure is core.error
        assert sent.kinds()[-1] == "close"
        assert all(o is core.error for o in handler.outcomes), handler.outcomes
        with pytest.raises(ProtocolError):
            endpoint.run_locked(lambda c: None)
    elif endpoint.failure is not None:  # the peer sent a Close
        assert core.state is State.CLOSED
        assert all(o is endpoint.failure for o in handler.outcomes), handler.outcomes
    else:
        assert all(o is None for o in handler.outcomes), handler.outcomes


class ExitHandler:
    """The client's handler: exit calls answered on the waiting thread."""

    def __init__(self) -> None:
        self.started: list[int] = []

    def handle_call(self, event: CallReceived) -> Any:
        return f"handled {event.name}"

    def handle_event(self, event: Event) -> None:
        pass

    def start_thread(self, thread: int, kind: CallKind | None = None) -> bool:
        self.started.append(thread)
        return False


exit_calls = st.builds(
    pb.Call,
    call_id=st.sampled_from([2, 4, 6]),
    thread=st.just(7),
    kind=st.just(CallKind.EXIT),
    name=st.just("h"),
    args=well_formed_args,
).map(lambda m: pb.Frame(call=m))
first_results = st.builds(pb.Result, call_id=st.just(1), value=payloads).map(
    lambda m: pb.Frame(result=m)
)


@fuzz(40)
@given(sequence=st.lists(st.one_of(frames, exit_calls, first_results), min_size=1, max_size=8))
def test_client_endpoint_fails_a_waiting_call_with_the_protocol_error(
    sequence: list[pb.Frame],
) -> None:
    handler, sent = ExitHandler(), Sent()
    core = setup_client_ready()
    endpoint = Endpoint(core, sent, handler, error_from_exception=error_from_exception)
    outcome: list[Any] = []

    def wait() -> None:
        try:
            outcome.append(("value", endpoint.call(7, CallKind.ECALL, "f", (1,))))
        except BaseException as exc:
            outcome.append(("error", exc))

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    deadline = time.monotonic() + WAIT
    while "call" not in sent.kinds():
        assert time.monotonic() < deadline
        time.sleep(0.001)
    for frame in sequence:
        endpoint.feed(wire([frame]))
    waiter.join(WAIT if endpoint.failure is not None else 0.2)
    if waiter.is_alive():
        assert endpoint.failure is None, "the session failed but the waiting call goes on"
        endpoint.fail(EnclaveUnavailableError("the test is over"))
    waiter.join(WAIT)
    assert not waiter.is_alive(), "the waiting call hangs after the session failed"
    assert handler.started == []
    [(how, what)] = outcome
    if how == "error":
        assert isinstance(what, EnclaveError), repr(what)
        if isinstance(what, ProtocolError):
            # Either our core found the violation, or the peer closed saying so.
            assert what is core.error or what.message.startswith("peer closed the session")
        elif not isinstance(what, EnclaveUnavailableError):
            assert isinstance(what, EnclaveCallError)  # the peer answered with an error
            assert endpoint.failure is None or endpoint.failure is core.error


# ================================================================== a real proxy


@pytest.fixture(scope="module")
def provision() -> farside.LocalProvision:
    """One provisioner for the module: the last test checks it is unharmed."""
    return farside.LocalProvision(transport="grpc", idle_timeout=20.0, stop_timeout=1.0)


class RawSession:
    """A session stream to a provisioned proxy, opened with its token, and what came back."""

    def __init__(self, lease: farside.ProxyLease) -> None:
        self.received: list[pb.Frame] = []
        self.lost: list[EnclaveError] = []
        self._changed = threading.Condition()
        self.transport = GrpcClientTransport(lease.address, token=lease.token)
        self.transport.start(self._sink, self._on_lost)

    def _sink(self, frames: list[pb.Frame]) -> None:
        with self._changed:
            self.received += frames
            self._changed.notify_all()

    def _on_lost(self, error: EnclaveError) -> None:
        with self._changed:
            self.lost.append(error)
            self._changed.notify_all()

    def wait_for(self, kind: str, timeout: float = WAIT) -> pb.Frame | None:
        """The first received frame of ``kind``, waiting for it; None if it does not come."""

        def found() -> pb.Frame | None:
            return next((f for f in self.received if f.WhichOneof("kind") == kind), None)

        with self._changed:
            self._changed.wait_for(lambda: found() is not None or bool(self.lost), timeout)
            return found()

    def wait_lost(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: bool(self.lost), timeout)


@contextlib.contextmanager
def proxy_of(provision: farside.LocalProvision) -> Iterator[farside.ProxyLease]:
    """A fresh proxy; released (and so reaped) afterwards whatever happened."""
    lease = provision.provision(name="fuzz", timeout=20)
    try:
        yield lease
    finally:
        provision.release(lease)


def opening_frames() -> tuple[list[pb.Frame], bytes]:
    """What a client sends to load the quickstart bundle, and the bundle's measurement."""
    bundle = load_bundle(QUICKSTART)
    client = SessionCore(Role.CLIENT)
    client.open(bundle, nonce=os.urandom(32), client_nonce=os.urandom(32))
    return client.frames_to_send(), bundle.measurement()


def violation(opening: list[pb.Frame] | None, batch: list[pb.Frame]) -> str | None:
    """What a proxy core says to ``batch`` (after ``opening`` and a successful load), or None
    if the batch is no violation there."""
    mirror = SessionCore(Role.PROXY)
    if opening is not None:
        mirror.receive(wire(opening))
        mirror.loaded(b"\0" * 32)
    try:
        mirror.receive(wire(batch))
    except ProtocolError as exc:
        return str(exc)
    return None


def ends_cleanly(lease: farside.ProxyLease, session: RawSession, provision: Any) -> None:
    """After its Close the proxy ends the stream itself (a client keeping its end open does
    not keep the proxy, nor its provisioner's slot) and exits 0; releasing it is quick."""
    process = lease.handle.process
    assert session.wait_lost(WAIT), "the proxy kept the session stream open"
    process.wait(WAIT)
    assert process.returncode == 0, f"proxy exit code {process.returncode}"
    session.transport.close(timeout=1.0)
    started = time.monotonic()
    provision.release(lease)
    assert time.monotonic() - started < 1.0


violating_batches = st.lists(frames, min_size=1, max_size=4)


@PROXY_EXAMPLES
@example(batch=[pb.Frame(bundle=pb.BundleChunk(data=b"x"))])
@given(batch=violating_batches)
def test_proxy_closes_a_session_opened_with_a_malformed_batch(
    provision: farside.LocalProvision, batch: list[pb.Frame]
) -> None:
    expected = violation(None, batch)
    assume(expected is not None)
    with proxy_of(provision) as lease:
        session = RawSession(lease)
        session.transport.send(batch)
        close = session.wait_for("close")
        assert close is not None, f"no Close from the proxy; lost: {session.lost}"
        assert close.close.error.type == "ProtocolError"
        assert close.close.error.message == expected
        ends_cleanly(lease, session, provision)


@PROXY_EXAMPLES
@example(batch=[pb.Frame(call=pb.Call(call_id=2, thread=7, kind=CallKind.ECALL))])
@given(batch=violating_batches)
def test_proxy_closes_a_loaded_session_on_a_malformed_batch(
    provision: farside.LocalProvision, batch: list[pb.Frame]
) -> None:
    opening, measurement = opening_frames()
    expected = violation(opening, batch)
    assume(expected is not None)
    with proxy_of(provision) as lease:
        session = RawSession(lease)
        session.transport.send(opening)
        loaded = session.wait_for("loaded", 20.0)
        assert loaded is not None, f"no Loaded from the proxy; lost: {session.lost}"
        assert loaded.loaded.measurement == measurement
        session.transport.send(batch)
        close = session.wait_for("close")
        assert close is not None, f"no Close from the proxy; lost: {session.lost}"
        assert close.close.error.type == "ProtocolError"
        assert close.close.error.message == expected
        ends_cleanly(lease, session, provision)


@PROXY_EXAMPLES
@example(data=b"\xff\xff\xff")
@example(data=pb.Batch(frames=[pb.Frame()]).SerializeToString())
@given(data=batch_bytes())
def test_proxy_survives_raw_bytes_on_its_stream(
    provision: farside.LocalProvision, data: bytes
) -> None:
    with proxy_of(provision) as lease:
        process = lease.handle.process
        channel = grpc.insecure_channel(lease.address, options=channel_options())
        try:
            session = channel.stream_stream(
                "/farside.v1.EnclaveSession/Session",
                request_serializer=None,
                response_deserializer=None,
            )
            answers = session(
                iter([data]), metadata=((TOKEN_METADATA_KEY, lease.token),), timeout=WAIT
            )
            refused: grpc.RpcError | None = None
            try:
                replies = [pb.Batch.FromString(raw) for raw in answers]
            except grpc.RpcError as exc:
                refused = exc
            if refused is not None:  # gRPC itself refuses a message that is not a Batch
                assert refused.code() is grpc.StatusCode.INTERNAL, refused
                assert "deserializing" in (refused.details() or ""), refused
            else:
                # Whatever parsed went to the core: a Close if it was a violation, perhaps a
                # Loaded first if it held a whole bundle.
                got = [f for batch in replies for f in batch.frames]
                assert {f.WhichOneof("kind") for f in got} <= {"loaded", "close"}, got
        finally:
            channel.close()
        process.wait(WAIT)  # the stream ended: the proxy exits on its own
        assert process.returncode == 0


WORKER = Path(__file__).resolve().parent.parent / "enclaves" / "worker.py"


def test_proxy_survives_echoing_deeply_nested_arguments(
    provision: farside.LocalProvision,
) -> None:
    deep = msgpack.packb(None)
    for _ in range(20):
        deep = mp_ext(1, b"\x91" * 1001 + deep)
    echo_args = b"\x92\x91" + deep + b"\x80"  # [[deep], {}]
    bundle = load_bundle(WORKER)
    client = SessionCore(Role.CLIENT)
    client.open(bundle, nonce=os.urandom(32), client_nonce=os.urandom(32))
    with proxy_of(provision) as lease:
        session = RawSession(lease)
        try:
            session.transport.send(client.frames_to_send())
            assert session.wait_for("loaded", 20.0) is not None
            config = _values.encode([[farside.EnclaveConfig().to_wire()], {}])
            initialize = pb.Call(call_id=1, thread=7, kind=CallKind.INITIALIZE, args=config)
            echo = pb.Call(call_id=3, thread=7, kind=CallKind.ECALL, name="echo", args=echo_args)
            session.transport.send([pb.Frame(call=initialize)])
            # initialize asks how the client presents its files: no files, no stdin.
            describe = session.wait_for("call", WAIT)
            assert describe is not None
            assert describe.call.name == "farside.client.describe"
            no_files = {"root": None, "aliases": [], "readonly": False, "stdin": False}
            answer = pb.Result(call_id=describe.call.call_id, value=_values.encode(no_files))
            session.transport.send([pb.Frame(result=answer)])
            # A thread's next entry call may follow only its previous one's result.
            assert session.wait_for("result", WAIT) is not None
            session.transport.send([pb.Frame(call=echo)])
            deadline = time.monotonic() + WAIT
            while len([f for f in session.received if f.WhichOneof("kind") == "result"]) < 2:
                assert not session.lost, f"the proxy died: {session.lost}"
                assert time.monotonic() < deadline, "no answer to the echo"
                time.sleep(0.01)
            assert lease.handle.process.poll() is None
        finally:
            session.transport.close(timeout=1.0)


def test_proxy_answers_arguments_nested_deep_around_0xff(
    provision: farside.LocalProvision,
) -> None:
    echo_args = b"\x92\x91" + DEEP_HOLDING_FF[0] + b"\x80"  # [[deep], {}]
    bundle = load_bundle(WORKER)
    client = SessionCore(Role.CLIENT)
    client.open(bundle, nonce=os.urandom(32), client_nonce=os.urandom(32))
    with proxy_of(provision) as lease:
        session = RawSession(lease)
        try:
            session.transport.send(client.frames_to_send())
            assert session.wait_for("loaded", 20.0) is not None
            echo = pb.Call(call_id=1, thread=7, kind=CallKind.ECALL, name="echo", args=echo_args)
            session.transport.send([pb.Frame(call=echo)])
            # Answered (with an error: the enclave is not initialized) or closed; not ignored.
            answer = session.wait_for("result", 2.0) or session.wait_for("close", 0.0)
            assert answer is not None, "the proxy neither answered nor closed the session"
        finally:
            session.transport.close(timeout=1.0)


def test_the_provisioner_still_loads_enclaves(provision: farside.LocalProvision) -> None:
    with farside.load(QUICKSTART, provision=provision) as client:
        sealed = client.call("encrypt", "after the fuzzing")
        assert client.call("decrypt", sealed) == "after the fuzzing"
