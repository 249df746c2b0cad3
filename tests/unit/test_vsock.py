"""The vsock transport: its addresses, and a session on the Unix-socket stand-in.

Every test here runs the real ``farside.transport.vsock`` (through the factory, as the
proxy and the client reach it) with ``vsock.SOCKETS`` replaced by the stand-in of
``_vsock_standin``: no ``AF_VSOCK`` socket is ever opened. Each test must leave no
thread and no socket behind, and every wait is bounded.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from farside._errors import EnclaveLoadError, EnclaveUnavailableError, StatusCode
from farside._proto.v1 import session_pb2 as pb
from farside._tls import TLSConfig
from farside.cli import build_parser
from farside.proxy.server import ephemeral_tls
from farside.transport import factory, vsock
from farside.transport.base import Admission, ClientTransport
from farside.transport.stream import StreamListener

from . import test_stream
from ._vsock_standin import WAIT, nothing_left, standin
from .test_stream import TOKEN
from .test_stream_edges import wait_for


@pytest.fixture(autouse=True)
def vsock_standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """vsock is the stand-in, and the test must leave nothing running."""
    monkeypatch.setattr(vsock, "SOCKETS", standin(tmp_path))
    with nothing_left():
        yield tmp_path


class Proxy(test_stream.Proxy):
    """``test_stream``'s proxy (it records frames; ``connection`` answers), started by
    ``vsock.listen`` on ``vsock:any:5005``."""

    def __init__(self, listen: str = "vsock:any:5005", tls: TLSConfig | None = None) -> None:
        super().__init__(listen, tls)

    def make_listener(self, listen: str, tls: TLSConfig | None) -> StreamListener:
        admission = Admission(TOKEN)
        return vsock.listen(
            listen, admission=admission, on_open=self._on_open, on_lost=self.lost.append, tls=tls
        )


class Client(test_stream.Client):
    """``test_stream``'s client, made by ``farside.transport.connect("vsock", ...)``
    (or another transport's ``name``)."""

    def make_transport(
        self, address: str, token: str, tls: TLSConfig | None = None, name: str = "vsock"
    ) -> ClientTransport:
        return factory.connect(name, address, token=token, tls=tls)


def output(data: bytes) -> pb.Frame:
    return pb.Frame(output=pb.Output(thread=1, data=data))


# ----------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("address", "listening", "parsed"),
    [
        ("vsock:3:5005", False, (3, 5005)),
        ("vsock:16:1", False, (16, 1)),
        ("vsock:any:5005", True, (vsock.CID_ANY, 5005)),
        ("vsock:-1:5005", True, (vsock.CID_ANY, 5005)),
        ("vsock:4294967294:4294967294", True, (4294967294, 4294967294)),
    ],
)
def test_addresses_parse_to_cid_and_port(
    address: str, listening: bool, parsed: tuple[int, int]
) -> None:
    assert vsock.parse_address(address, listening=listening) == parsed


@pytest.mark.parametrize(
    ("address", "listening", "says"),
    [
        ("127.0.0.1:5005", True, "a vsock address is vsock:CID:PORT"),
        ("unix:/tmp/x.sock", False, "a vsock address is vsock:CID:PORT"),
        ("vsock:3", False, "a vsock address is vsock:CID:PORT"),
        ("vsock3:5005", False, "a vsock address is vsock:CID:PORT"),
        ("vsock:any:5005", False, "a vsock client dials one CID"),
        ("vsock:-1:5005", False, "a vsock client dials one CID"),
        ("vsock:three:5005", True, "its CID 'three' is not a number"),
        ("vsock:3:+5", False, "its port '+5' is not a number"),
        ("vsock: 3:5005", False, "its CID ' 3' is not a number"),
        ("vsock:3:5005:1", False, "its port '5005:1' is not a number"),
        ("vsock:3:", False, "its port '' is not a number"),
        ("vsock:4294967295:5005", True, "the vsock CID in 'vsock:4294967295:5005' is out of range"),
        ("vsock:3:99999999999", False, "its port '99999999999' is not a number"),
        ("vsock:3:4294967295", False, "the vsock port in 'vsock:3:4294967295' is out of range"),
        ("vsock:any:0", True, "port 0 picks no free port"),
    ],
)
def test_bad_addresses_say_what_is_wrong(address: str, listening: bool, says: str) -> None:
    with pytest.raises(ValueError, match="vsock") as raised:
        vsock.parse_address(address, listening=listening)
    assert says in str(raised.value)


def test_a_client_with_a_bad_address_gets_a_load_error_before_it_connects() -> None:
    with pytest.raises(EnclaveLoadError, match="dials one CID") as raised:
        factory.connect("vsock", "vsock:any:5005", token=TOKEN, tls=None)
    assert raised.value.code == StatusCode.INVALID_ARGUMENT
    assert isinstance(raised.value.__cause__, ValueError)


def test_a_listener_on_a_bad_address_does_not_start() -> None:
    listener = factory.listen(
        "vsock", "127.0.0.1:0", admission=Admission(TOKEN), on_open=print, on_lost=print
    )
    with pytest.raises(ValueError, match="a vsock address is vsock:CID:PORT"):
        listener.start()


def test_the_real_address_is_af_vsock() -> None:
    """(No socket is made: only the address the real mapping gives.)"""
    if not hasattr(socket, "AF_VSOCK"):
        pytest.skip("no AF_VSOCK on this platform")
    real = vsock.VsockSockets()
    where = real.resolve("vsock:any:5005", listening=True)
    assert where.family == socket.AF_VSOCK
    assert (where.address, where.tls_name) == ((vsock.CID_ANY, 5005), None)
    assert real.source((3, 1234)) == "", "every connection comes from the parent: no shares"


# ----------------------------------------------------------------- sessions


def test_frames_cross_both_ways_and_a_wrong_token_does_not_disturb_the_session() -> None:
    proxy = Proxy()
    assert proxy.address == "vsock:any:5005"
    try:
        intruder = Client("vsock:3:5005", token="wrong")
        assert intruder.done.wait(WAIT)
        assert isinstance(intruder.lost[0], EnclaveLoadError)
        assert intruder.lost[0].code == StatusCode.UNAUTHENTICATED
        assert not proxy.opened.is_set()
        intruder.transport.close(timeout=1.0)

        client = Client("vsock:3:5005")
        assert proxy.opened.wait(WAIT)
        client.transport.send([output(b"up")])
        assert proxy.got.wait(WAIT)
        assert proxy.frames[0].output.data == b"up"
        assert proxy.connection is not None
        proxy.connection.send([output(b"down"), output(b"and again")])
        assert wait_for(lambda: len(client.frames) == 2)
        assert [f.output.data for f in client.frames] == [b"down", b"and again"]

        second = Client("vsock:3:5005")
        assert second.done.wait(WAIT)
        assert isinstance(second.lost[0], EnclaveLoadError)
        assert second.lost[0].code == StatusCode.FAILED_PRECONDITION
        second.transport.close(timeout=1.0)

        client.transport.send([output(b"still here")])  # the refusals disturbed nothing
        assert wait_for(lambda: len(proxy.frames) == 2)
        client.transport.close(timeout=1.0)
        assert not client.lost, "an orderly close is not a loss"
    finally:
        proxy.listener.stop(grace=1.0)


def test_tls_runs_over_vsock_and_pins_the_proxys_certificate() -> None:
    # A name no client could check: a vsock peer has none, so no host name is checked.
    tls = ephemeral_tls("enclave.invalid", None)
    proxy = Proxy(tls=tls)
    try:
        other = ephemeral_tls("enclave.invalid", None)
        wrong = Client("vsock:3:5005", tls=TLSConfig(ca=other.cert))
        assert wrong.done.wait(WAIT)
        assert isinstance(wrong.lost[0], EnclaveUnavailableError)
        assert "CERTIFICATE_VERIFY_FAILED" in str(wrong.lost[0])
        assert not proxy.opened.is_set()
        wrong.transport.close(timeout=1.0)

        client = Client("vsock:3:5005", tls=TLSConfig(ca=tls.cert))
        assert proxy.opened.wait(WAIT)
        assert proxy.connection is not None
        assert proxy.connection._tls is not None, "the session is not encrypted"
        client.transport.send([output(b"secret")])
        assert proxy.got.wait(WAIT)
        assert proxy.frames[0].output.data == b"secret"
        proxy.connection.send([output(b"answer")])
        assert wait_for(lambda: client.frames)
        assert client.frames[0].output.data == b"answer"
        client.transport.close(timeout=1.0)
    finally:
        proxy.listener.stop(grace=1.0)


def test_a_plaintext_client_is_not_served_by_a_tls_proxy() -> None:
    proxy = Proxy(tls=ephemeral_tls("enclave.invalid", None))
    try:
        client = Client("vsock:3:5005")
        assert client.done.wait(WAIT)
        assert isinstance(client.lost[0], EnclaveUnavailableError)
        assert not proxy.opened.is_set()
        client.transport.close(timeout=1.0)
    finally:
        proxy.listener.stop(grace=1.0)


def test_nobody_listening_is_unavailable_not_a_hang() -> None:
    client = Client("vsock:3:5999")
    assert client.done.wait(WAIT)
    assert isinstance(client.lost[0], EnclaveUnavailableError)
    assert "vsock:3:5999" in str(client.lost[0])
    client.transport.close(timeout=1.0)


def test_stopping_the_listener_removes_the_standin_socket(vsock_standin: Path) -> None:
    proxy = Proxy()
    assert (vsock_standin / "vsock-5005.sock").exists()
    proxy.listener.stop(grace=0.1)
    assert not (vsock_standin / "vsock-5005.sock").exists()


# ----------------------------------------------------------------- names


def test_vsock_is_a_transport_for_proxies_but_not_for_provisioners() -> None:
    assert "vsock" in factory.ALL_TRANSPORTS
    assert "vsock" not in factory.TRANSPORTS
    with pytest.raises(ValueError, match="through its relay"):
        factory.choose_transport("vsock")
    with pytest.raises(ValueError, match="one of grpc, stream, vsock"):
        factory.connect("carrier-pigeon", "vsock:3:5005", token=TOKEN, tls=None)


def test_the_cli_offers_vsock_to_the_proxy_and_not_to_clients(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["proxy", "--transport", "vsock", "--listen", "vsock:any:5005", "--token-stdin"]
    )
    assert args.transport == "vsock"
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--transport", "vsock"])
    assert "invalid choice: 'vsock'" in capsys.readouterr().err
