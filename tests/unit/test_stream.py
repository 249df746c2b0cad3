"""The stream transport on its own: handshake, bad peers, sending that never blocks, TLS.

Each test runs a ``StreamListener`` and clients in this process on 127.0.0.1 or a
Unix socket in the test's temporary directory; every wait is bounded.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farside._errors import EnclaveError, EnclaveLoadError, EnclaveUnavailableError, StatusCode
from farside._proto.v1 import session_pb2 as pb
from farside._tls import TLSConfig
from farside.proxy.server import ephemeral_tls
from farside.transport.base import Admission
from farside.transport.stream import (
    MAX_PENDING_PER_SOURCE,
    PREFACE,
    StreamClientTransport,
    StreamConnection,
    StreamListener,
)

WAIT = 5.0
TOKEN = "the-token"


class Proxy:
    """A listener whose session records the frames it gets (and can send back)."""

    def __init__(self, listen: str, tls: TLSConfig | None = None) -> None:
        self.frames: list[pb.Frame] = []
        self.lost: list[EnclaveError] = []
        self.opened = threading.Event()
        self.got = threading.Event()
        self.connection: StreamConnection | None = None
        self.listener = self.make_listener(listen, tls)
        self.address = self.listener.start()

    def make_listener(self, listen: str, tls: TLSConfig | None) -> StreamListener:
        return StreamListener(
            listen,
            admission=Admission(TOKEN),
            on_open=self._on_open,
            on_lost=self.lost.append,
            tls=tls.server_ssl_context() if tls is not None else None,
        )

    def _on_open(self, connection: StreamConnection) -> Any:
        self.connection = connection
        self.opened.set()

        def sink(frames: list[pb.Frame]) -> None:
            self.frames += frames
            self.got.set()

        return sink


class Client:
    def __init__(self, address: str, token: str = TOKEN, **kwargs: Any) -> None:
        self.frames: list[pb.Frame] = []
        self.lost: list[EnclaveError] = []
        self.done = threading.Event()
        self.transport = self.make_transport(address, token, **kwargs)
        self.transport.start(self.frames.extend, self._lost)

    def make_transport(self, address: str, token: str, **kwargs: Any) -> StreamClientTransport:
        return StreamClientTransport(address, token=token, **kwargs)

    def _lost(self, error: EnclaveError) -> None:
        self.lost.append(error)
        self.done.set()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    server = Proxy(f"unix:{tmp_path / 'proxy.sock'}")
    yield server
    server.listener.stop(grace=1.0)


def output(data: bytes) -> pb.Frame:
    return pb.Frame(output=pb.Output(thread=1, data=data))


def test_frames_cross_and_a_wrong_token_is_refused_without_disturbing_the_session(
    proxy: Proxy,
) -> None:
    intruder = Client(proxy.address, token="wrong")
    assert intruder.done.wait(WAIT)
    assert isinstance(intruder.lost[0], EnclaveLoadError)
    assert intruder.lost[0].code == StatusCode.UNAUTHENTICATED
    assert not proxy.opened.is_set()

    client = Client(proxy.address)
    assert proxy.opened.wait(WAIT)
    client.transport.send([output(b"hello")])
    assert proxy.got.wait(WAIT)
    assert proxy.frames[0].output.data == b"hello"

    second = Client(proxy.address)
    assert second.done.wait(WAIT)
    assert isinstance(second.lost[0], EnclaveLoadError)
    assert second.lost[0].code == StatusCode.FAILED_PRECONDITION

    client.transport.close(timeout=1.0)
    assert not client.lost, "an orderly close is not a loss"


def test_a_silent_connection_does_not_block_the_real_client(proxy: Proxy) -> None:
    path = proxy.address[len("unix:") :]
    with socket.socket(socket.AF_UNIX) as silent:
        silent.connect(path)  # never sends its preface
        client = Client(proxy.address)
        assert proxy.opened.wait(WAIT), "a silent connection held up the session"
        client.transport.close(timeout=1.0)


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        PREFACE + struct.pack(">I", 2**31) + b"x",  # an absurd token length
        PREFACE[:5],  # then hangs up
    ],
    ids=["http", "huge-length", "short"],
)
def test_garbage_before_the_session_is_refused_and_the_proxy_keeps_listening(
    proxy: Proxy, garbage: bytes
) -> None:
    path = proxy.address[len("unix:") :]
    with socket.socket(socket.AF_UNIX) as bad:
        bad.settimeout(WAIT)
        bad.connect(path)
        bad.sendall(garbage)
        bad.shutdown(socket.SHUT_WR)
        while bad.recv(4096):  # the proxy answers (or not) and hangs up
            pass
    client = Client(proxy.address)
    assert proxy.opened.wait(WAIT)
    client.transport.close(timeout=1.0)


def test_an_oversized_message_in_the_session_ends_it_with_a_clear_error(proxy: Proxy) -> None:
    path = proxy.address[len("unix:") :]
    with socket.socket(socket.AF_UNIX) as peer:
        peer.settimeout(WAIT)
        peer.connect(path)
        token = TOKEN.encode()
        peer.sendall(PREFACE + struct.pack(">I", len(token)) + token)
        assert peer.recv(4) == struct.pack(">I", 0)  # accepted
        peer.sendall(struct.pack(">I", 2**30))
        deadline = time.monotonic() + WAIT
        while not proxy.lost and time.monotonic() < deadline:
            time.sleep(0.01)
    assert proxy.lost, "the proxy did not end the session"
    assert isinstance(proxy.lost[0], EnclaveUnavailableError)
    assert "1073741824-byte message" in str(proxy.lost[0])


def test_sending_never_blocks_and_everything_arrives_in_order(proxy: Proxy) -> None:
    client = Client(proxy.address)
    assert proxy.opened.wait(WAIT)
    # Far more than the socket buffers hold: send must queue, not wait for the reader.
    chunk = b"z" * (1 << 20)
    started = time.monotonic()
    for index in range(32):
        client.transport.send([output(bytes([index]) + chunk)])
    assert time.monotonic() - started < WAIT
    deadline = time.monotonic() + 30
    while len(proxy.frames) < 32 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [f.output.data[0] for f in proxy.frames] == list(range(32))
    assert client.transport.backlog == 0
    client.transport.close(timeout=1.0)


def test_tls_pins_the_proxy_certificate() -> None:
    tls = ephemeral_tls("127.0.0.1", None)
    server = Proxy("127.0.0.1:0", tls=tls)
    try:
        other = ephemeral_tls("127.0.0.1", None)
        wrong = Client(
            server.address, tls=TLSConfig(ca=other.cert).client_ssl_context(), connect_timeout=2
        )
        assert wrong.done.wait(WAIT)
        assert isinstance(wrong.lost[0], EnclaveUnavailableError)
        assert "CERTIFICATE_VERIFY_FAILED" in str(wrong.lost[0])
        assert not server.opened.is_set()

        client = Client(server.address, tls=TLSConfig(ca=tls.cert).client_ssl_context())
        assert server.opened.wait(WAIT)
        client.transport.send([output(b"secret")])
        assert server.got.wait(WAIT)
        assert server.frames[0].output.data == b"secret"
        client.transport.close(timeout=1.0)
    finally:
        server.listener.stop(grace=1.0)


def test_tcp_sessions_notice_a_dead_peer_within_ten_seconds_on_both_ends() -> None:
    """Keepalive and TCP_USER_TIMEOUT on both sockets (the network-cut e2e test needs root)."""
    server = Proxy("127.0.0.1:0")
    try:
        client = Client(server.address)
        assert server.opened.wait(WAIT)
        assert client.transport._connection is not None
        assert server.connection is not None
        for sock in (client.transport._connection._sock, server.connection._sock):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            interval = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
            probes = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
            user_timeout = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
            assert (idle, interval, probes, user_timeout) == (4, 1, 3, 7_000)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        server.listener.stop(grace=1.0)  # first: the client answers its end at once
    client.transport.close(timeout=1.0)


class _TimingOut:
    """A socket whose peer went silent: the kernel gave up on it (ETIMEDOUT)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def recv(self, size: int) -> bytes:
        raise TimeoutError(errno.ETIMEDOUT, "Connection timed out")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_a_connection_the_kernel_timed_out_is_reported_lost() -> None:
    mine, theirs = socket.socketpair()
    try:
        connection = StreamConnection(_TimingOut(mine), None, "the peer")  # type: ignore[arg-type]
        lost: list[EnclaveError] = []
        reported = threading.Event()
        connection.start(lambda frames: None, lambda error: (lost.append(error), reported.set()))
        assert reported.wait(WAIT)
        assert len(lost) == 1
        assert isinstance(lost[0], EnclaveUnavailableError)
        assert "lost the connection to the peer" in str(lost[0])
        assert "timed out" in str(lost[0])
        connection.close(timeout=1.0)
    finally:
        theirs.close()


def test_the_client_answers_the_proxys_end_so_the_proxy_need_not_wait(proxy: Proxy) -> None:
    """A proxy that ends the session itself (SIGTERM, a broken protocol) waits for the
    client's end before it exits; the client, still open, used to leave it the whole
    grace (a SIGTERMed stream proxy exited 1 s late)."""
    client = Client(proxy.address)
    assert proxy.opened.wait(WAIT)
    proxy.listener.finish()
    assert client.done.wait(WAIT)
    assert isinstance(client.lost[0], EnclaveUnavailableError)
    assert "ended the session" in str(client.lost[0])
    began = time.monotonic()
    proxy.listener.stop(grace=5.0)
    assert time.monotonic() - began < 1.0
    assert proxy.lost == []  # the proxy ended it: not a loss
    client.transport.send([output(b"too late")])  # dropped, without an error
    client.transport.close(timeout=1.0)


def test_one_source_cannot_take_every_vetting_slot() -> None:
    server = Proxy("127.0.0.1:0")
    host, port = server.address.rsplit(":", 1)
    silent: list[socket.socket] = []
    try:
        for _ in range(MAX_PENDING_PER_SOURCE):  # hold this source's slots (no preface)
            sock = socket.create_connection((host, int(port)), timeout=WAIT)
            silent.append(sock)
        time.sleep(0.2)  # let the proxy accept them
        extra = socket.create_connection((host, int(port)), timeout=WAIT)
        silent.append(extra)
        started = time.monotonic()
        assert extra.recv(1) == b"", "a third pending connection from one source was kept"
        assert time.monotonic() - started < WAIT / 2, "it waited for the handshake deadline"

        # Another source still gets in while this one's slots are taken.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
            other.settimeout(WAIT)
            other.bind(("127.0.0.2", 0))
            other.connect((host, int(port)))
            token = TOKEN.encode()
            other.sendall(PREFACE + struct.pack(">I", len(token)) + token)
            assert other.recv(4) == struct.pack(">I", 0)  # accepted
            assert server.opened.wait(WAIT)
    finally:
        for sock in silent:
            sock.close()
        server.listener.stop(grace=0.5)
