"""The gRPC transport: one bidirectional ``Session`` stream, opened by the client.

The choice behind HTTP/2 infrastructure (proxies, load balancers, meshes that speak
gRPC). These adapters only move frames. The client side opens the stream and feeds
what arrives to its endpoint from one reader thread; the proxy side admits exactly
one stream (``farside.transport.base.Admission``) and does the same.
``grpc.RpcError`` never leaves this module unmapped: it becomes
``EnclaveUnavailableError``, or ``EnclaveLoadError`` for a refused session, through
``error_from_rpc``. gRPC's credentials are built here from a ``TLSConfig``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from .._errors import EnclaveError, EnclaveLoadError, EnclaveUnavailableError, StatusCode
from .._proto.v1 import session_pb2 as pb, session_pb2_grpc as pb_grpc
from .._tls import TLSConfig
from .base import (
    MAX_MESSAGE_BYTES,
    Admission,
    Buffer,
    FrameSink,
    LostCallback,
    OnOpen,
    Refusal,
    batches,
    inline_blobs,
    refusal_error,
)

__all__ = [
    "TOKEN_METADATA_KEY",
    "GrpcClientTransport",
    "GrpcListener",
    "SessionServicer",
    "channel_credentials",
    "channel_options",
    "connect",
    "error_from_rpc",
    "listen",
    "server_credentials",
]

log = logging.getLogger("farside")

TOKEN_METADATA_KEY = "farside-session-token"  # noqa: S105 (a header name)
KEEPALIVE_MS = 4_000
KEEPALIVE_TIMEOUT_MS = 3_000
_REFUSALS = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
)


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


def channel_credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    """gRPC credentials for a client channel with ``tls``'s CA, and its cert/key for mTLS.

    ``ValueError`` naming the file if one cannot be read.
    """
    return grpc.ssl_channel_credentials(
        root_certificates=tls.pem("ca"),
        private_key=tls.pem("key"),
        certificate_chain=tls.pem("cert"),
    )


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    """gRPC credentials for a server port; client certificates are required if ``client_ca``."""
    key, cert = tls.pem("key"), tls.pem("cert")
    if key is None or cert is None:
        raise ValueError("a TLS server needs cert and key")
    client_ca = tls.pem("client_ca")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def error_from_rpc(exc: grpc.RpcError, target: str) -> EnclaveError:
    """Map a failed stream to farside's error for it, naming the proxy's address."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    if code is not None and code in _REFUSALS:
        return refusal_error(target, Refusal(StatusCode.coerce(code.value[0]), details))
    return EnclaveUnavailableError(f"lost the enclave proxy at {target}: {details}")


class _Outbox:
    """The batches a gRPC stream has yet to take, with their size in bytes.

    Producers never block in ``put``; gRPC takes batches as HTTP/2 flow control lets
    it, so the backlog is what the peer has not read yet.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[pb.Batch, int] | None] = queue.SimpleQueue()
        self.backlog = 0
        self._drained = threading.Condition()

    def put(self, frames: list[pb.Frame]) -> None:
        for batch in batches(frames):
            size = batch.ByteSize()
            with self._drained:
                self.backlog += size
            self._queue.put((batch, size))

    def close(self) -> None:
        """End the stream after what is queued."""
        self._queue.put(None)

    def __iter__(self) -> Iterator[pb.Batch]:
        while (item := self._queue.get()) is not None:
            batch, size = item
            with self._drained:
                self.backlog -= size
                self._drained.notify_all()
            yield batch

    def wait_below(self, limit: int, timeout: float) -> bool:
        with self._drained:
            return self._drained.wait_for(lambda: self.backlog <= limit, timeout)


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
        self._outgoing = _Outbox()
        self._reader: threading.Thread | None = None
        self._call: Any = None
        self._closing = False

    @property
    def backlog(self) -> int:
        """Bytes queued for the proxy and not yet taken by gRPC."""
        return self._outgoing.backlog

    def wait_below(self, limit: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the backlog to fall to ``limit``; True if it did."""
        return self._outgoing.wait_below(limit, timeout)

    def start(self, sink: FrameSink, lost: LostCallback) -> None:
        """Open the stream and feed every batch that arrives to ``sink`` on a reader thread.

        ``lost`` is called once if the stream ends for any reason but ``close()``.
        """
        stub = pb_grpc.EnclaveSessionStub(self._channel)
        self._call = stub.Session(
            iter(self._outgoing), metadata=((TOKEN_METADATA_KEY, self._token),)
        )
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

    def send(self, frames: list[pb.Frame], blobs: Sequence[Buffer] = ()) -> None:
        """Queue frames for the proxy (never blocks); blobs go inside their frames."""
        self._outgoing.put(inline_blobs(frames, blobs))

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
        # gRPC's close waits while a write is stuck on a peer that reads nothing (a stopped
        # proxy): bounded here, it finishes by itself once the provisioner reaps the proxy.
        closer = threading.Thread(
            target=self._channel.close, name="farside-channel-close", daemon=True
        )
        closer.start()
        closer.join(timeout)
        if closer.is_alive():
            log.warning("closing the channel to %s takes long: going on without it", self.target)


class SessionServicer(pb_grpc.EnclaveSessionServicer):  # type: ignore[misc]
    """The proxy's end: the one stream ``admission`` admits, then only frames.

    ``on_open(self)`` is called when the session is admitted and returns the sink
    for incoming frames; ``on_lost(error)`` when the stream breaks. Frames to the
    client go through ``send``; ``finish()`` ends the response stream.
    """

    def __init__(self, admission: Admission, on_open: OnOpen, on_lost: LostCallback) -> None:
        self._admission = admission
        self._on_open = on_open
        self._on_lost = on_lost
        self._outgoing = _Outbox()
        self._finished = False

    def send(self, frames: list[pb.Frame], blobs: Sequence[Buffer] = ()) -> None:
        """Queue frames for the client (never blocks); blobs go inside their frames."""
        self._outgoing.put(inline_blobs(frames, blobs))

    @property
    def backlog(self) -> int:
        """Bytes queued for the client and not yet taken by gRPC."""
        return self._outgoing.backlog

    def wait_below(self, limit: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the backlog to fall to ``limit``; True if it did."""
        return self._outgoing.wait_below(limit, timeout)

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
        refusal = self._admission.admit(presented if isinstance(presented, str | bytes) else b"")
        if refusal is not None:
            context.abort(grpc.StatusCode[refusal.code.name], refusal.message)
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
    """The proxy's gRPC server for its one session."""

    def __init__(
        self,
        address: str,
        *,
        admission: Admission,
        on_open: OnOpen,
        on_lost: LostCallback,
        tls: TLSConfig | None = None,
    ) -> None:
        self._listen = address
        self._tls = tls
        self._admission = admission
        self._servicer = SessionServicer(admission, on_open, on_lost)
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=4, thread_name_prefix="grpc"),
            # never SO_REUSEPORT: a port another proxy holds must fail to bind, not be shared
            options=[*channel_options(), ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=4,
        )
        pb_grpc.add_EnclaveSessionServicer_to_server(self._servicer, self._server)

    def start(self) -> str:
        """Bind and start serving; return the address clients dial."""
        if self._tls is not None:
            port = self._server.add_secure_port(self._listen, server_credentials(self._tls))
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
        self._admission.close()
        self._server.stop(grace=grace).wait(grace + 1.0)


def connect(address: str, *, token: str, tls: TLSConfig | None) -> GrpcClientTransport:
    """The client's end of a gRPC session with the proxy at ``address``."""
    try:
        credentials = channel_credentials(tls) if tls is not None else None
    except ValueError as exc:
        raise EnclaveLoadError(str(exc), code=StatusCode.INVALID_ARGUMENT) from exc
    return GrpcClientTransport(address, token=token, credentials=credentials)


def listen(
    address: str,
    *,
    admission: Admission,
    on_open: OnOpen,
    on_lost: LostCallback,
    tls: TLSConfig | None = None,
) -> GrpcListener:
    """The proxy's gRPC end on ``address``."""
    return GrpcListener(address, admission=admission, on_open=on_open, on_lost=on_lost, tls=tls)
