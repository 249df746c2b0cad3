#!/usr/bin/env python3
"""Coverage-guided fuzzing of the session core and the value codec, with atheris.

Not part of the test suite (tests/fuzz has the hypothesis version that CI runs); run it
for as long as you like when the wire format or the codec changes:

    pip install atheris
    python scripts/fuzz_atheris.py -runs=100000              # both targets
    python scripts/fuzz_atheris.py --target=frames -max_total_time=600 corpus/
    python scripts/fuzz_atheris.py --target=codec -max_total_time=60

Everything after the script's own options goes to libFuzzer (``-runs``, ``-max_total_time``,
``-jobs``, a corpus directory, ...). Targets:

* ``frames``: the input picks a session core (proxy or client, in one of several states)
  and is parsed as a ``Batch``; what does not parse is dropped (the transport refuses it).
  ``SessionCore.receive`` must return events or raise ``ProtocolError`` and then be broken
  for good (state ERROR, a Close queued, the same error on every later use).
* ``codec``: ``_values.decode`` must return farside values or raise ``ValueError``.

Any other exception is a finding: libFuzzer prints it and writes the input to
``crash-<sha1>``. Replay one with ``python scripts/fuzz_atheris.py crash-<sha1>``.
Known bugs that would stop every run at once (msgpack timestamps decoding to
``msgpack.Timestamp``) are tolerated unless ``--strict``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atheris
import msgpack
from google.protobuf.message import DecodeError

from farside import _values
from farside._errors import ProtocolError
from farside._proto.v1 import session_pb2 as pb
from farside.attestation import Bundle, Manifest
from farside.protocol import CallKind, CallReceived, ResultReceived, Role, SessionCore, State

BUNDLE = Bundle(manifest=Manifest(name="fuzz", entry="e.py"), files={"e.py": b"x = 1\n"})
ALLOWED = (type(None), bool, int, float, str, bytes, list, tuple, dict)
STRICT = False


def _pair() -> tuple[SessionCore, SessionCore]:
    """A client and a proxy core, both READY."""
    client, proxy = SessionCore(Role.CLIENT), SessionCore(Role.PROXY)
    client.open(BUNDLE)
    proxy.receive(client.frames_to_send())
    proxy.loaded(BUNDLE.measurement())
    client.receive(proxy.frames_to_send())
    return client, proxy


def _nested() -> tuple[SessionCore, SessionCore]:
    """READY, thread 7 three calls deep (entry 1, exit 2, entry 3), thread 8 waiting."""
    client, proxy = _pair()
    client.start_call(7, CallKind.ECALL, "f")
    client.start_call(8, CallKind.RUN, "")
    proxy.receive(client.frames_to_send())
    proxy.start_call(7, CallKind.EXIT, "h")
    client.receive(proxy.frames_to_send())
    client.start_call(7, CallKind.ECALL, "g")
    proxy.receive(client.frames_to_send())
    return client, proxy


def _proxy_receiving() -> SessionCore:
    core = SessionCore(Role.PROXY)
    client = SessionCore(Role.CLIENT)
    client.open(BUNDLE)
    core.receive(client.frames_to_send()[:1])  # the Open, not the bytes
    return core


def _client_loading() -> SessionCore:
    core = SessionCore(Role.CLIENT)
    core.open(BUNDLE)
    return core


SETUPS: list[Callable[[], SessionCore]] = [
    lambda: SessionCore(Role.PROXY),
    _proxy_receiving,
    lambda: _pair()[1],
    lambda: _nested()[1],
    _client_loading,
    lambda: _pair()[0],
    lambda: _nested()[0],
]


def check_value(value: Any) -> tuple[int, bool]:
    """Assert ``value`` is made of farside types; return its depth (found iteratively) and
    whether it holds a known-bug type that is tolerated."""
    depth, known_bug, stack = 0, False, [(value, 1)]
    while stack:
        item, level = stack.pop()
        depth = max(depth, level)
        if not STRICT and type(item) is msgpack.Timestamp:
            known_bug = True  # see tests/fuzz: test_decode_refuses_the_timestamp_extension
            continue
        if type(item) not in ALLOWED:
            raise AssertionError(f"decode produced a {type(item)!r}")
        if isinstance(item, list | tuple):
            stack.extend((x, level + 1) for x in item)
        elif isinstance(item, dict):
            for key, x in item.items():
                if type(key) not in (str, int):
                    raise AssertionError(f"decode produced a {type(key)!r} key")
                stack.append((x, level + 1))
    return depth, known_bug


def fuzz_codec(data: bytes) -> None:
    try:
        value = _values.decode(data)
    except ValueError:
        return
    # Sending back only shallow values: deep lists inside tuples crash encode (a known bug,
    # test_encode_refuses_lists_nested_in_tuples_without_crashing), which would end the run.
    depth, known_bug = check_value(value)
    if depth <= _values.MAX_DEPTH and not known_bug:
        _values.decode(_values.encode(value))


def fuzz_frames(data: bytes) -> None:
    if not data:
        return
    setup = SETUPS[data[0] % len(SETUPS)]
    try:
        batch = pb.Batch.FromString(data[1:])
    except DecodeError:
        return
    core = setup()
    core.frames_to_send()
    try:
        events = core.receive(batch.frames)
    except ProtocolError as error:
        if core.state is not State.ERROR or core.error is not error:
            raise AssertionError("a ProtocolError left the core usable") from error
        sent = core.frames_to_send()
        if not sent or sent[-1].WhichOneof("kind") != "close":
            raise AssertionError("no Close was queued after a ProtocolError") from error
        pb.Batch(frames=sent).SerializeToString()
        try:
            core.receive([])
        except ProtocolError as again:
            if again is not error:
                raise AssertionError("a broken core raised another error") from again
        else:
            raise AssertionError("a broken core accepted frames again") from error
        return
    for event in events:
        if isinstance(event, CallReceived):
            check_value([list(event.args), dict(event.kwargs)])
        elif isinstance(event, ResultReceived):
            check_value(event.value)
    pb.Batch(frames=core.frames_to_send()).SerializeToString()


def fuzz_both(data: bytes) -> None:
    if data[:1] == b"\1":
        fuzz_codec(data[1:])
    else:
        fuzz_frames(data[1:])


def seeds() -> tuple[list[bytes], list[bytes]]:
    """Inputs that reach deep: (frame inputs, codec inputs), each as its target reads it."""
    frames: list[bytes] = []

    def seed(setup: int, batch: list[pb.Frame]) -> None:
        frames.append(bytes([setup]) + pb.Batch(frames=batch).SerializeToString())

    opener = SessionCore(Role.CLIENT)
    opener.open(BUNDLE)
    opening = opener.frames_to_send()
    args = _values.encode([[1, "two", (3, 4)], {"k": b"v"}])
    seed(0, opening)
    seed(1, opening[1:])
    seed(2, [pb.Frame(call=pb.Call(call_id=1, thread=7, kind=CallKind.ECALL, args=args))])
    seed(
        2,
        [
            pb.Frame(chunk=pb.Chunk(data=args[:3])),
            pb.Frame(call=pb.Call(call_id=1, thread=7, kind=CallKind.RUN, args=args[3:])),
        ],
    )
    seed(3, [pb.Frame(result=pb.Result(call_id=2, value=_values.encode(None)))])
    seed(3, [pb.Frame(cancel=pb.Cancel(call_id=1)), pb.Frame(close=pb.Close())])
    seed(4, [pb.Frame(loaded=pb.Loaded(measurement=BUNDLE.measurement()))])
    seed(5, [pb.Frame(output=pb.Output(thread=7, stream=1, data=b"hi"))])
    seed(
        6,
        [
            pb.Frame(result=pb.Result(call_id=3, value=_values.encode([1]))),
            pb.Frame(call=pb.Call(call_id=4, thread=7, kind=CallKind.EXIT, args=args)),
            pb.Frame(result=pb.Result(call_id=1, error=pb.Error(code=3, message="no"))),
        ],
    )
    values: list[Any] = [None, True, -1, 2**70, 1.5, "s", b"b", [1, [2]], (1, (2,)), {"a": {1: 2}}]
    return frames, [_values.encode(v) for v in values]


def write_seeds(directory: Path, target: str) -> None:
    frames, codec = seeds()
    if target == "both":
        inputs = [b"\0" + f for f in frames] + [b"\1" + c for c in codec]
    else:
        inputs = frames if target == "frames" else codec
    for data in inputs:
        (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)


TARGETS = {"frames": fuzz_frames, "codec": fuzz_codec, "both": fuzz_both}


def main() -> None:
    global STRICT  # noqa: PLW0603 (set once, before fuzzing starts)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    parser.add_argument("--target", choices=sorted(TARGETS), default="both")
    parser.add_argument("--strict", action="store_true", help="also fail on known bugs")
    parser.add_argument("--help", action="store_true")
    options, rest = parser.parse_known_args()
    if options.help:
        print(__doc__)
        return
    STRICT = options.strict
    if not any(Path(arg).is_dir() for arg in rest if not arg.startswith("-")):
        corpus = Path(tempfile.mkdtemp(prefix="farside-fuzz-corpus-"))
        write_seeds(corpus, options.target)
        print(f"fuzz_atheris: seed corpus in {corpus} (new inputs go there)", file=sys.stderr)
        rest.append(str(corpus))
    atheris.instrument_all()  # coverage feedback from every Python function loaded so far
    atheris.Setup([sys.argv[0], *rest], TARGETS[options.target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
