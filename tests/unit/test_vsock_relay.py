"""The parent's relay (``farside vsock-relay``): a session through it, and its bounds.

The relay listens on 127.0.0.1 and reaches "the enclave" through the Unix-socket
stand-in of ``_vsock_standin`` (or, to make a connect hang, a full TCP backlog): no
``AF_VSOCK`` socket is opened. The enclave's side is either the real vsock transport
(a session) or a raw socket the test drives (the bounds). Each test must leave no
thread and no socket behind, and every wait is bounded.
"""

from __future__ import annotations

import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from farside._tls import TLSConfig
from farside.provision._spawn import read_line
from farside.proxy.server import ephemeral_tls
from farside.transport import vsock
from farside.transport.relay import RelayLimits, VsockRelay
from farside.transport.sockets import SocketAddress
from farside.transport.vsock import VsockSockets

from ._vsock_standin import WAIT, nothing_left, standin
from .test_stream import TOKEN
from .test_stream_edges import wait_for
from .test_vsock import Client, Proxy, output

Address = tuple[str, int]
MakeRelay = Callable[..., tuple[VsockRelay, Address]]


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    with nothing_left():
        yield


@pytest.fixture
def make_relay(tmp_path: Path) -> Iterator[MakeRelay]:
    """Start relays from 127.0.0.1:0 to the stand-in's port 5005 (all stopped after)."""
    made: list[VsockRelay] = []

    def make(
        limits: RelayLimits | None = None, sockets: VsockSockets | None = None
    ) -> tuple[VsockRelay, Address]:
        relay = VsockRelay(
            "127.0.0.1:0", "vsock:16:5005", limits=limits, sockets=sockets or standin(tmp_path)
        )
        made.append(relay)
        host, port = relay.start().rsplit(":", 1)
        return relay, (host, int(port))

    yield make
    for relay in made:
        relay.stop(timeout=WAIT)


class Enclave:
    """A raw stand-in for the enclave's vsock port: the test accepts and drives connections."""

    def __init__(self, directory: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(directory / "vsock-5005.sock"))
        self.sock.listen(16)
        self.sock.settimeout(WAIT)
        self.accepted: list[socket.socket] = []

    def accept(self, timeout: float = WAIT) -> socket.socket:
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        conn.settimeout(WAIT)
        self.accepted.append(conn)
        return conn

    def close(self) -> None:
        for sock in [*self.accepted, self.sock]:
            sock.close()


@pytest.fixture
def enclave(tmp_path: Path) -> Iterator[Enclave]:
    port = Enclave(tmp_path)
    yield port
    port.close()


@pytest.fixture
def clients() -> Iterator[Callable[..., socket.socket]]:
    """TCP connections to a relay, closed after the test."""
    made: list[socket.socket] = []

    def connect(address: Address, source: str = "127.0.0.1") -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        made.append(sock)
        sock.settimeout(WAIT)
        sock.bind((source, 0))
        sock.connect(address)
        return sock

    yield connect
    for sock in made:
        sock.close()


def read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def closed_at_once(sock: socket.socket) -> bool:
    """The peer closed ``sock`` without a word (a peer that kept it open would let the
    read wait out the socket's timeout and raise ``TimeoutError`` instead)."""
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        data = b""
    return data == b""


# ----------------------------------------------------------------- a session


def test_a_session_crosses_the_relay_with_tls_end_to_end_and_the_relay_sees_ciphertext(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_relay: MakeRelay
) -> None:
    """The Nitro shape: the client's stream transport over TCP to the relay, the relay
    to the proxy's vsock listener, TLS from the client to the proxy."""
    monkeypatch.setattr(vsock, "SOCKETS", standin(tmp_path))
    relayed: list[bytes] = []
    real_sendall = socket.socket.sendall

    def spy(sock: socket.socket, data: Any, *args: Any) -> None:
        if threading.current_thread().name.startswith("farside-relay"):
            relayed.append(bytes(data))
        real_sendall(sock, data, *args)

    monkeypatch.setattr(socket.socket, "sendall", spy)
    tls = ephemeral_tls("127.0.0.1", None)  # the name the client dials: the relay's host
    proxy = Proxy(tls=tls)
    relay, (host, port) = make_relay()
    try:
        client = Client(f"{host}:{port}", tls=TLSConfig(ca=tls.cert), name="stream")
        assert proxy.opened.wait(WAIT)
        client.transport.send([output(b"the client's secret")])
        assert proxy.got.wait(WAIT)
        assert proxy.frames[0].output.data == b"the client's secret"
        assert proxy.connection is not None
        proxy.connection.send([output(b"the enclave's secret")])
        assert wait_for(lambda: client.frames)
        assert client.frames[0].output.data == b"the enclave's secret"
        assert relay.connections == 1
        client.transport.close(timeout=1.0)
        assert not client.lost
    finally:
        proxy.listener.stop(grace=1.0)
    assert wait_for(lambda: relay.connections == 0)
    wire = b"".join(relayed)
    assert len(wire) > 1000, "the relay did not carry the session"
    for plain in (b"secret", TOKEN.encode(), b"farside-stream"):
        assert plain not in wire, f"the relay saw {plain!r} in the clear"


def test_a_refused_session_reaches_the_client_through_the_relay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_relay: MakeRelay
) -> None:
    monkeypatch.setattr(vsock, "SOCKETS", standin(tmp_path))
    proxy = Proxy()
    relay, (host, port) = make_relay()
    try:
        intruder = Client(f"{host}:{port}", token="wrong", name="stream")
        assert intruder.done.wait(WAIT)
        assert "invalid session token" in str(intruder.lost[0])
        intruder.transport.close(timeout=1.0)
        client = Client(f"{host}:{port}", name="stream")
        assert proxy.opened.wait(WAIT)
        client.transport.close(timeout=1.0)
    finally:
        proxy.listener.stop(grace=1.0)
    assert wait_for(lambda: relay.connections == 0)


# ----------------------------------------------------------------- ends


def test_a_half_close_is_passed_on_and_the_other_direction_still_flows(
    make_relay: MakeRelay, enclave: Enclave, clients: Callable[..., socket.socket]
) -> None:
    relay, address = make_relay()
    client = clients(address)
    inside = enclave.accept()
    client.sendall(b"request")
    client.shutdown(socket.SHUT_WR)
    assert read_to_end(inside) == b"request"
    inside.sendall(b"answer, after the client's end")
    inside.shutdown(socket.SHUT_WR)
    assert read_to_end(client) == b"answer, after the client's end"
    assert wait_for(lambda: relay.connections == 0)


@pytest.mark.parametrize("who", ["enclave", "client"])
def test_one_side_hanging_up_ends_the_other(
    who: str, make_relay: MakeRelay, enclave: Enclave, clients: Callable[..., socket.socket]
) -> None:
    relay, address = make_relay(RelayLimits(linger=0.3))
    client = clients(address)
    inside = enclave.accept()
    gone, other = (inside, client) if who == "enclave" else (client, inside)
    gone.close()
    assert closed_at_once(other)
    # The other side never closes: after the linger the relay drops it all the same.
    assert wait_for(lambda: relay.connections == 0)


def test_a_reset_closes_both_sides_at_once(
    make_relay: MakeRelay, enclave: Enclave, clients: Callable[..., socket.socket]
) -> None:
    relay, address = make_relay(RelayLimits(linger=60.0))  # no waiting for a linger
    client = clients(address)
    inside = enclave.accept()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    assert closed_at_once(inside)
    assert wait_for(lambda: relay.connections == 0, timeout=WAIT / 2)


def test_stopping_the_relay_ends_every_connection(
    make_relay: MakeRelay, enclave: Enclave, clients: Callable[..., socket.socket]
) -> None:
    relay, address = make_relay()
    pairs = [(clients(address), enclave.accept()) for _ in range(3)]
    relay.stop(timeout=WAIT)
    assert relay.connections == 0
    for client, inside in pairs:
        assert closed_at_once(client)
        assert closed_at_once(inside)


# ----------------------------------------------------------------- bounds


def test_connections_beyond_the_limit_are_refused(
    make_relay: MakeRelay, enclave: Enclave, clients: Callable[..., socket.socket]
) -> None:
    relay, address = make_relay(RelayLimits(max_connections=2, max_per_source=2))
    first, second = clients(address), clients(address)
    enclave.accept()
    enclave.accept()
    assert closed_at_once(clients(address))
    with pytest.raises(TimeoutError):
        enclave.accept(timeout=0.3)  # the refused one never reached the enclave
    assert wait_for(lambda: relay.connections == 2)

    first.close()
    enclave.accepted[0].close()
    assert wait_for(lambda: relay.connections == 1)
    third = clients(address)
    inside = enclave.accept()
    third.sendall(b"a slot was free again")
    assert inside.recv(64) == b"a slot was free again"
    second.close()


def test_one_client_address_cannot_take_every_slot(
    make_relay: MakeRelay, enclave: Enclave, clients: Callable[..., socket.socket]
) -> None:
    relay, address = make_relay(RelayLimits(max_connections=8, max_per_source=1))
    clients(address)
    enclave.accept()
    assert closed_at_once(clients(address))
    other = clients(address, source="127.0.0.2")
    inside = enclave.accept()
    other.sendall(b"another client")
    assert inside.recv(64) == b"another client"
    assert relay.connections == 2


def test_an_unreachable_enclave_closes_the_client_at_once(
    make_relay: MakeRelay, clients: Callable[..., socket.socket]
) -> None:
    relay, address = make_relay()  # nobody listens on the stand-in's port
    assert closed_at_once(clients(address))
    assert wait_for(lambda: relay.connections == 0)


def test_reaching_the_enclave_has_a_deadline(
    make_relay: MakeRelay, clients: Callable[..., socket.socket]
) -> None:
    # A TCP listener whose backlog is full drops further SYNs: connect() hangs.
    with socket.socket() as full, socket.socket() as filler:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        filler.connect(full.getsockname())
        hanging = VsockSockets(
            address_of=lambda cid, port: SocketAddress(socket.AF_INET, full.getsockname())
        )
        relay, address = make_relay(RelayLimits(connect_timeout=0.3), sockets=hanging)
        client = clients(address)
        started = time.monotonic()
        assert client.recv(1) == b""
        assert time.monotonic() - started > 0.2  # it waited for the connect timeout
        assert wait_for(lambda: relay.connections == 0)


def test_a_reader_that_stops_holds_the_writer_back(
    make_relay: MakeRelay, enclave: Enclave, clients: Callable[..., socket.socket]
) -> None:
    """The relay moves one chunk at a time: with the enclave not reading, the client
    can write only what the sockets' buffers hold (a few MiB on loopback), then
    everything arrives, in order."""
    _, address = make_relay()
    client = clients(address)
    inside = enclave.accept()
    pattern = bytes(range(256)) * 256  # 64 KiB
    client.setblocking(False)
    sent = 0
    stalled_since = time.monotonic()
    while time.monotonic() - stalled_since < 0.5:  # until nothing moves for 0.5 s
        try:
            sent += client.send(pattern[sent % len(pattern) :] or pattern)
            stalled_since = time.monotonic()
        except BlockingIOError:
            time.sleep(0.01)
        assert sent < 64 * 2**20, "the relay kept taking what nobody reads"
    client.setblocking(True)
    client.shutdown(socket.SHUT_WR)
    received = read_to_end(inside)
    assert len(received) == sent
    assert received == (pattern * (sent // len(pattern) + 1))[:sent]


# ----------------------------------------------------------------- set-up


@pytest.mark.parametrize(
    ("listen", "to", "says"),
    [
        ("unix:/tmp/relay.sock", "vsock:16:5005", "the relay listens on host:port"),
        ("relay", "vsock:16:5005", "a stream address is unix:/path or host:port"),
        ("127.0.0.1:0", "vsock:any:5005", "a vsock client dials one CID"),
        ("127.0.0.1:0", "127.0.0.1:5005", "a vsock address is vsock:CID:PORT"),
        ("127.0.0.1:0", "vsock:16:0", "port 0 picks no free port"),
    ],
)
def test_bad_addresses_are_refused_when_the_relay_is_made(listen: str, to: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        VsockRelay(listen, to)


@pytest.mark.parametrize(
    "limits",
    [
        {"max_connections": 0},
        {"max_per_source": 0},
        {"chunk_bytes": 0},
        {"linger": 0.0},
        {"connect_timeout": -1.0},
    ],
)
def test_limits_are_checked(limits: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="RelayLimits"):
        RelayLimits(**limits)


def farside(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "farside", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_the_cli_relay_starts_and_stops_on_sigterm() -> None:
    """(No client connects, so it never dials vsock.)"""
    relay = farside("vsock-relay", "--listen", "127.0.0.1:0", "--to", "vsock:16:5005")
    try:
        assert relay.stdout is not None
        line = read_line(relay.stdout, timeout=30)
        assert line is not None
        assert line.startswith("farside vsock-relay listening on 127.0.0.1:")
        assert line.endswith(", relaying to vsock:16:5005")
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(timeout=WAIT) == 0
    finally:
        relay.kill()
        relay.communicate(timeout=WAIT)


def test_the_cli_relay_says_what_is_wrong_with_an_address() -> None:
    relay = farside("vsock-relay", "--listen", "127.0.0.1:0", "--to", "vsock:any:5005")
    _, err = relay.communicate(timeout=30)
    assert relay.returncode == 1
    assert err.decode().startswith("farside vsock-relay: a vsock client dials one CID")
