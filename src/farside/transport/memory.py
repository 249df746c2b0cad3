"""An in-memory transport pair: two endpoints in one process, for tests.

Each direction is a queue drained by one pump thread, like a stream's reader;
batches are serialized and parsed on the way, so the wire encoding is exercised.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

from .._errors import EnclaveError, EnclaveUnavailableError
from .._proto.v1 import session_pb2 as pb
from .base import Buffer, inline_blobs

__all__ = ["MemoryPipe"]

Sink = Callable[[list[pb.Frame]], None]


class MemoryPipe:
    """One direction of an in-memory stream: ``send`` here, ``sink`` gets it on a pump thread."""

    def __init__(self, name: str = "memory") -> None:
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._name = name
        self._thread: threading.Thread | None = None
        self._closed = False

    backlog = 0  # the queue takes everything at once: no backpressure to wait for

    def wait_below(self, limit: int, timeout: float) -> bool:
        """Always True: nothing is ever held back."""
        return True

    def send(self, frames: list[pb.Frame], blobs: Sequence[Buffer] = ()) -> None:
        """Queue frames (serialized now, parsed on the other side); blobs go inline."""
        if not self._closed:
            self._queue.put(pb.Batch(frames=inline_blobs(frames, blobs)).SerializeToString())

    def start(self, sink: Sink, lost: Callable[[EnclaveError], None]) -> None:
        """Deliver every batch to ``sink``; call ``lost`` when the pipe is closed."""

        def pump() -> None:
            while (data := self._queue.get()) is not None:
                sink(list(pb.Batch.FromString(data).frames))
            lost(EnclaveUnavailableError(f"{self._name} pipe closed"))

        self._thread = threading.Thread(target=pump, name=f"farside-{self._name}-pump", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the pump after what is queued; ``lost`` is called once it has drained."""
        self._closed = True
        self._queue.put(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
