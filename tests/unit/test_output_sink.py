"""The client's output sink: whole lines per thread, in linear time and bounded memory.

The sink is fed ``OutputReceived`` events directly, as the session's reader thread
does; ``sys.stdout``/``sys.stderr`` are replaced by recorders.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from farside.protocol import OutputReceived, Stream
from farside.untrusted._exits import MAX_PARTIAL_LINE, OutputSink


class Recorder:
    """A text stream that keeps every write separately."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.size = 0

    def write(self, text: str) -> int:
        self.writes.append(text)
        self.size += len(text)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.writes)


def record(monkeypatch: pytest.MonkeyPatch, name: str) -> Recorder:
    """Replace ``sys.<name>`` for the rest of the test (pytest's own capture sets it at
    the start of the test's call, after fixtures)."""
    recorder = Recorder()
    monkeypatch.setattr(sys, name, recorder)
    return recorder


def output(data: bytes, thread: int = 1, stream: Stream = Stream.STDOUT) -> OutputReceived:
    return OutputReceived(thread=thread, stream=stream, data=data)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


@pytest.mark.parametrize(
    ("total", "size"),
    [(32 * 2**20, 64 * 2**10), (4 * 2**20, 4 * 2**10)],
    ids=["32 MiB in 64 KiB chunks", "4 MiB in 4 KiB chunks"],
)
def test_output_without_a_newline_is_held_only_up_to_the_bound(
    monkeypatch: pytest.MonkeyPatch, total: int, size: int
) -> None:
    out = record(monkeypatch, "stdout")
    # Multi-byte characters, cut anywhere by the chunks: the decoder keeps their halves.
    pattern = "x é ☃ 😀 ".encode()
    data = (pattern * (total // len(pattern) + 1))[:total]
    sink = OutputSink()
    fed = 0
    most_held = 0
    for chunk in chunks(data, size):
        sink.write(output(chunk))
        fed += len(chunk.decode("utf-8", "ignore"))
        most_held = max(most_held, fed - out.size)
    sink.flush(1)
    assert out.text.encode() == data
    assert most_held < MAX_PARTIAL_LINE + size  # not the whole 32 MiB
    assert max(map(len, out.writes)) < MAX_PARTIAL_LINE + size


def test_a_long_line_is_written_in_pieces_with_its_newline_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = record(monkeypatch, "stdout")
    sink = OutputSink()
    line = "y" * (3 * MAX_PARTIAL_LINE) + "\n"
    for chunk in chunks(line.encode(), 1000):
        sink.write(output(chunk))
    assert out.text == line
    assert len(out.writes) > 1
    assert all("\n" not in piece for piece in out.writes[:-1])


def test_lines_of_concurrent_calls_never_mix(monkeypatch: pytest.MonkeyPatch) -> None:
    out = record(monkeypatch, "stdout")
    sink = OutputSink()
    # print() writes its text and its newline separately, and threads interleave.
    for data, thread in [
        (b"first ", 1),
        (b"second ", 2),
        (b"half", 1),
        (b"half", 2),
        (b"\n", 2),
        (b"\nnext ", 1),
        (b"line\n", 1),
    ]:
        sink.write(output(data, thread))
    assert out.writes == ["second half\n", "first half\n", "next line\n"]


def test_unfinished_lines_are_written_when_the_call_returns_or_the_session_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out, err = record(monkeypatch, "stdout"), record(monkeypatch, "stderr")
    sink = OutputSink()
    sink.write(output(b"one", thread=1))
    sink.write(output(b"two", thread=2))
    sink.write(output(b"three", thread=2, stream=Stream.STDERR))
    sink.flush(1)
    assert out.writes == ["one"]
    sink.flush()
    assert out.writes == ["one", "two"]
    assert err.writes == ["three"]
    sink.flush()  # nothing left: nothing written twice
    assert (out.writes, err.writes) == (["one", "two"], ["three"])


def test_a_character_cut_between_events_is_decoded_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = record(monkeypatch, "stdout")
    sink = OutputSink()
    snowman = "☃\n".encode()
    for byte in snowman:
        sink.write(output(bytes([byte])))
    assert out.writes == ["☃\n"]
    sink.write(output(b"\xff\n"))  # not UTF-8: replaced, not raised
    assert out.writes[-1] == "\ufffd\n"
