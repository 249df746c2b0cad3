"""The stream transport's event-loop client end (``farside.transport.aio.stream``).

Against the threaded proxy end (``StreamListener``) and stand-in proxies on raw
sockets, in this process: refusals, bad verdicts, deadlines, oversized messages, TLS
pinning, order under a flood, and an orderly close. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farside._errors import EnclaveError, EnclaveLoadError, EnclaveUnavailableError, StatusCode
from farside._proto.v1 import session_pb2 as pb
from farside._tls import TLSConfig
from farside.proxy.server import ephemeral_tls
from farside.transport.aio.stream import AsyncStreamClientTransport, connect

from .test_stream import TOKEN, WAIT, Proxy, output
from .test_stream_edges import FakeProxy, hello


class AsyncClient:
    """A started client end, recording what it receives and why it was lost."""

    def __init__(self) -> None:
        self.frames: list[pb.Frame] = []
        self.lost: list[EnclaveError] = []
        self.transport: AsyncStreamClientTransport | None = None

    async def start(self, address: str, token: str = TOKEN, **kwargs: Any) -> AsyncClient:
        self.transport = AsyncStreamClientTransport(address, token=token, **kwargs)
        await self.transport.start(self.frames.extend, self.lost.append)
        return self


async def until(predicate: Any, timeout: float = WAIT) -> bool:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)
    return True


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    server = Proxy(f"unix:{tmp_path / 'proxy.sock'}")
    yield server
    server.listener.stop(grace=1.0)


def test_frames_cross_both_ways_and_a_close_is_not_a_loss(proxy: Proxy) -> None:
    async def scenario() -> None:
        client = await AsyncClient().start(proxy.address)
        assert client.transport is not None
        assert await asyncio.to_thread(proxy.opened.wait, WAIT)
        client.transport.send([output(b"hello")])
        assert await asyncio.to_thread(proxy.got.wait, WAIT)
        assert proxy.frames[0].output.data == b"hello"
        assert proxy.connection is not None
        proxy.connection.send([output(b"back"), output(b"again")])
        await until(lambda: len(client.frames) == 2)
        assert [f.output.data for f in client.frames] == [b"back", b"again"]
        await client.transport.aclose(timeout=1.0)
        assert not client.lost, "an orderly close is not a loss"

    asyncio.run(scenario())


def test_a_wrong_token_and_a_second_session_are_refused(proxy: Proxy) -> None:
    async def scenario() -> None:
        intruder = await AsyncClient().start(proxy.address, token="wrong")
        assert isinstance(intruder.lost[0], EnclaveLoadError)
        assert intruder.lost[0].code == StatusCode.UNAUTHENTICATED
        client = await AsyncClient().start(proxy.address)
        assert not client.lost
        second = await AsyncClient().start(proxy.address)
        assert isinstance(second.lost[0], EnclaveLoadError)
        assert second.lost[0].code == StatusCode.FAILED_PRECONDITION
        assert client.transport is not None
        await client.transport.aclose(timeout=1.0)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (struct.pack(">I", 3) + b"\xff\xff\xff", "not a verdict"),
        (struct.pack(">I", 1 << 20), "hung up before answering"),  # longer than any answer
        (b"", "hung up before answering"),
    ],
    ids=["garbage", "oversized", "hang-up"],
)
def test_a_bad_verdict_is_a_loss_not_an_exception(tmp_path: Path, reply: bytes, says: str) -> None:
    fake = FakeProxy(tmp_path / "fake.sock", reply)
    try:
        client = asyncio.run(AsyncClient().start(fake.address))
        assert isinstance(client.lost[0], EnclaveUnavailableError)
        assert fake.address in str(client.lost[0])
        assert says in str(client.lost[0])
    finally:
        fake.close()


def test_a_proxy_that_answers_slowly_is_given_up_at_the_connect_deadline(tmp_path: Path) -> None:
    fake = FakeProxy(tmp_path / "fake.sock", struct.pack(">I", 1000) + b"x" * 64, drip=0.2)
    try:
        client = asyncio.run(AsyncClient().start(fake.address, connect_timeout=1.0))
        assert isinstance(client.lost[0], EnclaveUnavailableError)
        assert "timed out" in str(client.lost[0])
    finally:
        fake.close()


def test_an_oversized_message_in_the_session_ends_it_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "fake.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(1)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(WAIT)
                got = b""
                while len(got) < len(hello()):
                    got += conn.recv(4096)
                conn.sendall(struct.pack(">I", 0) + struct.pack(">I", 2**30))
                conn.recv(1)  # until the client hangs up

        server = threading.Thread(target=serve, daemon=True)
        server.start()

        async def scenario() -> list[EnclaveError]:
            client = await AsyncClient().start(f"unix:{path}")
            await until(lambda: client.lost)
            return client.lost

        lost = asyncio.run(scenario())
        server.join(WAIT)
    assert isinstance(lost[0], EnclaveUnavailableError)
    assert "1073741824-byte message" in str(lost[0])


def test_a_flood_is_queued_and_arrives_in_order(proxy: Proxy) -> None:
    chunk = b"z" * (1 << 20)

    async def scenario() -> None:
        client = await AsyncClient().start(proxy.address)
        assert client.transport is not None
        for index in range(24):  # far more than the socket buffers hold
            client.transport.send([output(bytes([index]) + chunk)])
        assert client.transport.backlog > 0
        await client.transport.drain()

        def all_there() -> bool:
            return len(proxy.frames) == 24

        await until(all_there, 30)
        assert [f.output.data[0] for f in proxy.frames] == list(range(24))
        await client.transport.aclose(timeout=1.0)

    asyncio.run(scenario())


def test_tls_pins_the_proxy_certificate() -> None:
    tls = ephemeral_tls("127.0.0.1", None)
    server = Proxy("127.0.0.1:0", tls=tls)
    other = ephemeral_tls("127.0.0.1", None)
    try:

        async def scenario() -> None:
            wrong = AsyncClient()
            wrong.transport = connect(server.address, token=TOKEN, tls=TLSConfig(ca=other.cert))
            await wrong.transport.start(wrong.frames.extend, wrong.lost.append)
            assert isinstance(wrong.lost[0], EnclaveUnavailableError)
            assert "CERTIFICATE_VERIFY_FAILED" in str(wrong.lost[0])
            assert not server.opened.is_set()
            pinned = AsyncClient()
            pinned.transport = connect(server.address, token=TOKEN, tls=TLSConfig(ca=tls.cert))
            await pinned.transport.start(pinned.frames.extend, pinned.lost.append)
            assert not pinned.lost
            pinned.transport.send([output(b"over tls")])
            await until(lambda: server.frames)
            assert server.frames[0].output.data == b"over tls"
            assert server.connection is not None
            server.connection.send([output(b"and back")])
            await until(lambda: pinned.frames)
            assert pinned.frames[0].output.data == b"and back"
            await pinned.transport.aclose(timeout=1.0)
            assert not pinned.lost

        asyncio.run(scenario())
    finally:
        server.listener.stop(grace=1.0)
