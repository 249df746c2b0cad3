"""The transport seam: what every transport provides, and what they share.

A transport moves ``Batch``es of session frames between a client and its proxy and
nothing else; what a frame means is ``farside.protocol``'s. Each transport module
(``farside.transport.grpc``, ``.stream``, ``.vsock``) provides two functions,
reached by name through ``farside.transport.connect`` and ``farside.transport.listen``:

* ``connect(address, *, token, tls) -> ClientTransport``: the client's end, which the
  client opens (it never listens);
* ``listen(address, *, admission, on_open, on_lost, tls) -> Listener``: the proxy's
  end, which admits exactly one session.

What they share lives here, written once: ``Admission`` (the session token and the
one-session rule), ``refusal_error`` (a refused session becomes the client's
``EnclaveLoadError``), the ``FrameSender`` protocol with its backpressure, and the
size limits and batching of frames. This module imports no transport library.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from .._errors import EnclaveError, EnclaveLoadError, StatusCode
from .._proto.v1 import session_pb2 as pb

__all__ = [
    "BATCH_BYTES",
    "MAX_MESSAGE_BYTES",
    "Admission",
    "ClientTransport",
    "FrameSender",
    "FrameSink",
    "Listener",
    "LostCallback",
    "OnOpen",
    "ReadingGate",
    "Refusal",
    "batches",
    "inline_blobs",
    "refusal_error",
]

MAX_MESSAGE_BYTES = 16 * 2**20
"""The largest message either end accepts; batches are ~4 MiB, large values 1 MiB chunks."""
BATCH_BYTES = 4 * 2**20

Buffer = bytes | memoryview
"""A blob's bytes as the sender holds them (a view of the caller's value, not a copy)."""
FrameSink = Callable[..., None]
"""Where a transport delivers the frames it received, ``sink(frames)`` or ``sink(frames,
blobs)`` with the bytes of Blob frames received out of band (the endpoint's ``feed``)."""
BLOB_PIECE = 2**20
"""Inline (gRPC, memory), a blob's bytes travel in Blob frames of this many bytes."""
LostCallback = Callable[[EnclaveError], None]
"""Called once if the connection ends for any reason but this side's own close."""


class FrameSender(Protocol):
    """One end's way to its peer: all the session endpoint needs of a transport.

    ``send`` never blocks: it queues what the wire cannot take now. ``backlog`` is how
    many bytes are queued and not yet taken by the wire; a producer of unbounded
    one-way data (the enclave's output) waits in ``wait_below`` until the peer has
    read enough, so a slow reader holds the enclave back instead of growing memory.
    """

    def send(self, frames: list[pb.Frame], blobs: Sequence[Buffer] = ()) -> None:
        """Queue ``frames``; ``blobs`` are the bytes of their Blob frames that carry none
        (``SessionCore.blobs_to_send``), in order: sent with them, out of band or inline."""
        ...

    @property
    def backlog(self) -> int: ...

    def wait_below(self, limit: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the backlog to fall to ``limit``; True if it did."""
        ...


class ClientTransport(FrameSender, Protocol):
    """The client's end of a session: ``start`` connects, then frames flow both ways."""

    target: str

    def start(self, sink: FrameSink, lost: LostCallback) -> None:
        """Connect and deliver every batch that arrives to ``sink`` (on a reader thread).

        A failure to connect, or a refusal (``refusal_error``), is reported through
        ``lost``, as is any later loss of the connection.
        """
        ...

    def close(self, timeout: float = 5.0) -> None:
        """End our side after what is queued, wait up to ``timeout`` for the peer, drop it."""
        ...


class ReadingGate(Protocol):
    """What a session endpoint offers a transport whose reading any thread may do.

    A transport with ``share_reading(gate)`` calls ``gate.start_reading(pump)`` once it
    can be read (``pump(timeout) -> bool`` reads once and feeds what arrived; False once
    the stream ended), runs its own reader thread as ``while gate.reader_turn(): pump(None);
    gate.reader_done()``, and calls ``gate.reading_over()`` when the stream ends.
    ``farside.transport.endpoint.Endpoint`` is one (leader/follower).
    """

    @property
    def max_value_size(self) -> int:
        """The most bytes one value may hold in this session (bounds what a reader
        allocates for blobs the peer announces)."""
        ...

    def start_reading(self, pump: Callable[[float | None], bool]) -> None: ...

    def reader_turn(self, urgent: Callable[[], bool] | None = None) -> bool: ...

    def reader_done(self) -> None: ...

    def reading_over(self) -> None: ...


OnOpen = Callable[[FrameSender], FrameSink]
"""(proxy) The session was admitted: here is its sender; return the sink for its frames."""


class Listener(Protocol):
    """The proxy's end: listens on one address and serves the one admitted session."""

    def start(self) -> str:
        """Bind and start serving in the background; return the address clients dial."""
        ...

    def finish(self) -> None:
        """End the session's stream after the frames already queued."""
        ...

    def stop(self, grace: float) -> None:
        """Stop listening, and drop the session after ``grace`` seconds at most."""
        ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a proxy turned a connection away, as the client will be told."""

    code: StatusCode
    message: str


class Admission:
    """Who may open a proxy's one session: the holder of its token, once.

    Every transport asks ``admit`` with the token a connection presented, and answers
    a ``Refusal`` the same way whatever the wire: a wrong token is
    ``UNAUTHENTICATED``, any connection after the session's (or after ``close``) is
    ``FAILED_PRECONDITION``. Neither disturbs the session already admitted.
    """

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("a proxy's session needs a token")
        self._token = token.encode()
        self._taken = False
        self._lock = threading.Lock()

    def admit(self, presented: bytes | str) -> Refusal | None:
        """None if this connection is the session; else why not (constant-time compare)."""
        if isinstance(presented, str):
            presented = presented.encode("utf-8", "replace")
        if not hmac.compare_digest(presented, self._token):
            return Refusal(StatusCode.UNAUTHENTICATED, "invalid session token")
        with self._lock:
            taken, self._taken = self._taken, True
        if taken:
            return Refusal(
                StatusCode.FAILED_PRECONDITION, "this proxy already served its one session"
            )
        return None

    def close(self) -> None:
        """Admit nobody from now on (the proxy is stopping)."""
        with self._lock:
            self._taken = True


def refusal_error(target: str, refusal: Refusal) -> EnclaveLoadError:
    """The client's error for a session the proxy at ``target`` refused."""
    return EnclaveLoadError(
        f"the enclave proxy at {target} refused the session: {refusal.message}",
        code=refusal.code,
    )


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


def inline_blobs(frames: list[pb.Frame], blobs: Sequence[Buffer]) -> list[pb.Frame]:
    """``frames`` with the ``blobs`` put inside their Blob frames, for a transport that
    carries only frames: each blob's first ``BLOB_PIECE`` bytes in its Blob frame, the rest
    in Blob frames of size 0 right after it (one copy of the bytes)."""
    if not blobs:
        return frames
    out: list[pb.Frame] = []
    pending = iter(blobs)
    for frame in frames:
        if frame.WhichOneof("kind") != "blob" or frame.blob.data:
            out.append(frame)
            continue
        data = next(pending)
        view = memoryview(data).cast("B")
        out.append(pb.Frame(blob=pb.Blob(size=len(view), data=bytes(view[:BLOB_PIECE]))))
        for start in range(BLOB_PIECE, len(view), BLOB_PIECE):
            out.append(pb.Frame(blob=pb.Blob(data=bytes(view[start : start + BLOB_PIECE]))))
    return out
