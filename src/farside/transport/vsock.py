"""The vsock transport: the stream transport's session on an ``AF_VSOCK`` socket.

A Nitro Enclave has no network, only vsock to its parent instance. A proxy inside
it listens here (``farside proxy --transport vsock --listen vsock:any:PORT``); the
parent's relay (``farside.transport.relay``, ``farside vsock-relay``) pipes each
client's TCP connection to that port, so the client speaks the plain ``"stream"``
transport to the parent's address. A client on the parent itself may dial
``vsock:CID:PORT`` with this module.

Everything but the socket is ``farside.transport.stream``'s: the preface and token,
the one-session admission, TLS 1.3 over memory BIOs, the framing and its bounds. This
module adds only a ``SocketScheme``: addresses ``vsock:CID:PORT`` (listening, CID
``any`` or ``-1`` for ``VMADDR_CID_ANY``), checked strictly. TLS terminates in the
proxy, inside the enclave: the parent relays ciphertext only.

A vsock peer has no name a certificate could carry, so a vsock client checks the
proxy's certificate against its CA (the proxy's own certificate, pinned, as
provisioners hand it out) and no host name. vsock has no Nagle delay and no
keepalive to set; a peer's death is the hypervisor's to report (the connection
resets). Every connection to an enclave comes from its parent, so there is no
per-source share of the vetting slots here: the relay keeps that, per TCP client.

``SOCKETS`` is the seam tests replace: they map ``vsock:CID:PORT`` to a Unix socket
(``VsockSockets(address_of=...)``) and never open an ``AF_VSOCK`` socket.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
from collections.abc import Callable
from typing import Any

from .._errors import EnclaveLoadError, StatusCode
from .._tls import TLSConfig
from . import stream
from .base import Admission, LostCallback, OnOpen
from .sockets import SocketAddress
from .stream import StreamClientTransport, StreamListener

__all__ = [
    "CID_ANY",
    "SOCKETS",
    "VsockSockets",
    "connect",
    "listen",
    "parse_address",
    "vsock_address",
]

log = logging.getLogger("farside")

CID_ANY = 0xFFFFFFFF
"""``VMADDR_CID_ANY``: listen on every CID of this machine (``vsock:any:PORT``)."""
_LARGEST = 0xFFFFFFFE  # 32 bits, without the "any" value
_NUMBER = re.compile(r"[0-9]{1,10}")
_FORM = "vsock:CID:PORT (listening, vsock:any:PORT)"


def _number(text: str, what: str, address: str) -> int:
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"a vsock address is {_FORM}; its {what} {text!r} is not a number")
    value = int(text)
    if value > _LARGEST:
        raise ValueError(f"the vsock {what} in {address!r} is out of range (0 to {_LARGEST})")
    return value


def parse_address(address: str, *, listening: bool) -> tuple[int, int]:
    """``vsock:CID:PORT`` as ``(cid, port)``; ``ValueError`` saying what is wrong.

    Listening, the CID may be ``any`` or ``-1`` (``CID_ANY``: every CID of this
    machine, as a proxy in an enclave listens); a client dials one CID. The port is
    explicit (1 to 4294967294): unlike TCP's port 0, no vsock port picks one, and the
    parent's relay must know it.
    """
    scheme, sep, rest = address.partition(":")
    cid_text, sep2, port_text = rest.partition(":")
    if scheme != "vsock" or not sep or not sep2:
        raise ValueError(f"a vsock address is {_FORM}, not {address!r}")
    if cid_text in ("any", "-1"):
        if not listening:
            raise ValueError(
                f"a vsock client dials one CID, not {cid_text!r} ({address!r}): "
                "the enclave's CID is in `nitro-cli describe-enclaves`"
            )
        cid = CID_ANY
    else:
        cid = _number(cid_text, "CID", address)
    port = _number(port_text, "port", address)
    if port == 0:
        raise ValueError(
            f"give the vsock port the relay dials ({address!r}): port 0 picks no free port"
        )
    return cid, port


def vsock_address(cid: int, port: int) -> SocketAddress:
    """The real socket address: ``AF_VSOCK`` (Linux); ``OSError`` where there is none."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise OSError(errno.EAFNOSUPPORT, "this platform has no AF_VSOCK sockets (Linux has)")
    return SocketAddress(family, (cid, port))


class VsockSockets:
    """The ``SocketScheme`` of ``vsock:CID:PORT`` addresses.

    ``address_of(cid, port)`` makes the socket address (``vsock_address``); tests give
    one that maps to a Unix socket.
    """

    def __init__(self, address_of: Callable[[int, int], SocketAddress] = vsock_address) -> None:
        self._address_of = address_of

    def resolve(self, target: str, *, listening: bool) -> SocketAddress:
        """``target`` (``vsock:CID:PORT``) as a socket address; ``ValueError`` if not one."""
        return self._address_of(*parse_address(target, listening=listening))

    def tune(self, sock: socket.socket) -> None:
        """Nothing to set: vsock has no Nagle delay, and no keepalive."""

    def source(self, peer: Any) -> str:
        """None: every connection comes from the parent (its relay limits per client)."""
        return ""

    def shown(self, listen: str, sock: socket.socket) -> str:
        """``listen`` written canonically: ``vsock:any:PORT`` or ``vsock:CID:PORT``."""
        cid, port = parse_address(listen, listening=True)
        return f"vsock:{'any' if cid == CID_ANY else cid}:{port}"


SOCKETS = VsockSockets()
"""How ``connect`` and ``listen`` make their sockets (read at each call: the test seam)."""


def connect(address: str, *, token: str, tls: TLSConfig | None) -> StreamClientTransport:
    """The client's end of a session with the proxy at ``vsock:CID:PORT``.

    ``EnclaveLoadError`` (``INVALID_ARGUMENT``) if the address or the TLS settings
    cannot be used. With ``tls``, the proxy's certificate is checked against
    ``tls.ca`` but for no host name (see the module docstring).
    """
    try:
        parse_address(address, listening=False)
    except ValueError as exc:
        raise EnclaveLoadError(str(exc), code=StatusCode.INVALID_ARGUMENT) from exc
    context = stream.client_context(tls)
    if context is not None:
        context.check_hostname = False  # a CID is no name; the pinned certificate is
    return StreamClientTransport(address, token=token, tls=context, sockets=SOCKETS)


def listen(
    address: str,
    *,
    admission: Admission,
    on_open: OnOpen,
    on_lost: LostCallback,
    tls: TLSConfig | None = None,
) -> StreamListener:
    """The proxy's end on ``vsock:any:PORT`` (or ``vsock:CID:PORT``), TLS 1.3 with ``tls``.

    The address is checked when the listener starts (``ValueError``), as the stream
    transport's is. Without ``tls`` the parent instance, which relays the session, can
    read and change it: that is said loudly.
    """
    if tls is None:
        log.warning("vsock WITHOUT TLS: the parent instance can read and change the session")
    return stream.listen(
        address, admission=admission, on_open=on_open, on_lost=on_lost, tls=tls, sockets=SOCKETS
    )
