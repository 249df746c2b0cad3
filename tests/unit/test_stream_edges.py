"""The stream transport at its edges: session ends, handshake deadlines, TLS failures.

Like ``test_stream.py``, each test runs a ``StreamListener`` (or a stand-in proxy on a
raw socket) in this process; every wait is bounded and every socket is closed.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farside._errors import EnclaveUnavailableError
from farside._proto.v1 import session_pb2 as pb
from farside._tls import TLSConfig
from farside.proxy.server import ephemeral_tls
from farside.transport import stream
from farside.transport.stream import _TLS, PREFACE, StreamConnection

from .test_stream import TOKEN, WAIT, Client, Proxy, output


def hello(token: str = TOKEN) -> bytes:
    data = token.encode()
    return PREFACE + struct.pack(">I", len(data)) + data


def wait_for(predicate: Any, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class FakeProxy:
    """A Unix listener that reads the client's hello and answers with ``reply`` bytes,
    ``drip`` seconds apart one byte at a time if ``drip`` is set."""

    def __init__(self, path: Path, reply: bytes, drip: float = 0.0) -> None:
        self.address = f"unix:{path}"
        self._reply = reply
        self._drip = drip
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.bind(str(path))
        self._sock.listen(1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(WAIT)
            try:
                got = b""
                while len(got) < len(hello()):
                    data = conn.recv(4096)
                    if not data:
                        return
                    got += data
                if not self._drip:
                    conn.sendall(self._reply)
                    return
                for byte in self._reply:
                    if self._stop.wait(self._drip):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(WAIT)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    server = Proxy(f"unix:{tmp_path / 'proxy.sock'}")
    yield server
    server.listener.stop(grace=1.0)


# ------------------------------------------------------------------ the proxy's end


def test_a_client_gone_before_the_answer_ends_the_session_instead_of_wedging_it(
    tmp_path: Path,
) -> None:
    # The token was right, so the proxy took its one session and opened it; if the
    # accepting answer cannot be written, the session is over and on_lost must say
    # so (the proxy would otherwise wait for a session that never reads a frame).
    release = threading.Event()
    server = Proxy(f"unix:{tmp_path / 'proxy.sock'}")
    opened = server._on_open

    def slow_open(connection: StreamConnection) -> Any:
        release.wait(WAIT)
        return opened(connection)

    server.listener._on_open = slow_open
    try:
        with socket.socket(socket.AF_UNIX) as peer:
            peer.settimeout(WAIT)
            peer.connect(server.address[len("unix:") :])
            peer.sendall(hello())
            time.sleep(0.2)  # the proxy is vetting it: the token is right
        release.set()  # the client has gone: the answer meets a closed socket
        assert wait_for(lambda: server.lost), "the proxy never learned the session was lost"
        assert isinstance(server.lost[0], EnclaveUnavailableError)
        assert "the client" in str(server.lost[0])
    finally:
        release.set()
        server.listener.stop(grace=1.0)


def test_a_slow_preface_is_dropped_at_the_handshake_deadline(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A byte every 0.3 s never trips a per-recv timeout; the deadline is for the whole
    # handshake, else 8 such connections keep the real client out for hours.
    monkeypatch.setattr(stream, "HANDSHAKE_TIMEOUT", 1.0)
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX) as slow:
        slow.connect(proxy.address[len("unix:") :])
        slow.settimeout(0.3)
        dropped = False
        for byte in hello():
            try:
                slow.send(bytes([byte]))
                if slow.recv(4096) == b"":
                    dropped = True
                    break
            except TimeoutError:
                continue
            except OSError:
                dropped = True
                break
    assert dropped, "the proxy let a slow client vet for as long as it liked"
    assert time.monotonic() - started < 3.0


# ------------------------------------------------------------------ the client's end


def test_a_malformed_refusal_is_a_loss_not_an_exception(tmp_path: Path) -> None:
    fake = FakeProxy(tmp_path / "fake.sock", struct.pack(">I", 3) + b"\xff\xff\xff")
    try:
        client = Client(fake.address)  # start() must report, not raise DecodeError
        assert client.done.wait(WAIT)
        assert isinstance(client.lost[0], EnclaveUnavailableError)
        assert fake.address in str(client.lost[0])
    finally:
        fake.close()


def test_a_proxy_that_answers_slowly_is_given_up_at_the_connect_deadline(
    tmp_path: Path,
) -> None:
    # An answer announced as 1 MiB and sent a byte every 0.2 s: per-recv timeouts
    # never fire; connect_timeout bounds the whole handshake.
    fake = FakeProxy(tmp_path / "fake.sock", struct.pack(">I", 1 << 20) + b"x" * 64, drip=0.2)
    try:
        started = time.monotonic()
        client = Client(fake.address, connect_timeout=1.0)
        assert client.done.is_set()
        assert time.monotonic() - started < 3.0
        assert isinstance(client.lost[0], EnclaveUnavailableError)
    finally:
        fake.close()


# ------------------------------------------------------------------ TLS


def test_sending_after_a_broken_tls_record_does_not_raise() -> None:
    # Someone on the path injects a bogus TLS record: the reader reports the loss,
    # and the endpoint, which may still send (a Close, output), must not get an
    # ssl.SSLError out of send(): sending never raises.
    tls = ephemeral_tls("127.0.0.1", None)
    server = Proxy("127.0.0.1:0", tls=tls)
    try:
        client = Client(server.address, tls=TLSConfig(ca=tls.cert).client_ssl_context())
        assert server.opened.wait(WAIT)
        assert server.connection is not None
        server.connection._sock.sendall(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
        assert client.done.wait(WAIT)
        assert isinstance(client.lost[0], EnclaveUnavailableError)
        client.transport.send([output(b"after")])  # must not raise
        client.transport.close(timeout=1.0)
    finally:
        server.listener.stop(grace=1.0)


def tls_pair() -> tuple[_TLS, _TLS]:
    tls = ephemeral_tls("127.0.0.1", None)
    server = _TLS(tls.server_ssl_context(), server_side=True)
    client = _TLS(
        TLSConfig(ca=tls.cert).client_ssl_context(),
        server_side=False,
        server_hostname="127.0.0.1",
    )
    for _ in range(4):
        for end in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                end._object.do_handshake()
        server._incoming.write(client._outgoing.read())
        client._incoming.write(server._outgoing.read())
    assert client._object.version() == server._object.version() == "TLSv1.3"
    return client, server


def test_data_that_arrives_with_close_notify_is_not_dropped() -> None:
    client, server = tls_pair()
    client._object.write(b"last words")
    with pytest.raises(ssl.SSLWantReadError):
        client._object.unwrap()  # sends close_notify, waits for the peer's
    plain = server.decrypt(client._outgoing.read())
    assert plain == b"last words"
    assert server.decrypt(b"") is None  # and then the end


# ------------------------------------------------------------------ ending


def test_close_returns_within_its_timeout_while_the_reader_is_busy(proxy: Proxy) -> None:
    # The reader is inside the sink (the endpoint is busy) and the proxy never hangs
    # up: close(timeout) waits for both, but within one timeout, not one per thread.
    busy = threading.Event()
    release = threading.Event()

    def sink(frames: list[pb.Frame]) -> None:
        busy.set()
        release.wait(WAIT)

    transport = stream.StreamClientTransport(proxy.address, token=TOKEN)
    transport.start(sink, lambda error: None)
    try:
        assert proxy.opened.wait(WAIT)
        assert proxy.connection is not None
        proxy.connection.send([output(b"keep the reader busy")])
        assert busy.wait(WAIT)
        started = time.monotonic()
        transport.close(timeout=1.0)
        assert time.monotonic() - started < 1.5
    finally:
        release.set()
        transport.close(timeout=1.0)
        connection = transport._connection
        if connection is not None and connection._reader is not None:
            connection._reader.join(WAIT)


def test_a_tls_record_without_application_data_before_the_preface_is_not_a_hang_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over TLS, _recv returns b"" for a record that carries no application data (a
    # post-handshake message, an empty record); only None is the end of the stream.
    real = StreamConnection._recv
    calls = {"n": 0}

    def recv(self: StreamConnection) -> bytes | None:
        if self.peer == "the client":  # the proxy's end
            calls["n"] += 1
            if calls["n"] == 1:
                return b""
        return real(self)

    monkeypatch.setattr(StreamConnection, "_recv", recv)
    server = Proxy(f"unix:{tmp_path / 'proxy.sock'}")
    try:
        client = Client(server.address)
        assert server.opened.wait(WAIT), f"refused: {client.lost}"
        client.transport.close(timeout=1.0)
    finally:
        server.listener.stop(grace=1.0)


def test_a_rejected_client_certificate_is_named_in_the_client_error() -> None:
    # mTLS: in TLS 1.3 the client's handshake is over before the proxy checks its
    # certificate, so only the proxy's alert can tell it why it was turned away.
    client_ca = ephemeral_tls("127.0.0.1", None)
    tls = ephemeral_tls("127.0.0.1", None)
    server = Proxy(
        "127.0.0.1:0", tls=TLSConfig(cert=tls.cert, key=tls.key, client_ca=client_ca.cert)
    )
    try:
        anonymous = Client(server.address, tls=TLSConfig(ca=tls.cert).client_ssl_context())
        assert anonymous.done.wait(WAIT)
        assert "CERTIFICATE_REQUIRED" in str(anonymous.lost[0])
        stranger = ephemeral_tls("127.0.0.1", None)
        context = TLSConfig(ca=tls.cert, cert=stranger.cert, key=stranger.key).client_ssl_context()
        unknown = Client(server.address, tls=context)
        assert unknown.done.wait(WAIT)
        assert "UNKNOWN_CA" in str(unknown.lost[0])
        assert not server.opened.is_set()
    finally:
        server.listener.stop(grace=1.0)
