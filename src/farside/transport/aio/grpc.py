"""The gRPC transport's client end on an event loop: one ``grpc.aio`` stream.

The same ``Session`` stream, token metadata, options and credentials as
``farside.transport.grpc``; a ``grpc.aio`` channel belongs to the loop it was made on,
so ``start`` makes it there. A reader task feeds each batch to the sink; a writer task
writes the queued batches in order (``grpc.aio`` takes one write at a time).
``grpc.aio.AioRpcError`` becomes ``EnclaveUnavailableError``, or the refusal's
``EnclaveLoadError``, here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import grpc
import grpc.aio

from ..._errors import EnclaveError, EnclaveLoadError, EnclaveUnavailableError, StatusCode
from ..._proto.v1 import session_pb2 as pb, session_pb2_grpc as pb_grpc
from ..._tls import TLSConfig
from ..base import FrameSink, LostCallback, Refusal, batches, refusal_error
from ..grpc import TOKEN_METADATA_KEY, channel_credentials, channel_options

__all__ = ["AsyncGrpcClientTransport", "connect"]

_REFUSALS = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
)
_HIGH_WATER = 4 * 2**20


def _error(exc: grpc.aio.AioRpcError, target: str) -> EnclaveError:
    code, details = exc.code(), exc.details() or str(exc)
    if code in _REFUSALS:
        return refusal_error(target, Refusal(StatusCode.coerce(code.value[0]), details))
    return EnclaveUnavailableError(f"lost the enclave proxy at {target}: {details}")


class AsyncGrpcClientTransport:
    """The client's end of the stream on the running loop."""

    def __init__(
        self, target: str, *, token: str, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        self.target = target
        self._token = token
        self._credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._queue: deque[tuple[pb.Batch, int]] = deque()
        self._backlog = 0
        self._wanted: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._ended = False

    @property
    def backlog(self) -> int:
        """Bytes queued for the proxy and not yet taken by gRPC."""
        return self._backlog

    async def drain(self) -> None:
        """Wait until the backlog is below the high-water mark."""
        while self._backlog > _HIGH_WATER and not self._ended and self._drained is not None:
            self._drained.clear()
            await self._drained.wait()

    async def start(self, sink: FrameSink, lost: LostCallback) -> None:
        """Open the stream; every batch that arrives goes to ``sink`` on the loop.

        ``lost`` is called once if the stream ends for any reason but ``aclose()``.
        """
        options = channel_options()
        if self._credentials is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(self.target, self._credentials, options=options)
        self._wanted, self._drained = asyncio.Event(), asyncio.Event()
        stub = pb_grpc.EnclaveSessionStub(self._channel)
        self._call = stub.Session(metadata=((TOKEN_METADATA_KEY, self._token),))
        self._reader = asyncio.create_task(self._read(sink, lost), name="farside-aio-reader")
        self._writer = asyncio.create_task(self._write(), name="farside-aio-writer")

    async def _read(self, sink: FrameSink, lost: LostCallback) -> None:
        error: EnclaveError | None = None
        try:
            async for batch in self._call:
                sink(list(batch.frames))
        except grpc.aio.AioRpcError as exc:
            error = _error(exc, self.target)
        except asyncio.CancelledError:
            error = EnclaveUnavailableError(f"the session with {self.target} was cancelled")
        except Exception as exc:  # a bug in a sink must not leave waiters hanging
            error = EnclaveUnavailableError(f"session reader failed: {exc!r}")
        self._ended = True
        if self._drained is not None:
            self._drained.set()
        if self._wanted is not None:
            self._wanted.set()
        if not self._closing:
            lost(
                error
                or EnclaveUnavailableError(f"the enclave proxy at {self.target} ended the session")
            )

    async def _write(self) -> None:
        assert self._wanted is not None
        assert self._drained is not None
        try:
            while True:
                while self._queue and not self._ended:
                    batch, size = self._queue.popleft()
                    await self._call.write(batch)
                    self._backlog -= size
                    self._drained.set()
                if self._closing or self._ended:
                    break
                self._wanted.clear()
                await self._wanted.wait()
            if not self._ended:
                await self._call.done_writing()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            pass  # the stream is gone: the reader reports why
        finally:
            self._queue.clear()
            self._backlog = 0

    def send(self, frames: list[pb.Frame]) -> None:
        """Queue frames for the proxy (never blocks)."""
        if self._ended or self._closing or self._wanted is None:
            return
        for batch in batches(frames):
            size = batch.ByteSize()
            self._backlog += size
            self._queue.append((batch, size))
        self._wanted.set()

    async def aclose(self, timeout: float = 5.0) -> None:
        """Half-close after what is queued, wait up to ``timeout`` for the proxy to end the
        stream, then drop it."""
        if self._closing:
            return
        self._closing = True
        if self._wanted is not None:
            self._wanted.set()
        tasks = [t for t in (self._writer, self._reader) if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        if self._call is not None:
            self._call.cancel()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._channel is not None:
            await self._channel.close(None)


def connect(address: str, *, token: str, tls: TLSConfig | None) -> AsyncGrpcClientTransport:
    """The event-loop client end of a gRPC session with the proxy at ``address``."""
    try:
        credentials = channel_credentials(tls) if tls is not None else None
    except ValueError as exc:
        raise EnclaveLoadError(str(exc), code=StatusCode.INVALID_ARGUMENT) from exc
    return AsyncGrpcClientTransport(address, token=token, credentials=credentials)
