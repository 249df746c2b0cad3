"""``farside`` with vsock on a Unix-socket stand-in: ``python THIS DIRECTORY ARGS...``.

Tests never open ``AF_VSOCK`` sockets (CI machines may be VMs whose host uses vsock).
This maps ``vsock:CID:PORT`` to ``DIRECTORY/vsock-PORT.sock``, as
``tests/unit/_vsock_standin.py`` does, then runs ``farside ARGS...``: the real proxy,
on the real vsock transport, but for the socket's family.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from farside.transport import vsock
from farside.transport.sockets import SocketAddress


def standin(directory: Path) -> vsock.VsockSockets:
    """``vsock:CID:PORT`` as the Unix socket ``directory/vsock-PORT.sock`` (every CID)."""

    def address_of(cid: int, port: int) -> SocketAddress:
        return SocketAddress(socket.AF_UNIX, str(directory / f"vsock-{port}.sock"))

    return vsock.VsockSockets(address_of=address_of)


if __name__ == "__main__":
    from farside.cli import main

    vsock.SOCKETS = standin(Path(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
