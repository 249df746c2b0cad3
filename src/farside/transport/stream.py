"""The stream transport: length-prefixed ``Batch`` messages on one socket.

The same session core and the same frames as the gRPC transport, without HTTP/2
and without gRPC's threads between a call and the wire. A connection is a Unix
socket (local proxies) or TCP with TLS 1.3 (remote proxies), opened by the client.
The socket family is a seam (``farside.transport.sockets.SocketScheme``):
``farside.transport.vsock`` runs this same code on vsock, for a proxy inside a Nitro
Enclave.

On the wire, after TLS: the client sends ``PREFACE`` and its session token as one
message; the proxy answers with an empty message (accepted) or a ``Batch`` holding
one ``Close`` frame that says why not, and hangs up. Then both sides send
``Batch`` messages, each a 4-byte big-endian length and the serialized batch.

Threads. Each end has one reader thread, which parses what arrives and hands it
to the endpoint (as gRPC's reader does). Sending never blocks: ``send`` encodes
(and encrypts) under the caller's lock, appends to an ordered queue, and, if no
one else is writing, writes as much as the socket takes at once
(``MSG_DONTWAIT``). Only what the socket cannot take now is left to a writer
thread, which waits for the peer. So an empty call crosses two thread hand-offs
(reader to worker on the proxy, reader to caller on the client) instead of gRPC's
six, and the endpoint's lock is never held across blocking I/O.

TLS runs over memory BIOs (``ssl.SSLObject``) behind a small lock: OpenSSL objects
must not be used by two threads at once, and this way the reader decrypts while a
sender encrypts, with the socket I/O itself outside the lock.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from .._errors import EnclaveError, EnclaveLoadError, EnclaveUnavailableError, StatusCode
from .._proto.v1 import session_pb2 as pb
from .._tls import TLSConfig
from .base import (
    MAX_MESSAGE_BYTES,
    Admission,
    Buffer,
    FrameSink,
    LostCallback,
    OnOpen,
    ReadingGate,
    Refusal,
    refusal_error,
)
from .framing import LENGTH, FrameReader, encode_frames
from .sockets import (
    HOST_SOCKETS,
    SocketAddress,
    SocketScheme,
    SourceShares,
    accept_loop,
    listening_socket,
)

__all__ = [
    "PREFACE",
    "StreamClientTransport",
    "StreamConnection",
    "StreamListener",
    "client_context",
    "connect",
    "listen",
]

log = logging.getLogger("farside")

PREFACE = b"farside-stream/1\n"
HANDSHAKE_TIMEOUT = 10.0  # seconds for TCP, TLS and the preface, on either side
MAX_PENDING_HANDSHAKES = 8  # connections the proxy vets at once; more are dropped
MAX_PENDING_PER_SOURCE = 2  # of which from one TCP source address
_MAX_TOKEN_BYTES = 1024
_MAX_ANSWER_BYTES = 1 << 16  # an empty message or one Close
_LEN = LENGTH
_RECV_BYTES = 1 << 18
_RECV_WAIT = 0.1  # (seconds) how long one read waits at most, with readers sharing
_RAW_DIRECT = 1 << 16  # a blob needing this much more is read straight into its buffer
_SENDMSG_PARTS = 64


def _after(parts: list[Buffer], sent: int) -> list[Buffer]:
    """What of ``parts`` is left after the first ``sent`` bytes were written."""
    for index, part in enumerate(parts):
        if sent < len(part):
            rest = parts[index:]
            if sent:
                rest[0] = memoryview(part)[sent:]
            return rest
        sent -= len(part)
    return []


def _no_sink(frames: list[pb.Frame], blobs: Sequence[bytes] = ()) -> None:
    raise RuntimeError("frames arrived before the connection started")


def _within(sock: socket.socket, deadline: float) -> None:
    """Give the socket's next blocking call what is left until ``deadline`` (a handshake
    has one deadline in all, so a peer trickling bytes cannot stretch it)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out during the handshake")
    sock.settimeout(left)


class _TLS:
    """TLS over memory BIOs: any thread encrypts or decrypts; the socket stays ours."""

    def __init__(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._object = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self._lock = threading.Lock()
        self.closed = False  # the peer sent close_notify

    def handshake(self, sock: socket.socket, deadline: float) -> bytes:
        """Run the handshake on a socket by ``deadline`` (blocking; nothing else runs yet).

        Returns the plaintext that arrived with the handshake's last flight (a client
        sends its first message right behind its Finished)."""
        while True:
            try:
                self._object.do_handshake()
            except ssl.SSLWantReadError:
                _within(sock, deadline)
                sock.sendall(self._outgoing.read())
                _within(sock, deadline)
                data = sock.recv(_RECV_BYTES)
                if not data:
                    raise ConnectionError("the peer hung up during the TLS handshake") from None
                self._incoming.write(data)
                continue
            except ssl.SSLError:
                with contextlib.suppress(OSError):  # the alert that tells the peer why
                    sock.sendall(self._outgoing.read())
                raise
            _within(sock, deadline)
            sock.sendall(self._outgoing.read())
            return self.decrypt(b"") or b""

    def peer_certificate(self) -> bytes | None:
        return self._object.getpeercert(binary_form=True)

    def encrypt(self, data: Buffer) -> bytes:
        with self._lock:
            self._object.write(data)
            return self._outgoing.read()

    def decrypt(self, data: bytes) -> bytes | None:
        """The plaintext in ``data`` (maybe empty), or None once the peer closed TLS.

        Whatever TLS itself has to send back stays in the outgoing BIO: the next
        ``encrypt`` takes it ahead of its own record, so records leave in the order they
        were made (OpenSSL defers a KeyUpdate's answer to the next write anyway)."""
        chunks: list[bytes] = []
        with self._lock:
            self._incoming.write(data)
            try:
                while not self.closed:
                    chunk = self._object.read(_RECV_BYTES)
                    if not chunk:  # close_notify: read() returns b"" from now on
                        self.closed = True
                    chunks.append(chunk)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                self.closed = True
        plain = b"".join(chunks)
        return None if self.closed and not plain else plain


class _RefusedError(Exception):
    """The proxy's answer to our preface said no."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class StreamOutbox:
    """Bytes queued for the socket, in order, and how many there are (for backpressure).

    One lock guards the queue; the writer thread sleeps on ``wanted`` and threads
    holding back output on ``drained``, which is signalled only while one waits, so
    the common case (everything written at once) wakes nobody.
    """

    def __init__(self) -> None:
        self.parts: deque[memoryview | bytes] = deque()
        self.backlog = 0
        self.lock = threading.Lock()
        self.wanted = threading.Condition(self.lock)
        self.drained = threading.Condition(self.lock)
        self.watchers = 0
        self.writer_wanted = False
        self.closing = False

    def wait_below(self, limit: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the backlog to fall to ``limit``; True if it did."""
        with self.lock:
            self.watchers += 1
            try:
                return self.drained.wait_for(lambda: self.backlog <= limit, timeout)
            finally:
                self.watchers -= 1

    def consume(self, sent: int) -> None:
        """(under ``lock``) ``sent`` bytes from the front were written."""
        self.backlog -= sent
        while sent:
            head = self.parts[0]
            if len(head) <= sent:
                sent -= len(head)
                self.parts.popleft()
            else:
                self.parts[0] = memoryview(head)[sent:]
                sent = 0
        if self.watchers:
            self.drained.notify_all()


class StreamConnection:
    """One established session connection (either end): ``send`` frames, read on a thread.

    ``start(sink, lost)`` starts the reader; ``lost(error)`` is called once if the
    connection ends for any reason but ``close``/``finish`` on this side.

    ``answer_end``: when the peer ends its side, end ours too (after what is queued)
    instead of waiting for ``close``. The client does: once the proxy has ended the
    session nothing the client sends matters, and a proxy that ends a session
    (SIGTERM, a broken protocol) waits for the client's end before it exits. The
    proxy does not: after the client's end it may still flush output the client reads.
    """

    def __init__(
        self, sock: socket.socket, tls: _TLS | None, peer: str, *, answer_end: bool = False
    ) -> None:
        self._sock = sock
        self._tls = tls
        self.peer = peer
        self._answer_end = answer_end
        self.outbox = StreamOutbox()
        self._send_lock = threading.Lock()  # whoever holds it writes to the socket
        self._reader: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._ending = False  # close()/finish() called: the end is not a loss
        self._broken: OSError | None = None
        self._eof = threading.Event()
        self._lost: LostCallback | None = None
        self._lost_called = False
        self._lost_lock = threading.Lock()
        self._deadline: float | None = None  # the handshake's, while it runs
        self._leftover = b""  # read past the handshake: the reader starts with it
        self._gate: ReadingGate | None = None
        self._sink: FrameSink = _no_sink
        self._frames = FrameReader()  # what was read and not parsed yet (whoever reads)
        self._read_over = False
        self._poller = select.poll()
        self._recv_bounded = False  # SO_RCVTIMEO set: a recv returns within _RECV_WAIT

    # ----------------------------------------------------------------- sending

    @property
    def backlog(self) -> int:
        """Bytes queued for the peer that the socket has not taken yet."""
        return self.outbox.backlog

    def wait_below(self, limit: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the backlog to fall to ``limit``; True if it did."""
        return self.outbox.wait_below(limit, timeout)

    def send(self, frames: list[pb.Frame], blobs: Sequence[Buffer] = ()) -> None:
        """Queue frames (and the out-of-band bytes of their Blob frames) for the peer and
        write what the socket takes now, in one system call (never blocks)."""
        self._queue(encode_frames(frames, blobs))

    def queue(self, frames: list[pb.Frame], blobs: Sequence[Buffer] = ()) -> None:
        """Queue frames (and their blobs) without writing; ``flush`` writes. Callers queue
        under their endpoint's lock (so frames keep their order) and flush after it."""
        self._queue(encode_frames(frames, blobs), write=False)

    def flush(self) -> None:
        """Write what is queued, unless another thread is writing: it writes ours too."""
        outbox = self.outbox
        while outbox.parts and self._send_lock.acquire(blocking=False):
            try:
                full = self._write(block=False)
            finally:
                self._send_lock.release()
            if full:  # the socket is full: the rest waits for the peer
                with outbox.lock:
                    if outbox.parts:
                        outbox.writer_wanted = True
                        outbox.wanted.notify()
                return
        # Not taken: its holder looks at the queue again once it has let go of the lock.

    def _queue(self, parts: list[Buffer], *, write: bool = True) -> None:
        outbox = self.outbox
        if self._broken is not None or outbox.closing:
            return  # the connection is gone; the endpoint learns it from the reader
        if self._tls is not None:
            try:
                parts = [self._tls.encrypt(part) for part in parts]
            except ssl.SSLError as exc:  # TLS failed (the reader reports why): never raise
                self._break(exc)
                return
        # The fast path: nothing queued ahead of us and nobody writing, so write now.
        # (Callers send under their endpoint's lock, so frames keep their order.)
        if write and not outbox.parts and self._send_lock.acquire(blocking=False):
            try:
                if not outbox.parts:
                    left = self._send_now(parts)
                    if not left:
                        return
                    parts = left
                with outbox.lock:
                    outbox.parts.extend(parts)
                    outbox.backlog += sum(len(part) for part in parts)
            finally:
                self._send_lock.release()
        else:
            size = len(parts[0]) if len(parts) == 1 else sum(len(part) for part in parts)
            with outbox.lock:
                outbox.parts.extend(parts)
                outbox.backlog += size
        if write:
            self.flush()

    def _send_now(self, parts: list[Buffer]) -> list[Buffer] | None:
        """(holding the send lock, nothing queued) Write what the socket takes now, in
        one system call; what is left (None: nothing, or the connection broke)."""
        try:
            if len(parts) == 1:
                sent = self._sock.send(parts[0], socket.MSG_DONTWAIT)
            else:
                sent = self._sock.sendmsg(parts[:_SENDMSG_PARTS], (), socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._break(exc)
            return None
        return _after(parts, sent) or None

    def _break(self, exc: OSError) -> None:
        outbox = self.outbox
        with outbox.lock:
            self._broken = exc
            outbox.parts.clear()
            outbox.backlog = 0
            outbox.drained.notify_all()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # the reader reports it

    def _write(self, *, block: bool) -> bool:
        """(holding the send lock) Write queued bytes until none are left, or, not
        blocking, until the socket is full (then True)."""
        outbox = self.outbox
        flags = 0 if block else socket.MSG_DONTWAIT
        while True:
            with outbox.lock:
                queued = outbox.parts
                if not queued or self._broken is not None:
                    return False
                one = queued[0] if len(queued) == 1 else None
                parts = None if one is not None else list(itertools.islice(queued, _SENDMSG_PARTS))
            try:
                if one is not None:  # the common case: one message, no iovec to build
                    sent = self._sock.send(one, flags)
                else:
                    sent = self._sock.sendmsg(parts, (), flags)  # type: ignore[arg-type]
            except BlockingIOError:
                return True
            except InterruptedError:
                continue
            except OSError as exc:
                self._break(exc)
                return False
            with outbox.lock:
                if self._broken is None:  # else _break (a failed encrypt) cleared the queue
                    outbox.consume(sent)
                    if not outbox.parts:
                        return False  # all written: no need to take the lock to look again

    def _write_loop(self) -> None:
        outbox = self.outbox
        while True:
            with outbox.lock:
                outbox.wanted.wait_for(lambda: outbox.writer_wanted or outbox.closing)
                outbox.writer_wanted = False
                closing = outbox.closing
            with self._send_lock:
                self._write(block=True)
            self.flush()  # queued while we let go of the lock: its sender left it to us
            if closing:
                with outbox.lock:
                    if outbox.parts and self._broken is None:
                        continue  # queued after we looked: write it too
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_WR)
                return

    # ----------------------------------------------------------------- receiving

    def _recv(self) -> bytes | None:
        """The next plaintext bytes (maybe empty), or None at the end of the stream."""
        if self._tls is not None and self._tls.closed:
            return None
        if self._deadline is not None:
            _within(self._sock, self._deadline)
        data = self._sock.recv(_RECV_BYTES)
        if not data:
            return None
        if self._tls is None:
            return data
        return self._tls.decrypt(data)

    def read_message(self, already: bytes = b"", limit: int = MAX_MESSAGE_BYTES) -> bytes | None:
        """Read one length-prefixed message before the reader starts (the handshake).

        ``already`` holds bytes read past what came before; None if the peer hung up
        or the message is longer than ``limit``. Bytes read past it stay for the reader.
        """
        buffer = bytearray(already)
        while True:
            if len(buffer) >= _LEN.size:
                (size,) = _LEN.unpack_from(buffer)
                if size > limit:
                    return None
                if len(buffer) >= _LEN.size + size:
                    self._leftover = bytes(buffer[_LEN.size + size :])
                    return bytes(buffer[_LEN.size : _LEN.size + size])
            data = self._recv()
            if data is None:
                return None
            buffer += data

    def share_reading(self, gate: ReadingGate) -> None:
        """Let the threads waiting in ``gate`` (the session endpoint) read this connection
        themselves (leader/follower; ``farside.transport.endpoint``). Before ``start``."""
        self._gate = gate

    def start(self, sink: FrameSink, lost: LostCallback) -> None:
        """Start the reader (and the writer, which sleeps until a write would block)."""
        self._lost = lost
        self._sink = sink
        self._poller.register(self._sock, select.POLLIN)
        if self._gate is not None:  # a waiting thread's recv returns within _RECV_WAIT
            seconds = int(_RECV_WAIT)
            micros = int((_RECV_WAIT - seconds) * 1e6)
            with contextlib.suppress(OSError):  # if refused, waiting threads poll first
                self._sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, micros)
                )
                self._recv_bounded = True
        self._frames.feed(self._leftover)
        self._leftover = b""
        if self._gate is not None:
            self._gate.start_reading(self.pump)
        reader = threading.Thread(target=self._read_loop, name="farside-stream-reader", daemon=True)
        writer = threading.Thread(
            target=self._write_loop, name="farside-stream-writer", daemon=True
        )
        # Published only once running: close() may race this (the proxy stopping as the
        # session opens) and must never join a thread that has not started.
        writer.start()
        self._writer = writer
        reader.start()
        self._reader = reader

    def _read_loop(self) -> None:
        gate = self._gate
        if gate is None:
            while self.pump(None):
                pass
            return
        while gate.reader_turn(lambda: self._ending or self.outbox.closing):
            try:
                going = self.pump(None)
            finally:
                gate.reader_done()
            if not going:
                return

    def pump(self, timeout: float | None) -> bool:
        """Read once (waiting up to ``timeout`` s; None: as long as it takes) and hand
        every complete message's frames to the sink in one call. One thread at a time.

        False once the stream has ended (then the loss is reported, once).
        """
        if self._read_over:
            return False
        error: EnclaveError | None = None
        try:
            # Waiting in recv itself (bounded by SO_RCVTIMEO) costs the peer's send less
            # than waiting in poll; poll only for a shorter wait (a deadline near).
            if (
                timeout is not None
                and (timeout < _RECV_WAIT or not self._recv_bounded)
                and not self._poller.poll(max(0, int(timeout * 1000)) or 1)
            ):
                return True
            try:
                if self._read_some():
                    return True
            except BlockingIOError:  # SO_RCVTIMEO passed: nothing came
                return True
            if self._answer_end:
                self._end_writing()
        except (OSError, ssl.SSLError) as exc:
            error = EnclaveUnavailableError(f"lost the connection to {self.peer}: {exc}")
        except Exception as exc:  # an unparsable message, or a bug in a sink
            error = EnclaveUnavailableError(f"the session with {self.peer} failed: {exc!r}")
        self._read_over = True
        self._eof.set()
        if self._broken is not None and error is None:
            error = EnclaveUnavailableError(f"lost the connection to {self.peer}: {self._broken}")
        self._report(error or EnclaveUnavailableError(f"{self.peer} ended the session"))
        if self._gate is not None:
            self._gate.reading_over()
        return False

    def _read_some(self) -> bool:
        """One read (it may block): feed what completes; False at the end of the stream."""
        reader = self._frames
        target = reader.raw_target() if self._tls is None else None
        if target is not None and len(target) >= _RAW_DIRECT:
            with target:
                count = self._sock.recv_into(target)  # a blob's bytes, straight to their place
            if not count:
                return False
            reader.raw_written(count)
        else:
            if target is not None:
                target.release()
            data = self._recv()
            if data is None:
                return False
            reader.feed(data)
        if self._gate is not None:
            reader.max_blob_bytes = self._gate.max_value_size
        frames, blobs = reader.take()
        if frames:
            self._deliver(frames, blobs)
        return True

    def _deliver(self, frames: list[pb.Frame], blobs: list[bytes | bytearray]) -> None:
        if blobs:
            self._sink(frames, blobs)
        else:
            self._sink(frames)

    def _report(self, error: EnclaveError) -> None:
        with self._lost_lock:
            if self._lost_called or self._ending or self._lost is None:
                return
            self._lost_called = True
        self._lost(error)

    # ----------------------------------------------------------------- ending

    def finish(self) -> None:
        """End our side after what is queued (the peer reads to the end, then hangs up)."""
        self._ending = True
        self._end_writing()

    def _end_writing(self) -> None:
        """The writer sends what is queued, then shuts our side; later sends are dropped."""
        with self.outbox.lock:
            self.outbox.closing = True
            self.outbox.wanted.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Finish, wait up to ``timeout`` for the peer to hang up, then drop the socket."""
        self.finish()
        if self._writer is None:  # never started: nothing queued can matter
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout

        def left() -> float:  # one timeout for all the waits together
            return max(0.0, deadline - time.monotonic())

        current = threading.current_thread()
        if self._writer is not None and self._writer is not current:
            self._writer.join(left())
        if self._reader is not None and self._reader is not current:
            self._eof.wait(left())
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if self._reader is not None and self._reader is not current:
            self._reader.join(left())
        self._sock.close()


def _refusal(refusal: Refusal) -> bytes:
    error = pb.Error(code=int(refusal.code), type="Refused", message=refusal.message)
    close = pb.Frame(close=pb.Close(error=error))
    body = pb.Batch(frames=[close]).SerializeToString()
    return _LEN.pack(len(body)) + body


class StreamClientTransport:
    """The client's end: ``start`` connects and starts reading; ``send`` queues frames.

    ``tls`` is the client context (pinned to the proxy's certificate) for TCP
    targets; ``server_hostname`` is the name that certificate carries (default: the
    target's host). ``sockets`` turns the target into a socket (``HOST_SOCKETS``:
    Unix or TCP).
    """

    def __init__(
        self,
        target: str,
        *,
        token: str,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        connect_timeout: float = HANDSHAKE_TIMEOUT,
        sockets: SocketScheme = HOST_SOCKETS,
    ) -> None:
        self.target = target
        self._sockets = sockets
        self._token = token.encode()
        self._tls_context = tls
        self._server_hostname = server_hostname
        self._connect_timeout = connect_timeout
        self._connection: StreamConnection | None = None
        self._closed = False
        self._gate: ReadingGate | None = None

    def share_reading(self, gate: ReadingGate) -> None:
        """Let threads waiting in ``gate`` read the connection themselves (before ``start``)."""
        self._gate = gate

    @property
    def backlog(self) -> int:
        """Bytes queued for the proxy that the socket has not taken yet."""
        return self._connection.backlog if self._connection is not None else 0

    def wait_below(self, limit: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the backlog to fall to ``limit``; True if it did."""
        return self._connection is None or self._connection.wait_below(limit, timeout)

    def start(self, sink: FrameSink, lost: LostCallback) -> None:
        """Connect, authenticate and start the reader; a failure is ``lost(error)``."""
        try:
            self._connection = self._connect()
        except _RefusedError as exc:
            lost(refusal_error(self.target, exc.refusal))
            return
        except (OSError, ssl.SSLError, ValueError) as exc:
            lost(EnclaveUnavailableError(f"cannot reach the enclave proxy at {self.target}: {exc}"))
            return
        if self._gate is not None:
            self._connection.share_reading(self._gate)
        self._connection.start(sink, lost)

    def _connect(self) -> StreamConnection:
        where = self._sockets.resolve(self.target, listening=False)
        sock = socket.socket(where.family, socket.SOCK_STREAM)
        deadline = time.monotonic() + self._connect_timeout
        try:
            sock.settimeout(self._connect_timeout)
            sock.connect(where.address)
            self._sockets.tune(sock)
            tls, early = None, b""
            if self._tls_context is not None:
                hostname = self._server_hostname or where.tls_name
                tls = _TLS(self._tls_context, server_side=False, server_hostname=hostname)
                early = tls.handshake(sock, deadline)
            connection = StreamConnection(
                sock, tls, f"the enclave proxy at {self.target}", answer_end=True
            )
            connection._deadline = deadline
            hello = PREFACE + _LEN.pack(len(self._token)) + self._token
            _within(sock, deadline)
            sock.sendall(tls.encrypt(hello) if tls is not None else hello)
            answer = connection.read_message(early, limit=_MAX_ANSWER_BYTES)
            if answer is None:  # hung up, or an answer too long to be one
                raise ConnectionError("the proxy hung up before answering")
            if answer:
                try:
                    frames = pb.Batch.FromString(answer).frames
                except DecodeError:
                    raise ConnectionError("the proxy's answer is not a verdict") from None
                error = frames[0].close.error if frames and frames[0].HasField("close") else None
                if error is None:
                    raise ConnectionError("the proxy answered with something else than a verdict")
                raise _RefusedError(Refusal(StatusCode.coerce(error.code), error.message))
            connection._deadline = None
            sock.settimeout(None)
            return connection
        except BaseException:
            sock.close()
            raise

    def send(self, frames: list[pb.Frame], blobs: Sequence[Buffer] = ()) -> None:
        """Queue frames (and their blobs' bytes) for the proxy (never blocks)."""
        if self._connection is not None:
            self._connection.send(frames, blobs)

    def queue(self, frames: list[pb.Frame], blobs: Sequence[Buffer] = ()) -> None:
        """Queue frames without writing them (``flush`` writes)."""
        if self._connection is not None:
            self._connection.queue(frames, blobs)

    def flush(self) -> None:
        """Write what is queued (unless another thread is writing it)."""
        if self._connection is not None:
            self._connection.flush()

    def close(self, timeout: float = 5.0) -> None:
        """Finish our side, wait up to ``timeout`` for the proxy to end, then hang up."""
        if self._closed:
            return
        self._closed = True
        if self._connection is not None:
            self._connection.close(timeout)


class StreamListener:
    """The proxy's end: accept the one connection ``admission`` admits as the session.

    ``on_open(connection)`` returns the sink for the session's frames and
    ``on_lost(error)`` is called if it breaks. A refused connection (a wrong token, or
    any after the session's) is told why and closed; it never disturbs the session.
    ``sockets`` turns ``listen`` into a socket (``HOST_SOCKETS``: Unix or TCP).
    """

    def __init__(
        self,
        listen: str,
        *,
        admission: Admission,
        on_open: OnOpen,
        on_lost: LostCallback,
        tls: ssl.SSLContext | None = None,
        sockets: SocketScheme = HOST_SOCKETS,
    ) -> None:
        self._listen = listen
        self._sockets = sockets
        self._bound: SocketAddress | None = None
        self._admission = admission
        self._on_open = on_open
        self._on_lost = on_lost
        self._tls = tls
        self._sock: socket.socket | None = None
        self._vetting = threading.BoundedSemaphore(MAX_PENDING_HANDSHAKES)
        self._pending = SourceShares(MAX_PENDING_PER_SOURCE)  # connections being vetted
        self._connection: StreamConnection | None = None
        self._stopped = False

    def start(self) -> str:
        """Bind and accept in the background; return the address clients dial."""
        where = self._sockets.resolve(self._listen, listening=True)
        sock = listening_socket(where, MAX_PENDING_HANDSHAKES)
        self._sock = sock
        self._bound = where
        accept = threading.Thread(
            target=accept_loop,
            args=(sock, lambda: self._stopped, self._take),
            name="farside-stream-accept",
            daemon=True,
        )
        accept.start()
        return self._sockets.shown(self._listen, sock)

    def _take(self, conn: socket.socket, peer: Any) -> None:
        # One source may not take every vetting slot: a flood from one address
        # would otherwise keep the real client out.
        source = self._sockets.source(peer)
        if not self._pending.take(source):
            conn.close()
            return
        if not self._vetting.acquire(blocking=False):
            self._pending.give_back(source)
            conn.close()  # too many half-open connections at once
            return
        threading.Thread(
            target=self._admit,
            args=(conn, source),
            name="farside-stream-admit",
            daemon=True,
        ).start()

    def _admit(self, conn: socket.socket, source: str) -> None:
        try:
            self._vet(conn)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.info("refused a connection: %s", exc)
            conn.close()
        except Exception:
            log.exception("failed to vet a connection")
            conn.close()
        finally:
            self._vetting.release()
            self._pending.give_back(source)

    def _vet(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT  # for all of it, not each recv
        conn.settimeout(HANDSHAKE_TIMEOUT)
        self._sockets.tune(conn)
        tls = None
        head = b""
        if self._tls is not None:
            tls = _TLS(self._tls, server_side=True)
            head = tls.handshake(conn, deadline)
        connection = StreamConnection(conn, tls, "the client")
        connection._deadline = deadline
        while len(head) < len(PREFACE):
            data = connection._recv()
            if data is None:  # b"" is a TLS record without application data
                raise ConnectionError("the client hung up before its preface")
            head += data
        if not head.startswith(PREFACE):
            raise ConnectionError("not a farside stream client")
        token = connection.read_message(head[len(PREFACE) :], limit=_MAX_TOKEN_BYTES)

        def answer(data: bytes) -> None:
            _within(conn, deadline)
            conn.sendall(tls.encrypt(data) if tls is not None else data)

        refusal = self._admission.admit(token if token is not None else b"")
        if refusal is not None:
            answer(_refusal(refusal))
            conn.close()
            return
        connection._deadline = None
        conn.settimeout(None)
        self._connection = connection
        sink = self._on_open(connection)
        # The session is taken: from here a failure (the client already gone) must
        # reach on_lost. Queued, the answer goes first; a broken socket is the reader's.
        connection._queue([_LEN.pack(0)])
        connection.start(sink, self._on_lost)

    def finish(self) -> None:
        """End the session's stream after the frames already queued."""
        if self._connection is not None:
            self._connection.finish()

    def stop(self, grace: float) -> None:
        """Stop accepting, and drop the session after ``grace`` seconds at most."""
        self._stopped = True
        self._admission.close()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            if self._bound is not None and isinstance(self._bound.address, str):
                with contextlib.suppress(OSError):  # a Unix socket's path
                    Path(self._bound.address).unlink()
        if self._connection is not None:
            self._connection.close(grace)


def client_context(tls: TLSConfig | None) -> ssl.SSLContext | None:
    """The client's ``ssl`` context for ``tls``; ``EnclaveLoadError`` if it cannot be used."""
    try:
        return tls.client_ssl_context() if tls is not None else None
    except ValueError as exc:
        raise EnclaveLoadError(str(exc), code=StatusCode.INVALID_ARGUMENT) from exc


def connect(address: str, *, token: str, tls: TLSConfig | None) -> StreamClientTransport:
    """The client's end of a stream session with the proxy at ``address``."""
    return StreamClientTransport(address, token=token, tls=client_context(tls))


def listen(
    address: str,
    *,
    admission: Admission,
    on_open: OnOpen,
    on_lost: LostCallback,
    tls: TLSConfig | None = None,
    sockets: SocketScheme = HOST_SOCKETS,
) -> StreamListener:
    """The proxy's stream end on ``address`` (TLS 1.3 when ``tls`` is given); ``sockets``
    turns ``address`` into a socket (``HOST_SOCKETS``: Unix or TCP)."""
    return StreamListener(
        address,
        admission=admission,
        on_open=on_open,
        on_lost=on_lost,
        tls=tls.server_ssl_context() if tls is not None else None,
        sockets=sockets,
    )
