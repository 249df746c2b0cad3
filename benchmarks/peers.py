"""Baseline peers for the side-by-side benchmarks: raw socket, raw gRPC, rpyc, Pyro5.

Every server runs in its own subprocess (as farside's proxy does), started with

    python -m benchmarks.peers KIND [--tls-dir DIR]

which binds 127.0.0.1 on a free port, prints ``PORT <n>`` on stdout and serves until
its stdin closes (so it also dies with the harness). ``PeerServer`` starts and stops
one; the ``*_client`` functions return a ``(call, close)`` pair whose ``call()`` makes
one round trip with the given payload.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

KINDS = ("socket", "grpc", "rpyc", "pyro5")
PING_METHOD = "/bench.Peer/PingPong"
STREAM_METHOD = "/bench.Peer/Stream"
MAX_MESSAGE = 256 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]

Call = Callable[[], object]
Close = Callable[[], None]


# ---------------------------------------------------------------- servers (subprocess side)


def _serve_socket(ready: Callable[[int], None]) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    ready(listener.getsockname()[1])

    def handle(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while True:
                header = _recv_exact(conn, 4)
                if header is None:
                    return
                body = _recv_exact(conn, struct.unpack("!I", header)[0])
                if body is None:
                    return
                conn.sendall(header + body)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = conn.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def _serve_grpc(ready: Callable[[int], None], tls_dir: Path | None) -> None:
    async def ping_pong(requests: Any, context: Any) -> Any:
        async for request in requests:
            yield request

    async def main() -> None:
        server = grpc.aio.server(options=GRPC_OPTIONS)
        handlers = {
            "PingPong": grpc.stream_stream_rpc_method_handler(ping_pong),
            "Stream": grpc.stream_stream_rpc_method_handler(ping_pong),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Peer", handlers),)
        )
        if tls_dir is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            creds = grpc.ssl_server_credentials(
                [((tls_dir / "server.key").read_bytes(), (tls_dir / "server.pem").read_bytes())]
            )
            port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        ready(port)
        await server.wait_for_termination()

    asyncio.run(main())


def _serve_rpyc(ready: Callable[[int], None]) -> None:
    import rpyc
    from rpyc.utils.server import ThreadedServer

    class PeerService(rpyc.Service):
        def exposed_empty(self) -> None:
            return None

        def exposed_nested(self, value: bytes, callback: Callable[[bytes], bytes]) -> bytes:
            return callback(value)

    server = ThreadedServer(
        PeerService, hostname="127.0.0.1", port=0, protocol_config={"allow_public_attrs": True}
    )
    ready(server.port)
    server.start()


def _serve_pyro5(ready: Callable[[int], None]) -> None:
    import Pyro5.api

    local = threading.local()

    @Pyro5.api.expose
    class PeerObject:
        def empty(self) -> None:
            return None

        def nested(self, value: bytes, callback_uri: str) -> Any:
            # One callback proxy per server thread (Pyro5 proxies are thread-owned).
            cached = getattr(local, "proxies", None)
            if cached is None:
                cached = local.proxies = {}
            proxy = cached.get(callback_uri)
            if proxy is None:
                proxy = cached[callback_uri] = Pyro5.api.Proxy(callback_uri)
            return proxy.echo(value)

    daemon = Pyro5.api.Daemon(host="127.0.0.1", port=0)
    daemon.register(PeerObject(), objectId="peer")
    ready(daemon.locationStr and int(daemon.locationStr.rsplit(":", 1)[1]))
    daemon.requestLoop()


def serve(kind: str, tls_dir: Path | None = None) -> None:
    """Serve ``kind`` until stdin closes; print ``PORT <n>`` once listening."""

    def ready(port: int) -> None:
        print(f"PORT {port}", flush=True)

    def watch_stdin() -> None:
        sys.stdin.read()
        import os

        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    if kind == "socket":
        _serve_socket(ready)
    elif kind == "grpc":
        _serve_grpc(ready, tls_dir)
    elif kind == "rpyc":
        _serve_rpyc(ready)
    elif kind == "pyro5":
        _serve_pyro5(ready)
    else:
        raise SystemExit(f"unknown peer kind {kind!r}; one of {', '.join(KINDS)}")


class PeerServer:
    """A peer server in a subprocess; ``stop()`` closes its stdin and reaps it."""

    def __init__(self, kind: str, tls_dir: Path | None = None, timeout: float = 20.0) -> None:
        command = [sys.executable, "-m", "benchmarks.peers", kind]
        if tls_dir is not None:
            command += ["--tls-dir", str(tls_dir)]
        root = Path(__file__).resolve().parent.parent
        self.kind = kind
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=root, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"{kind} peer server did not start (said {line!r})")
        self.port = int(line.split()[1])
        self.pid = self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.close()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> PeerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- clients (harness side)


def socket_client(port: int, payload: bytes) -> tuple[Call, Close]:
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    frame = struct.pack("!I", len(payload)) + payload

    def call() -> bytes | None:
        conn.sendall(frame)
        header = _recv_exact(conn, 4)
        assert header is not None
        return _recv_exact(conn, struct.unpack("!I", header)[0])

    return call, conn.close


def grpc_channel(port: int, tls_dir: Path | None) -> grpc.Channel:
    if tls_dir is None:
        return grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
    return grpc.secure_channel(f"127.0.0.1:{port}", _client_creds(tls_dir), options=GRPC_OPTIONS)


def _client_creds(tls_dir: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=(tls_dir / "ca.pem").read_bytes())


class _Outbox:
    """A blocking request iterator for a sync gRPC stream."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[bytes | None] = []

    def put(self, item: bytes | None) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                item = self._items.pop(0)
            if item is None:
                return
            yield item


def grpc_sync_client(port: int, payload: bytes, tls_dir: Path | None = None) -> tuple[Call, Close]:
    channel = grpc_channel(port, tls_dir)
    method = channel.stream_stream(PING_METHOD)
    outbox = _Outbox()
    responses = method(iter(outbox))

    def call() -> bytes:
        outbox.put(payload)
        return next(responses)

    def close() -> None:
        outbox.put(None)
        with contextlib.suppress(StopIteration, grpc.RpcError):
            next(responses)
        channel.close()

    return call, close


def grpc_aio_samples(
    port: int, payload: bytes, calls: int, warmup: int, tls_dir: Path | None = None
) -> list[float]:
    """Round-trip times of ``calls`` ping-pongs on one grpc.aio bidi stream."""

    async def main() -> list[float]:
        if tls_dir is None:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
        else:
            channel = grpc.aio.secure_channel(
                f"127.0.0.1:{port}", _client_creds(tls_dir), options=GRPC_OPTIONS
            )
        async with channel:
            stream = channel.stream_stream(PING_METHOD)()
            samples = []
            for i in range(warmup + calls):
                start = time.perf_counter()
                await stream.write(payload)
                await stream.read()
                if i >= warmup:
                    samples.append(time.perf_counter() - start)
            await stream.done_writing()
            return samples

    return asyncio.run(main())


def grpc_stream_throughput(
    port: int, size: int, chunk: int = 1 << 20, tls_dir: Path | None = None
) -> float:
    """Seconds to send ``size`` bytes up a gRPC stream in ``chunk`` messages and get them back."""
    channel = grpc_channel(port, tls_dir)
    try:
        method = channel.stream_stream(STREAM_METHOD)
        data = b"\x5a" * size
        pieces = [data[i : i + chunk] for i in range(0, size, chunk)]
        start = time.perf_counter()
        received = sum(len(reply) for reply in method(iter(pieces)))
        elapsed = time.perf_counter() - start
        assert received == size, (received, size)
        return elapsed
    finally:
        channel.close()


def rpyc_clients(port: int, payload: bytes) -> tuple[Call, Call, Close]:
    """``(empty, nested, close)``: an empty call and a call with a server->client callback."""
    import rpyc

    conn = rpyc.connect("127.0.0.1", port, config={"allow_public_attrs": True})
    root = conn.root

    def echo(value: bytes) -> bytes:
        return value

    # attribute lookup on every call, as a user of rpyc writes it
    return (lambda: root.empty()), (lambda: root.nested(payload, echo)), conn.close  # noqa: PLW0108


def pyro5_clients(port: int, payload: bytes) -> tuple[Call, Call, Close]:
    """``(empty, nested, close)``; the callback goes through a client-side daemon."""
    import Pyro5.api

    @Pyro5.api.expose
    class Callback:
        def echo(self, value: Any) -> Any:
            return value

    daemon = Pyro5.api.Daemon(host="127.0.0.1", port=0)
    uri = str(daemon.register(Callback()))
    loop = threading.Thread(target=daemon.requestLoop, daemon=True, name="pyro5-callback")
    loop.start()
    proxy = Pyro5.api.Proxy(f"PYRO:peer@127.0.0.1:{port}")

    def close() -> None:
        proxy._pyroRelease()
        daemon.shutdown()
        loop.join(5)
        daemon.close()

    return (lambda: proxy.empty()), (lambda: proxy.nested(payload, uri)), close  # noqa: PLW0108


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="serve one benchmark peer")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--tls-dir", type=Path)
    args = parser.parse_args(argv)
    serve(args.kind, args.tls_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
