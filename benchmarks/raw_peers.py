"""The floors: a raw socket echo (TCP and Unix) and a raw gRPC echo, server and client.

The servers run in a peer subprocess (``benchmarks.peers``); the clients are the
fastest plain-Python way each wire can be driven: the socket with ``sendall`` and
``recv_into`` into preallocated buffers, gRPC with a stream (or callable) made once
and reused. ``HOW`` says, call by call, what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

PING_METHOD = "/bench.Peer/PingPong"
UNARY_METHOD = "/bench.Peer/Unary"
STREAM_METHOD = "/bench.Peer/Stream"
MAX_MESSAGE = 256 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]

# Raw gRPC streaming sends the value in messages of this size: of 64 KiB, 256 KiB,
# 1 MiB and 4 MiB, 1 MiB was fastest on a Unix socket on the 2-core machine the targets
# were set on (about 2,000 MiB/s; 4 MiB was close on TCP).
GRPC_CHUNK = 1 << 20
# The echo server reads into a buffer of this size (larger than any socket buffer).
ECHO_BUFFER = 1 << 20

Call = Callable[[], object]
Close = Callable[[], None]

HOW = {
    "raw socket ping-pong": (
        "`conn.sendall(payload)`, then `conn.recv_into(view[got:])` until 64 bytes are back, "
        "on one connected socket (TCP with TCP_NODELAY, or AF_UNIX); the server is a thread "
        "per connection echoing with `recv_into` + `sendall`, no framing"
    ),
    "raw socket streaming": (
        "one thread on a non-blocking socket: `conn.send(out[sent:])` and "
        "`conn.recv_into(view[got:])` into a preallocated bytearray in turn, `select` only "
        "when neither moves, until every byte is back; same echo server (1 MiB buffer)"
    ),
    "raw gRPC bidi ping-pong, sync client": (
        "`outbox.put(payload); next(replies)` where `replies = "
        "channel.stream_stream(M)(iter(outbox.get, None))` is opened once (a SimpleQueue "
        "outbox); grpc.aio server echoing each message"
    ),
    "raw gRPC bidi ping-pong, aio client": (
        "`await call.write(payload); await call.read()` on one grpc.aio "
        "`channel.stream_stream(M)()` call kept open"
    ),
    "raw gRPC unary call": "`unary(payload)` with `unary = channel.unary_unary(M)` made once",
    "raw gRPC streaming": (
        "`for reply in channel.stream_stream(M)(chunks)` on a warmed channel, the value "
        f"sliced into {GRPC_CHUNK >> 20} MiB `bytes` messages as they are sent (gRPC takes no "
        "memoryview), echoed message by message"
    ),
}


# ---------------------------------------------------------------- addresses


def tcp_address(port: int) -> str:
    return f"127.0.0.1:{port}"


def _listen(address: str) -> socket.socket:
    if address.startswith("unix:"):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address[5:])
        listener.listen(16)
        return listener
    host, port = address.rsplit(":", 1)
    return socket.create_server((host, int(port)))


def connect(address: str) -> socket.socket:
    """A connected socket to ``address``; TCP gets TCP_NODELAY."""
    if address.startswith("unix:"):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(address[5:])
        return conn
    host, port = address.rsplit(":", 1)
    conn = socket.create_connection((host, int(port)))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _bound_address(listener: socket.socket, address: str) -> str:
    if address.startswith("unix:"):
        return address
    return tcp_address(listener.getsockname()[1])


# ---------------------------------------------------------------- servers (peer subprocess)


def _echo_connection(conn: socket.socket) -> None:
    if conn.family != socket.AF_UNIX:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray(ECHO_BUFFER)
    view = memoryview(buffer)
    with conn:
        while True:
            got = conn.recv_into(buffer)
            if not got:
                return
            conn.sendall(view[:got])


def serve_socket(address: str, ready: Callable[[str], None]) -> None:
    listener = _listen(address)
    ready(_bound_address(listener, address))
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_echo_connection, args=(conn,), daemon=True).start()


def serve_grpc(address: str, ready: Callable[[str], None], tls_dir: Path | None) -> None:
    async def echo_each(requests: Any, context: Any) -> Any:
        async for request in requests:
            yield request

    async def echo_one(request: bytes, context: Any) -> bytes:
        return request

    async def main() -> None:
        server = grpc.aio.server(options=GRPC_OPTIONS)
        handlers = {
            "PingPong": grpc.stream_stream_rpc_method_handler(echo_each),
            "Stream": grpc.stream_stream_rpc_method_handler(echo_each),
            "Unary": grpc.unary_unary_rpc_method_handler(echo_one),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Peer", handlers),)
        )
        if tls_dir is None:
            port = server.add_insecure_port(address)
        else:
            creds = grpc.ssl_server_credentials(
                [((tls_dir / "server.key").read_bytes(), (tls_dir / "server.pem").read_bytes())]
            )
            port = server.add_secure_port(address, creds)
        await server.start()
        ready(address if address.startswith("unix:") else tcp_address(port))
        await server.wait_for_termination()

    asyncio.run(main())


# ---------------------------------------------------------------- raw socket clients


def socket_client(address: str, payload: bytes) -> tuple[Call, Close]:
    """One ping-pong of ``payload`` per call through the echo server at ``address``."""
    conn = connect(address)
    size = len(payload)
    buffer = bytearray(size)
    view = memoryview(buffer)

    def call() -> bytearray:
        conn.sendall(payload)
        got = conn.recv_into(buffer)
        while got < size:
            more = conn.recv_into(view[got:])
            if not more:
                raise EOFError("echo server closed the connection")
            got += more
        return buffer

    return call, conn.close


def socket_stream(address: str, value: bytes) -> Callable[[], float]:
    """A function that streams ``value`` up and back once and returns its seconds.

    One thread, a non-blocking socket: send what the socket takes, receive what has
    come back, wait in ``select`` only when neither moves. (A sender thread next to a
    blocking receiver was no faster for 64 MiB and half as fast for 1 MiB.)
    """
    size = len(value)
    received = bytearray(size)
    view = memoryview(received)
    outgoing = memoryview(value)

    def once() -> float:
        with connect(address) as conn:
            conn.sendall(b"w")  # warm: the server's thread is running before the clock starts
            conn.recv_into(view[:1])
            conn.setblocking(False)
            start = time.perf_counter()
            sent = got = 0
            while got < size:
                moved = False
                if sent < size:
                    with contextlib.suppress(BlockingIOError):
                        sent += conn.send(outgoing[sent:])
                        moved = True
                try:
                    more = conn.recv_into(view[got:])
                except BlockingIOError:
                    more = -1
                if more == 0:
                    raise EOFError("echo server closed the connection")
                if more > 0:
                    got += more
                    moved = True
                if not moved:
                    select.select([conn], [conn] if sent < size else [], [])
            elapsed = time.perf_counter() - start
        if received != value:
            raise RuntimeError("raw socket streaming returned different bytes")
        return elapsed

    return once


# ---------------------------------------------------------------- raw gRPC clients


def grpc_channel(address: str, tls_dir: Path | None) -> grpc.Channel:
    """A channel to ``address`` ("unix:/path" and "host:port" are both gRPC targets)."""
    if tls_dir is None:
        return grpc.insecure_channel(address, options=GRPC_OPTIONS)
    return grpc.secure_channel(address, _client_creds(tls_dir), options=GRPC_OPTIONS)


def _client_creds(tls_dir: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=(tls_dir / "ca.pem").read_bytes())


def grpc_sync_client(
    address: str, payload: bytes, tls_dir: Path | None = None
) -> tuple[Call, Close]:
    """A sync bidi stream opened once; each call sends one message and reads one."""
    channel = grpc_channel(address, tls_dir)
    outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    replies = channel.stream_stream(PING_METHOD)(iter(outbox.get, None))

    def call() -> bytes:
        outbox.put(payload)
        return next(replies)  # type: ignore[no-any-return]

    def close() -> None:
        outbox.put(None)
        with contextlib.suppress(StopIteration, grpc.RpcError):
            next(replies)
        channel.close()

    return call, close


def grpc_unary_client(
    address: str, payload: bytes, tls_dir: Path | None = None
) -> tuple[Call, Close]:
    """A sync unary-unary callable made once; each call is one RPC."""
    channel = grpc_channel(address, tls_dir)
    unary = channel.unary_unary(UNARY_METHOD)
    return (lambda: unary(payload)), channel.close


def grpc_aio_samples(
    address: str, payload: bytes, calls: int, warmup: int, tls_dir: Path | None = None
) -> list[float]:
    """Round-trip times of ``calls`` ping-pongs on one grpc.aio bidi stream."""

    async def main() -> list[float]:
        if tls_dir is None:
            channel = grpc.aio.insecure_channel(address, options=GRPC_OPTIONS)
        else:
            channel = grpc.aio.secure_channel(address, _client_creds(tls_dir), options=GRPC_OPTIONS)
        async with channel:
            stream = channel.stream_stream(PING_METHOD)()
            samples = []
            clock = time.perf_counter
            for i in range(warmup + calls):
                start = clock()
                await stream.write(payload)
                await stream.read()
                if i >= warmup:
                    samples.append(clock() - start)
            await stream.done_writing()
            return samples

    return asyncio.run(main())


def grpc_stream(
    address: str, value: bytes, tls_dir: Path | None = None
) -> tuple[Callable[[], float], Close]:
    """A function streaming ``value`` up and back once (``GRPC_CHUNK`` messages), and close."""
    channel = grpc_channel(address, tls_dir)
    method = channel.stream_stream(STREAM_METHOD)
    size = len(value)
    list(method(iter([b"w"])))  # connect before the clock starts

    def once() -> float:
        pieces = (value[i : i + GRPC_CHUNK] for i in range(0, size, GRPC_CHUNK))
        start = time.perf_counter()
        received = sum(len(reply) for reply in method(pieces))
        elapsed = time.perf_counter() - start
        if received != size:
            raise RuntimeError(f"raw gRPC streaming returned {received} of {size} bytes")
        return elapsed

    return once, channel.close
