"""A Unix-socket stand-in for vsock, and a check that a test leaves nothing running.

Tests never open ``AF_VSOCK`` sockets: CI machines may be VMs whose host uses vsock.
``standin(directory)`` is a ``VsockSockets`` that maps ``vsock:CID:PORT`` to the Unix
socket ``directory/vsock-PORT.sock`` (one machine: every CID reaches the same ports,
as ``vsock:any:PORT`` listens on all of them). Everything else, the address checks
included, is the real code.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from farside.transport.sockets import SocketAddress
from farside.transport.vsock import VsockSockets

WAIT = 5.0


def standin(directory: Path) -> VsockSockets:
    """``vsock:CID:PORT`` as the Unix socket ``directory/vsock-PORT.sock``."""

    def address_of(cid: int, port: int) -> SocketAddress:
        return SocketAddress(socket.AF_UNIX, str(directory / f"vsock-{port}.sock"))

    return VsockSockets(address_of=address_of)


def _sockets() -> set[str]:
    """This process's open socket descriptors, as ``fd:socket:[inode]``."""
    found = set()
    for entry in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            continue  # closed while we looked (the listing's own descriptor)
        if target.startswith("socket:"):
            found.add(f"{entry}:{target}")
    return found


@contextmanager
def nothing_left(timeout: float = WAIT) -> Iterator[None]:
    """Fail unless every thread and socket the block started has ended ``timeout`` s after."""
    threads, sockets = set(threading.enumerate()), _sockets()
    yield
    deadline = time.monotonic() + timeout
    while True:
        left_threads = [t.name for t in threading.enumerate() if t not in threads]
        left_sockets = _sockets() - sockets
        if not (left_threads or left_sockets) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not left_threads, f"threads still running: {left_threads}"
    assert not left_sockets, f"sockets still open: {sorted(left_sockets)}"
