"""What every transport shares: the size limits, grouping frames into batches, the outbox.

Nothing here imports gRPC, so the stream transport does not pay for it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

from .._errors import EnclaveError
from .._proto.v1 import session_pb2 as pb

__all__ = [
    "BATCH_BYTES",
    "MAX_MESSAGE_BYTES",
    "FrameSink",
    "LostCallback",
    "Outbox",
    "batches",
]

MAX_MESSAGE_BYTES = 16 * 2**20  # batches are ~4 MiB; large values travel in 1 MiB chunks
BATCH_BYTES = 4 * 2**20

FrameSink = Callable[[list[pb.Frame]], None]
LostCallback = Callable[[EnclaveError], None]


def batches(frames: list[pb.Frame]) -> Iterator[pb.Batch]:
    """Group frames into batches of about ``BATCH_BYTES`` (a bundle upload is many chunks)."""
    if len(frames) == 1:
        yield pb.Batch(frames=frames)
        return
    start, size = 0, 0
    for index, frame in enumerate(frames):
        frame_size = frame.ByteSize()
        if size and size + frame_size > BATCH_BYTES:
            yield pb.Batch(frames=frames[start:index])
            start, size = index, 0
        size += frame_size
    yield pb.Batch(frames=frames[start:])


class Outbox:
    """The batches a gRPC stream has yet to take, with their size in bytes.

    Producers never block in ``put``; whoever makes unbounded amounts of one-way
    data (the enclave's output) waits in ``wait_below`` until gRPC, held back by
    HTTP/2 flow control when the peer reads slowly, has taken enough of it.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[pb.Batch, int] | None] = queue.SimpleQueue()
        self._backlog = 0
        self._drained = threading.Condition()

    @property
    def backlog(self) -> int:
        """Bytes queued and not yet taken by gRPC."""
        return self._backlog

    def put(self, frames: list[pb.Frame]) -> None:
        for batch in batches(frames):
            size = batch.ByteSize()
            with self._drained:
                self._backlog += size
            self._queue.put((batch, size))

    def close(self) -> None:
        """End the stream after what is queued."""
        self._queue.put(None)

    def __iter__(self) -> Iterator[pb.Batch]:
        while (item := self._queue.get()) is not None:
            batch, size = item
            with self._drained:
                self._backlog -= size
                self._drained.notify_all()
            yield batch

    def wait_below(self, limit: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the backlog to fall to ``limit``; True if it did."""
        with self._drained:
            return self._drained.wait_for(lambda: self._backlog <= limit, timeout)
