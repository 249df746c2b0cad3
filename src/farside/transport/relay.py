"""The parent instance's relay: clients' TCP connections in, the enclave's vsock port out.

A Nitro Enclave has no network, only vsock to its parent instance. ``farside
vsock-relay`` runs on the parent: it accepts clients' TCP connections and pipes each
one's bytes, both ways, to the proxy listening on vsock inside the enclave
(``farside proxy --transport vsock``), one vsock connection per TCP connection, so
one per session. Clients speak the ``"stream"`` transport to the relay's address.
TLS runs end to end, client to enclave: the relay carries ciphertext, holds no key,
and knows nothing of farside's framing. It is untrusted, like the parent.

Bounds (``RelayLimits``): at most ``max_connections`` connections at once, and
``max_per_source`` from one client address (the proxy sees every connection come
from the parent, so this is where one flooding client is kept from taking the
proxy's vetting slots); a connection beyond them is closed at once. Reaching the
enclave takes at most ``connect_timeout`` (Linux's own vsock connect timeout, 2 s
unless set, may end it sooner). Each direction moves one chunk of at most
``chunk_bytes`` at a time (read it, write all of it, read the next), so a slow reader
holds its writer back and nothing more is buffered. A half-close (one side ends its
writing) is passed on; once one direction has ended, the other has ``linger``
seconds to end too, and an error on either side closes both at once.

The vsock side is a ``SocketScheme`` (``farside.transport.vsock.SOCKETS`` unless
given): tests relay to a Unix socket and never open an ``AF_VSOCK`` one.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from . import vsock
from .sockets import HOST_SOCKETS, SocketScheme, SourceShares, accept_loop, listening_socket

__all__ = ["RelayLimits", "VsockRelay"]

log = logging.getLogger("farside")


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayLimits:
    """How much a ``VsockRelay`` takes on (see the module docstring)."""

    max_connections: int = 64
    max_per_source: int = 8
    connect_timeout: float = 5.0
    linger: float = 10.0
    chunk_bytes: int = 1 << 16

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_per_source", "chunk_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"RelayLimits.{name} must be at least 1")
        for name in ("connect_timeout", "linger"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RelayLimits.{name} must be more than 0 seconds")


class _Pipe:
    """One client connection and its connection to the enclave."""

    def __init__(self, client: socket.socket, source: str) -> None:
        self.client = client
        self.source = source
        self.upstream: socket.socket | None = None
        self.ended = (threading.Event(), threading.Event())  # client->enclave, back
        self.aborted = False
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def abort(self) -> None:
        """End both directions now: blocked reads and writes on either socket return."""
        with self.lock:
            self.aborted = True
            sockets = [self.client] if self.upstream is None else [self.client, self.upstream]
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            if sock is not None:
                sock.close()


class VsockRelay:
    """Pipe TCP connections on ``listen`` (``host:port``) to ``to`` (``vsock:CID:PORT``).

    ``start`` binds and serves in the background; ``stop`` closes everything. Both
    addresses are checked when the relay is made (``ValueError``). ``sockets`` makes
    the sockets to ``to`` (default: ``farside.transport.vsock.SOCKETS``).
    """

    def __init__(
        self,
        listen: str,
        to: str,
        *,
        limits: RelayLimits | None = None,
        sockets: SocketScheme | None = None,
    ) -> None:
        self._listen = HOST_SOCKETS.resolve(listen, listening=True)
        if self._listen.family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"the relay listens on host:port (TCP), not {listen!r}")
        self._listen_text = listen
        self._sockets = sockets if sockets is not None else vsock.SOCKETS
        self._to = to
        self._target = self._sockets.resolve(to, listening=False)
        self.limits = limits if limits is not None else RelayLimits()
        self._sock: socket.socket | None = None
        self._accept: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pipes: set[_Pipe] = set()
        self._from = SourceShares(self.limits.max_per_source)  # open connections
        self._stopped = False

    @property
    def connections(self) -> int:
        """How many connections are being relayed now."""
        with self._lock:
            return len(self._pipes)

    def start(self) -> str:
        """Bind and relay in the background; return the address clients dial."""
        sock = listening_socket(self._listen, self.limits.max_connections)
        self._sock = sock
        self._accept = threading.Thread(
            target=accept_loop,
            args=(sock, lambda: self._stopped, self._take),
            name="farside-relay-accept",
            daemon=True,
        )
        self._accept.start()
        return HOST_SOCKETS.shown(self._listen_text, sock)

    def _take(self, conn: socket.socket, peer: Any) -> None:
        source = HOST_SOCKETS.source(peer)
        pipe = _Pipe(conn, source)
        with self._lock:
            taken = (
                not self._stopped
                and len(self._pipes) < self.limits.max_connections
                and self._from.take(source)
            )
            if taken:
                self._pipes.add(pipe)
                # Started under the lock: stop() never sees a pipe without its thread.
                pipe.thread = threading.Thread(
                    target=self._serve, args=(pipe,), name="farside-relay", daemon=True
                )
                pipe.thread.start()
        if not taken:
            log.debug("relay: refused a connection from %s (at its limit)", source)
            conn.close()

    def _serve(self, pipe: _Pipe) -> None:
        try:
            if self._reach(pipe):
                back = threading.Thread(
                    target=self._pump, args=(pipe, 1), name="farside-relay-back", daemon=True
                )
                back.start()
                self._pump(pipe, 0)
                back.join()
        finally:
            pipe.close()
            with self._lock:
                self._pipes.discard(pipe)
            self._from.give_back(pipe.source)

    def _reach(self, pipe: _Pipe) -> bool:
        """Connect to the enclave within ``connect_timeout``; False if that failed."""
        upstream = socket.socket(self._target.family, socket.SOCK_STREAM)
        with pipe.lock:
            if pipe.aborted:
                upstream.close()
                return False
            pipe.upstream = upstream
        try:
            upstream.settimeout(self.limits.connect_timeout)
            upstream.connect(self._target.address)
            upstream.settimeout(None)
            self._sockets.tune(upstream)
            HOST_SOCKETS.tune(pipe.client)
        except OSError as exc:
            log.warning("relay: cannot reach %s: %s", self._to, exc)
            return False
        with pipe.lock:
            return not pipe.aborted

    def _pump(self, pipe: _Pipe, direction: int) -> None:
        """Copy one direction (0: client to enclave, 1: back) until it ends."""
        assert pipe.upstream is not None
        source, sink = (
            (pipe.client, pipe.upstream) if direction == 0 else (pipe.upstream, pipe.client)
        )
        chunk = self.limits.chunk_bytes
        try:
            while data := source.recv(chunk):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)  # pass the half-close on
        except OSError:
            pipe.abort()  # a reset or a failed write: both directions end
        pipe.ended[direction].set()
        if not pipe.ended[1 - direction].wait(self.limits.linger):
            pipe.abort()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, end every connection, and wait up to ``timeout`` for them."""
        with self._lock:
            self._stopped = True
            pipes = list(self._pipes)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
            self._sock.close()
        deadline = time.monotonic() + timeout
        if self._accept is not None:
            self._accept.join(max(0.0, deadline - time.monotonic()))
        for pipe in pipes:
            pipe.abort()
        for pipe in pipes:
            if pipe.thread is not None:
                pipe.thread.join(max(0.0, deadline - time.monotonic()))
