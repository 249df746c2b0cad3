"""The gRPC transport: one bidirectional ``Session`` stream, opened by the client.

These adapters only move frames. The client side opens the stream and feeds what
arrives to its endpoint from one reader thread; the proxy side accepts exactly one
authenticated stream and does the same. ``grpc.RpcError`` never leaves this
module unmapped: it becomes ``EnclaveUnavailableError`` (or ``EnclaveLoadError``
for a refused session) through ``error_from_rpc``.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from .._errors import EnclaveError, EnclaveLoadError, EnclaveUnavailableError, StatusCode
from .._proto.v1 import session_pb2 as pb
from .._proto.v1 import session_pb2_grpc as pb_grpc
from .._tls import TLSConfig
from ._framing import MAX_MESSAGE_BYTES, FrameSink, LostCallback, Outbox

__all__ = [
    "TOKEN_METADATA_KEY",
    "GrpcClientTransport",
    "GrpcListener",
    "SessionServicer",
    "MAX_MESSAGE_BYTES",
    "channel_options",
    "error_from_rpc",
]

TOKEN_METADATA_KEY = "farside-session-token"  # noqa: S105 (a header name)
KEEPALIVE_MS = 4_000
KEEPALIVE_TIMEOUT_MS = 3_000


def channel_options() -> list[tuple[str, Any]]:
    """gRPC options both ends use: message size, and keepalive pings that detect a dead
    peer or a cut network within KEEPALIVE_MS + KEEPALIVE_TIMEOUT_MS (7 s), idle or not."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # the peer pings as often as we do: do not count that as abuse
        ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
        ("grpc.http2.min_time_between_pings_ms", KEEPALIVE_MS // 2),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def error_from_rpc(exc: grpc.RpcError, target: str) -> EnclaveError:
    """Map a failed stream to farside's error for it, naming the proxy's address."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    if code in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
    ):
        return EnclaveLoadError(
            f"the enclave proxy at {target} refused the session: {details}",
            code=StatusCode.coerce(code.value[0]),
        )
    return EnclaveUnavailableError(f"lost the enclave proxy at {target}: {details}")


class GrpcClientTransport:
    """The client's end of the stream: ``start`` opens it, ``send`` queues frames."""

    def __init__(
        self, target: str, *, token: str, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        self.target = target
        self._token = token
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=channel_options())
        else:
            self._channel = grpc.secure_channel(target, credentials, options=channel_options())
        self._outgoing = Outbox()
        self._reader: threading.Thread | None = None
        self._call: Any = None
        self._closing = False

    def _requests(self) -> Iterator[pb.Batch]:
        yield from self._outgoing

    def start(self, sink: FrameSink, lost: LostCallback) -> None:
        """Open the stream and feed every batch that arrives to ``sink`` on a reader thread.

        ``lost`` is called once if the stream ends for any reason but ``close()``.
        """
        stub = pb_grpc.EnclaveSessionStub(self._channel)
        self._call = stub.Session(self._requests(), metadata=((TOKEN_METADATA_KEY, self._token),))
        self._reader = threading.Thread(
            target=self._read, args=(sink, lost), name="farside-session-reader", daemon=True
        )
        self._reader.start()

    def _read(self, sink: FrameSink, lost: LostCallback) -> None:
        try:
            for batch in self._call:
                sink(list(batch.frames))
        except grpc.RpcError as exc:
            if not self._closing:
                lost(error_from_rpc(exc, self.target))
            return
        except Exception as exc:  # a bug in a sink must not leave waiters hanging
            lost(EnclaveUnavailableError(f"session reader failed: {exc!r}"))
            raise
        if not self._closing:
            lost(EnclaveUnavailableError(f"the enclave proxy at {self.target} ended the session"))

    def send(self, frames: list[pb.Frame]) -> None:
        """Queue frames for the proxy (never blocks)."""
        self._outgoing.put(frames)

    def close(self, timeout: float = 5.0) -> None:
        """Half-close, wait up to ``timeout`` for the proxy to end the stream, then drop it."""
        self._closing = True
        self._outgoing.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout)
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout)
        self._channel.close()


class SessionServicer(pb_grpc.EnclaveSessionServicer):  # type: ignore[misc]
    """The proxy's end: accepts one stream carrying the right token, then only frames.

    ``on_open(send)`` is called when the session is accepted and returns the sink
    for incoming frames; ``on_lost(error)`` when the stream breaks. Frames to the
    client go through ``send``; ``finish()`` ends the response stream.
    """

    def __init__(
        self, token: str, on_open: Callable[[SessionServicer], FrameSink], on_lost: LostCallback
    ) -> None:
        self._token = token.encode()
        self._on_open = on_open
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._taken = False
        self._outgoing = Outbox()
        self._finished = False

    def send(self, frames: list[pb.Frame]) -> None:
        """Queue frames for the client (never blocks)."""
        self._outgoing.put(frames)

    @property
    def outbox(self) -> Outbox:
        """What is queued for the client (the endpoint waits on it for backpressure)."""
        return self._outgoing

    def finish(self) -> None:
        """End the response stream after the frames already queued."""
        self._finished = True
        self._outgoing.close()

    def Session(  # noqa: N802 (the RPC's name)
        self,
        request_iterator: Iterator[pb.Batch],
        context: grpc.ServicerContext,
    ) -> Iterator[pb.Batch]:
        presented = dict(context.invocation_metadata()).get(TOKEN_METADATA_KEY, "")
        if not isinstance(presented, str) or not hmac.compare_digest(
            presented.encode(), self._token
        ):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid session token")
        with self._lock:
            if self._taken:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION, "this proxy already served its one session"
                )
            self._taken = True
        sink = self._on_open(self)
        reader = threading.Thread(
            target=self._read,
            args=(request_iterator, sink),
            name="farside-session-reader",
            daemon=True,
        )
        reader.start()
        yield from self._outgoing

    def _read(self, requests: Iterator[pb.Batch], sink: FrameSink) -> None:
        try:
            for batch in requests:
                sink(list(batch.frames))
        except grpc.RpcError as exc:
            if not self._finished:
                self._on_lost(error_from_rpc(exc, "client"))
            return
        if not self._finished:
            self._on_lost(EnclaveUnavailableError("the client closed the session stream"))


class GrpcListener:
    """The proxy's gRPC server for its one session, shaped like ``StreamListener``."""

    def __init__(
        self,
        listen: str,
        token: str,
        on_open: Callable[[SessionServicer], FrameSink],
        on_lost: LostCallback,
        *,
        tls: TLSConfig | None = None,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._listen = listen
        self._tls = tls
        self._servicer = SessionServicer(token, on_open, on_lost)
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=4, thread_name_prefix="grpc"),
            options=channel_options(),
            maximum_concurrent_rpcs=4,
        )
        pb_grpc.add_EnclaveSessionServicer_to_server(self._servicer, self._server)

    def start(self) -> str:
        """Bind and start serving; return the address clients dial."""
        if self._tls is not None:
            port = self._server.add_secure_port(self._listen, self._tls.server_credentials())
        else:
            port = self._server.add_insecure_port(self._listen)
        if port == 0:
            raise OSError(f"cannot listen on {self._listen}")
        self._server.start()
        if self._listen.startswith("unix:"):
            return self._listen
        return f"{self._listen.rsplit(':', 1)[0]}:{port}"

    def finish(self) -> None:
        """End the session's stream after the frames already queued."""
        self._servicer.finish()

    def stop(self, grace: float) -> None:
        """Stop serving, giving the stream ``grace`` seconds to drain."""
        self._server.stop(grace=grace).wait(grace + 1.0)
