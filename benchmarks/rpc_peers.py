"""rpyc and Pyro5 as peers: an empty call and a call with one server->client callback.

Each is used the way a performance-minded user writes it: the connection or proxy
made and bound once, bound methods looked up once, the callback handed over once
(the server keeps it), TCP_NODELAY on. The servers run in a peer subprocess
(``benchmarks.peers``). ``HOW`` says, call by call, what is measured.
"""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .raw_peers import Call, Close, tcp_address

# Pyro5's serializers worth trying for bytes (json cannot carry them); the harness
# probes each and uses the fastest (``baselines.pyro5_serializer``).
PYRO5_SERIALIZERS = ("marshal", "msgpack", "serpent")

HOW = {
    "rpyc": (
        "`empty = conn.root.empty` and `nested = conn.root.nested` looked up once, then "
        "`empty()` / `nested(payload)`; the client function `echo` is handed over once "
        "(`conn.root.set_callback(echo)`) and the server calls `self.callback(value)`, which "
        "the waiting client thread serves; rpyc.Service on a ThreadedServer, TCP_NODELAY on "
        "both ends (TCP) or `rpyc.utils.factory.unix_connect` (Unix), default protocol config "
        "(a classic SlaveService connection with the same cached calls was no faster)"
    ),
    "rpyc, lookup per call (reference)": (
        "`conn.root.nested_with(payload, echo)`: the method looked up and the callback "
        "boxed on every call (how docs/performance.md measured rpyc before); reference only"
    ),
    "Pyro5": (
        "`proxy = Proxy(uri)`, `proxy._pyroSerializer = S`, `proxy._pyroBind()` once; "
        "`empty = proxy.empty`, `nested = proxy.nested` once, then `empty()` / "
        "`nested(payload)`; a `Callback` object is registered once in a client-side daemon "
        "(its own thread) and handed over once (`proxy.set_callback(uri, S)`); the server "
        "calls it through one bound proxy per server thread; SOCK_NODELAY on, thread server"
    ),
}


# ---------------------------------------------------------------- servers (peer subprocess)


def serve_rpyc(address: str, ready: Callable[[str], None]) -> None:
    import rpyc
    from rpyc.utils.server import ThreadedServer

    class PeerService(rpyc.Service):  # one instance per connection
        callback: Callable[[bytes], bytes] | None = None

        def exposed_empty(self) -> None:
            return None

        def exposed_set_callback(self, callback: Callable[[bytes], bytes]) -> None:
            self.callback = callback

        def exposed_nested(self, value: bytes) -> bytes:
            assert self.callback is not None
            return self.callback(value)

        def exposed_nested_with(self, value: bytes, callback: Callable[[bytes], bytes]) -> bytes:
            return callback(value)

    class NoDelayServer(ThreadedServer):  # type: ignore[misc]
        def _accept_method(self, sock: socket.socket) -> None:
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super()._accept_method(sock)

    if address.startswith("unix:"):
        server = NoDelayServer(PeerService, socket_path=address[5:], auto_register=False)
    else:
        host, port = address.rsplit(":", 1)
        server = NoDelayServer(PeerService, hostname=host, port=int(port), auto_register=False)
    server._listen()  # listening before we say so (start() would listen only later)
    ready(address if address.startswith("unix:") else tcp_address(server.port))
    server.start()


def serve_pyro5(address: str, ready: Callable[[str], None]) -> None:
    import Pyro5.api

    Pyro5.config.SOCK_NODELAY = True
    local = threading.local()

    @Pyro5.api.expose
    class PeerObject:
        callback: tuple[str, str] | None = None

        def empty(self) -> None:
            return None

        def set_callback(self, uri: str, serializer: str) -> None:
            PeerObject.callback = (uri, serializer)

        def nested(self, value: Any) -> Any:
            # One bound callback proxy per server thread (Pyro5 proxies are thread-owned);
            # a pooled thread may have served an earlier client, hence the key.
            assert PeerObject.callback is not None
            cache = getattr(local, "echoes", None)
            if cache is None:
                cache = local.echoes = {}
            echo = cache.get(PeerObject.callback)
            if echo is None:
                uri, serializer = PeerObject.callback
                proxy = Pyro5.api.Proxy(uri)
                proxy._pyroSerializer = serializer
                proxy._pyroBind()
                echo = cache[PeerObject.callback] = proxy.echo
            return echo(value)

    if address.startswith("unix:"):
        daemon = Pyro5.api.Daemon(unixsocket=address[5:])
    else:
        host, port = address.rsplit(":", 1)
        daemon = Pyro5.api.Daemon(host=host, port=int(port))
        address = tcp_address(int(daemon.locationStr.rsplit(":", 1)[1]))
    daemon.register(PeerObject(), objectId="peer")
    ready(address)  # the daemon listens already; requests wait for the loop
    daemon.requestLoop()


# ---------------------------------------------------------------- rpyc and Pyro5 clients


@dataclass
class PeerClient:
    """An empty call, a call with one server->client callback, and how to close them."""

    empty: Call
    nested: Call
    close: Close
    nested_lookup: Call | None = None  # rpyc only: the lookup-per-call reference


def rpyc_client(address: str, payload: bytes) -> PeerClient:
    import rpyc
    from rpyc.core.stream import SocketStream
    from rpyc.utils.factory import unix_connect

    if address.startswith("unix:"):
        conn = unix_connect(address[5:])
    else:
        host, port = address.rsplit(":", 1)
        conn = rpyc.connect_stream(SocketStream.connect(host, int(port), nodelay=True))

    def echo(value: bytes) -> bytes:
        return value

    root = conn.root
    root.set_callback(echo)
    empty, nested = root.empty, root.nested  # looked up once
    return PeerClient(
        empty=empty,
        nested=lambda: nested(payload),
        close=conn.close,
        nested_lookup=lambda: root.nested_with(payload, echo),
    )


def pyro5_client(address: str, payload: bytes, serializer: str) -> PeerClient:
    import Pyro5.api

    Pyro5.config.SOCK_NODELAY = True

    @Pyro5.api.expose
    class Callback:
        def echo(self, value: Any) -> Any:
            return value

    tmp: tempfile.TemporaryDirectory[str] | None = None
    if address.startswith("unix:"):
        tmp = tempfile.TemporaryDirectory(prefix="farside-pyro5-")
        daemon = Pyro5.api.Daemon(unixsocket=str(Path(tmp.name) / "callback.sock"))
        uri = f"PYRO:peer@./u:{address[5:]}"
    else:
        daemon = Pyro5.api.Daemon(host="127.0.0.1", port=0)
        uri = f"PYRO:peer@{address}"
    callback_uri = str(daemon.register(Callback()))
    loop = threading.Thread(target=daemon.requestLoop, daemon=True, name="pyro5-callback")
    loop.start()
    proxy = Pyro5.api.Proxy(uri)
    proxy._pyroSerializer = serializer
    proxy._pyroBind()
    proxy.set_callback(callback_uri, serializer)
    empty, nested = proxy.empty, proxy.nested  # looked up once

    def close() -> None:
        proxy._pyroRelease()
        daemon.shutdown()
        loop.join(5)
        daemon.close()
        if tmp is not None:
            tmp.cleanup()

    return PeerClient(
        empty=empty,
        nested=lambda: nested(payload),
        close=close,
    )
