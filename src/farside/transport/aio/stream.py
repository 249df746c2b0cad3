"""The stream transport's client end on an event loop: an ``asyncio.Protocol``.

The wire is ``farside.transport.stream``'s, byte for byte: after TLS (asyncio's own,
for TCP) the client sends ``PREFACE`` and its token as one message, the proxy answers
with an empty message (accepted) or a ``Batch`` holding one ``Close`` (refused), then
both sides send ``Batch`` messages, each a 4-byte big-endian length and the batch.

No threads: ``data_received`` parses the messages in place and hands each batch to
the sink on the loop, and ``send`` writes into the loop's transport, which keeps what
the socket cannot take now (``backlog``; ``drain`` waits for it, through asyncio's
flow control). The socket is connected and tuned (keepalive, no Nagle) exactly as the
threaded client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from typing import Any

from google.protobuf.message import DecodeError

from ..._errors import EnclaveError, EnclaveUnavailableError, StatusCode
from ..._proto.v1 import session_pb2 as pb
from ..._tls import TLSConfig
from ..base import MAX_MESSAGE_BYTES, FrameSink, LostCallback, Refusal, batches, refusal_error
from ..sockets import HOST_SOCKETS, SocketScheme
from ..stream import HANDSHAKE_TIMEOUT, PREFACE, client_context

__all__ = ["AsyncStreamClientTransport", "connect"]

_LEN = struct.Struct(">I")
_MAX_ANSWER_BYTES = 1 << 16  # an empty message or one Close
_HIGH_WATER = 4 * 2**20  # drain() waits while more than this waits for the socket


class _RefusedError(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class _SessionProtocol(asyncio.Protocol):
    """Parses the proxy's messages as they arrive; the first one is its verdict."""

    def __init__(self, loop: asyncio.AbstractEventLoop, peer: str) -> None:
        self._loop = loop
        self._peer = peer
        self._buffer = bytearray()
        self.verdict: asyncio.Future[bytes] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._sink: FrameSink | None = None
        self._lost: LostCallback | None = None
        self._error: EnclaveError | None = None
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        self.closing = False  # our side ended it: not a loss

    # ------------------------------------------------------------ asyncio's callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._parse()

    def eof_received(self) -> bool | None:
        return None  # the proxy ended its side: end ours too (after what is queued)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.verdict.done():
            self.verdict.set_exception(
                ConnectionError(f"the proxy hung up before answering{f': {exc}' if exc else ''}")
            )
        if self._error is None:
            if exc is not None:
                self._error = EnclaveUnavailableError(f"lost the connection to {self._peer}: {exc}")
            else:
                self._error = EnclaveUnavailableError(f"{self._peer} ended the session")
        self._wake_drainer()
        if not self.ended.done():
            self.ended.set_result(None)
        self._report()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drainer()

    # ------------------------------------------------------------ ours

    def begin(self, sink: FrameSink, lost: LostCallback) -> None:
        """The session is admitted: frames go to ``sink`` from now on (and any read)."""
        self._sink = sink
        self._lost = lost
        self._parse()
        if self.ended.done():
            self._report()

    def _report(self) -> None:
        lost, self._lost = self._lost, None
        if lost is not None and not self.closing and self._error is not None:
            lost(self._error)

    def _fail(self, error: EnclaveError) -> None:
        if self._error is None:
            self._error = error
        if self.transport is not None:
            self.transport.abort()  # connection_lost reports it

    def _parse(self) -> None:
        buffer = self._buffer
        offset = 0
        try:
            while len(buffer) - offset >= _LEN.size:
                if self.verdict.done() and self._sink is None:
                    break  # the verdict is being read: frames wait for begin()
                (size,) = _LEN.unpack_from(buffer, offset)
                limit = MAX_MESSAGE_BYTES if self.verdict.done() else _MAX_ANSWER_BYTES
                if size > limit:
                    raise ConnectionError(
                        f"the peer sent a {size}-byte message (the limit is {limit})"
                    )
                end = offset + _LEN.size + size
                if len(buffer) < end:
                    break
                if not self.verdict.done():
                    self.verdict.set_result(bytes(buffer[offset + _LEN.size : end]))
                    offset = end
                    continue
                with memoryview(buffer) as view, view[offset + _LEN.size : end] as message:
                    batch = pb.Batch.FromString(message)  # type: ignore[arg-type]  # in place
                offset = end
                assert self._sink is not None
                self._sink(list(batch.frames))
        except ConnectionError as exc:
            self._fail(EnclaveUnavailableError(f"lost the connection to {self._peer}: {exc}"))
        except Exception as exc:  # an unparsable message, or a bug in a sink
            self._fail(EnclaveUnavailableError(f"the session with {self._peer} failed: {exc!r}"))
        finally:
            if offset:
                del buffer[:offset]

    def _wake_drainer(self) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        while self._paused and not self.ended.done():
            if self._drained is None:
                self._drained = self._loop.create_future()
            await self._drained


class AsyncStreamClientTransport:
    """The client's end on the running loop: ``start`` connects, ``send`` queues frames.

    ``tls`` is the client context (pinned to the proxy's certificate) for TCP
    targets; ``server_hostname`` is the name that certificate carries (default: the
    target's host).
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
        self._token = token.encode()
        self._tls = tls
        self._server_hostname = server_hostname
        self._connect_timeout = connect_timeout
        self._sockets = sockets
        self._protocol: _SessionProtocol | None = None
        self._closed = False

    @property
    def backlog(self) -> int:
        """Bytes queued for the proxy that the socket has not taken yet."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            return 0
        return protocol.transport.get_write_buffer_size()

    async def drain(self) -> None:
        """Wait until the backlog is below the high-water mark (asyncio's flow control)."""
        if self._protocol is not None:
            await self._protocol.drain()

    async def start(self, sink: FrameSink, lost: LostCallback) -> None:
        """Connect, authenticate and start reading; a failure is ``lost(error)``."""
        try:
            async with asyncio.timeout(self._connect_timeout):
                protocol = await self._connect()
        except _RefusedError as exc:
            lost(refusal_error(self.target, exc.refusal))
            return
        except TimeoutError:
            lost(
                EnclaveUnavailableError(
                    f"cannot reach the enclave proxy at {self.target}: "
                    "timed out during the handshake"
                )
            )
            return
        except (OSError, ssl.SSLError, ValueError) as exc:
            lost(EnclaveUnavailableError(f"cannot reach the enclave proxy at {self.target}: {exc}"))
            return
        self._protocol = protocol
        protocol.begin(sink, lost)

    async def _connect(self) -> _SessionProtocol:
        loop = asyncio.get_running_loop()
        where = self._sockets.resolve(self.target, listening=False)
        sock = socket.socket(where.family, socket.SOCK_STREAM)
        protocol = _SessionProtocol(loop, f"the enclave proxy at {self.target}")
        transport: asyncio.Transport | None = None
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, where.address)
            self._sockets.tune(sock)
            kwargs: dict[str, Any] = {}
            if self._tls is not None:
                kwargs = {
                    "ssl": self._tls,
                    "server_hostname": self._server_hostname or where.tls_name,
                    "ssl_handshake_timeout": self._connect_timeout,
                }
            await loop.create_connection(lambda: protocol, sock=sock, **kwargs)
            transport = protocol.transport
            assert transport is not None
            transport.write(PREFACE + _LEN.pack(len(self._token)) + self._token)
            answer = await protocol.verdict
            if answer:
                try:
                    frames = pb.Batch.FromString(answer).frames
                except DecodeError:
                    raise ConnectionError("the proxy's answer is not a verdict") from None
                error = frames[0].close.error if frames and frames[0].HasField("close") else None
                if error is None:
                    raise ConnectionError("the proxy answered with something else than a verdict")
                raise _RefusedError(Refusal(StatusCode.coerce(error.code), error.message))
            return protocol
        except BaseException:
            protocol.closing = True
            if transport is not None:
                transport.abort()
            else:
                sock.close()
            raise

    def send(self, frames: list[pb.Frame]) -> None:
        """Queue frames for the proxy (never blocks; dropped once the connection is gone)."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None or protocol.transport.is_closing():
            return
        write = protocol.transport.write
        if len(frames) == 1:
            body = pb.Batch(frames=frames).SerializeToString()
            write(_LEN.pack(len(body)) + body)
            return
        for batch in batches(frames):  # large values: no copy joins the batches
            body = batch.SerializeToString()
            write(_LEN.pack(len(body)))
            write(body)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Finish our side after what is queued, wait up to ``timeout`` for the proxy to
        end, then hang up."""
        if self._closed:
            return
        self._closed = True
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            return
        protocol.closing = True
        transport = protocol.transport
        if transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()
        else:
            transport.close()  # TLS: close_notify after what is queued
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(protocol.ended), timeout)
        transport.abort()


def connect(address: str, *, token: str, tls: TLSConfig | None) -> AsyncStreamClientTransport:
    """The event-loop client end of a stream session with the proxy at ``address``."""
    return AsyncStreamClientTransport(address, token=token, tls=client_context(tls))
