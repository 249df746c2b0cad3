"""The sockets under the stream framing: the seam of the socket family, and accepting.

``SocketScheme`` is how a transport's address text becomes sockets: ``HOST_SOCKETS``
takes ``unix:/path`` and ``host:port`` (the stream transport), and
``farside.transport.vsock`` brings ``vsock:CID:PORT``; the handshake, TLS and the
framing above them are ``farside.transport.stream``'s, written once.
``listening_socket``, ``accept_loop`` and ``SourceShares`` are what every listener
here does with them (the stream listener, and the parent's relay): bind, accept until
stopped without spinning on a failing ``accept``, and keep one source from taking
every slot. This module knows nothing of frames, TLS or sessions.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "HOST_SOCKETS",
    "HostSockets",
    "SocketAddress",
    "SocketScheme",
    "SourceShares",
    "accept_loop",
    "listening_socket",
]

# Dead peers and cut networks are noticed within about 7 s, as with gRPC's keepalive:
# probes after 4 s idle, every second, three unanswered ones end the connection, and
# data unacknowledged for 7 s does too.
_KEEPALIVE = (4, 1, 3)
_USER_TIMEOUT_MS = 7_000


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """Where a stream socket binds or connects: what ``socket()`` and ``bind``/``connect`` take."""

    family: socket.AddressFamily
    address: str | tuple[Any, ...]
    tls_name: str | None = None
    """The name a client's TLS checks in the proxy's certificate (TCP: the host)."""


class SocketScheme(Protocol):
    """How a stream transport's addresses become sockets: the seam of the socket family.

    Everything else (the handshake, TLS, the framing and its bounds) is the same code
    whatever the family. ``HOST_SOCKETS`` takes ``unix:/path`` and ``host:port``;
    ``farside.transport.vsock`` plugs in ``vsock:CID:PORT``.
    """

    def resolve(self, target: str, *, listening: bool) -> SocketAddress:
        """``target`` as a socket address; ``ValueError`` saying what is expected if not one."""
        ...

    def tune(self, sock: socket.socket) -> None:
        """Set up a connected socket, on either end, before its handshake."""
        ...

    def source(self, peer: Any) -> str:
        """Whose share of the vetting slots a connection from ``peer`` (as ``accept``
        gives it) takes: one per source, so one flood cannot keep the client out; ``""``
        for none (every peer is the same party)."""
        ...

    def shown(self, listen: str, sock: socket.socket) -> str:
        """The address clients dial, for a listener on ``listen`` bound as ``sock``."""
        ...


class HostSockets:
    """A Unix socket (``unix:/path``) or TCP (``host:port``, IPv6 hosts in brackets)."""

    def resolve(self, target: str, *, listening: bool) -> SocketAddress:
        """``target`` as a socket address (the same whether listening or not)."""
        if target.startswith("unix:"):
            return SocketAddress(socket.AF_UNIX, target[len("unix:") :])
        host, sep, port = target.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"a stream address is unix:/path or host:port, not {target!r}")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return SocketAddress(family, (host, int(port)), tls_name=host)

    def tune(self, sock: socket.socket) -> None:
        """TCP: no Nagle delay, and keepalive that notices a dead peer in about 7 s."""
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle, interval, count = _KEEPALIVE
        with contextlib.suppress(AttributeError, OSError):  # Linux names; elsewhere the defaults
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, _USER_TIMEOUT_MS)

    def source(self, peer: Any) -> str:
        """A TCP peer's host; a Unix socket's peers are one party (its directory is private)."""
        return str(peer[0]) if isinstance(peer, tuple) else ""

    def shown(self, listen: str, sock: socket.socket) -> str:
        """``listen`` itself for a Unix socket, else with the port the kernel picked."""
        if sock.family == socket.AF_UNIX:
            return listen
        host, port = sock.getsockname()[:2]
        shown = listen.rpartition(":")[0]
        return f"{shown}:{port}" if shown else f"{host}:{port}"


HOST_SOCKETS = HostSockets()


def listening_socket(where: SocketAddress, backlog: int) -> socket.socket:
    """A socket bound to ``where`` and listening (closed again if that fails)."""
    sock = socket.socket(where.family, socket.SOCK_STREAM)
    try:
        if where.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where.address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def accept_loop(
    sock: socket.socket,
    stopped: Callable[[], bool],
    take: Callable[[socket.socket, Any], None],
) -> None:
    """Accept on ``sock`` and hand each connection to ``take(conn, peer)`` until
    ``stopped()`` (shutting ``sock`` down wakes the loop to see it)."""
    while not stopped():
        try:
            conn, peer = sock.accept()
        except OSError:
            if stopped():
                return
            time.sleep(0.05)  # EMFILE and friends: do not spin
            continue
        take(conn, peer)


class SourceShares:
    """How many of something each source holds, at most ``limit`` each.

    A source is what ``SocketScheme.source`` says of a peer; ``""`` (no source: every
    peer is the same party) is never counted or limited.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, source: str) -> bool:
        """Take one for ``source``; False (taking nothing) if it holds ``limit`` already."""
        if not source:
            return True
        with self._lock:
            held = self._held.get(source, 0)
            if held >= self.limit:
                return False
            self._held[source] = held + 1
            return True

    def give_back(self, source: str) -> None:
        """Return one that ``take`` gave ``source``."""
        if not source:
            return
        with self._lock:
            left = self._held[source] - 1
            if left:
                self._held[source] = left
            else:
                del self._held[source]
