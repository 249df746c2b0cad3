"""Counting the bytes of a session's frames, by wrapping its sender and its sink.

Only a session that counts is wrapped (a proxy reporting metrics, an application that
called ``farside.metrics.enable()`` before loading): one that does not pays nothing.
The size is the frames' serialized size, the same on every transport.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["CountingSender", "counting_sink"]


def _size(frames: list[Any]) -> int:
    if len(frames) == 1:  # most batches: a call or a result
        size: int = frames[0].ByteSize()
        return size
    return sum(frame.ByteSize() for frame in frames)


class CountingSender:
    """A ``FrameSender`` that counts what it sends, then hands it to ``sender``."""

    def __init__(self, sender: Any, on_sent: Callable[[int], None]) -> None:
        self._sender = sender
        self._on_sent = on_sent

    def send(self, frames: list[Any], blobs: Any = ()) -> None:
        self._on_sent(_size(frames) + sum(len(blob) for blob in blobs))
        if blobs:
            self._sender.send(frames, blobs)
        else:
            self._sender.send(frames)

    def queue(self, frames: list[Any], blobs: Any = ()) -> None:
        """Count, then queue without writing (``flush`` writes), or send."""
        self._on_sent(_size(frames) + sum(len(blob) for blob in blobs))
        queue = getattr(self._sender, "queue", None)
        if queue is not None:
            queue(frames, blobs)
        elif blobs:
            self._sender.send(frames, blobs)
        else:
            self._sender.send(frames)

    def flush(self) -> None:
        getattr(self._sender, "flush", lambda: None)()

    def __getattr__(self, name: str) -> Any:  # backlog, wait_below, and whatever comes
        return getattr(self._sender, name)


def counting_sink(
    sink: Callable[..., None], on_received: Callable[[int], None]
) -> Callable[..., None]:
    """``sink``, counting the frames it is given first."""

    def counted(frames: list[Any], blobs: Any = ()) -> None:
        on_received(_size(frames) + sum(len(blob) for blob in blobs))
        if blobs:
            sink(frames, blobs)
        else:
            sink(frames)

    return counted
