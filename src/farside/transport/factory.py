"""Choosing a transport by name: one table, and the two functions that use it.

``connect`` and ``listen`` import the chosen transport's module only when it is used,
so the stream transport never loads gRPC. A new transport is a module with
``connect`` and ``listen`` (see ``farside.transport.base``) and a line in
``_MODULES``: nothing outside ``farside.transport`` changes.

Two lists of names: ``ALL_TRANSPORTS``, every wire a proxy can serve
(``farside proxy --transport``), and ``TRANSPORTS``, the wires provisioners start
proxies on, on this host's own addresses (a Unix socket, host:port). vsock is only in
the first: it listens on a VM's vsock port, where no provisioner starts proxies; a
client reaches it with ``"stream"`` through the parent's relay (docs/hardware.md).
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI reads the lists without loading the transports' code
    from .._tls import TLSConfig
    from .base import Admission, ClientTransport, Listener, LostCallback, OnOpen

__all__ = [
    "ALL_TRANSPORTS",
    "DEFAULT_TRANSPORT",
    "TRANSPORTS",
    "TRANSPORT_VARIABLE",
    "choose_transport",
    "connect",
    "listen",
]

_MODULES = {
    "grpc": "farside.transport.grpc",
    "stream": "farside.transport.stream",
    "vsock": "farside.transport.vsock",
}
_GUEST_ONLY = frozenset({"vsock"})  # serves a VM's vsock port: no provisioner starts it
ALL_TRANSPORTS = tuple(_MODULES)
"""Every transport's name: what ``connect``, ``listen`` and ``farside proxy`` take."""
TRANSPORTS = tuple(name for name in _MODULES if name not in _GUEST_ONLY)
"""The transports provisioners use, as ``LocalProvision(transport=...)`` and the CLI take them."""
TRANSPORT_VARIABLE = "FARSIDE_TRANSPORT"
DEFAULT_TRANSPORT = "stream"
"""What provisioners choose when neither ``transport`` nor ``$FARSIDE_TRANSPORT`` names one:
the stream transport (docs/performance.md); "grpc" is the choice behind HTTP/2
infrastructure (proxies, load balancers, service meshes that speak only HTTP/2)."""


def choose_transport(transport: str | None) -> str:
    """``transport``, or ``$FARSIDE_TRANSPORT``, or the default, for a provisioner.

    ``ValueError`` unless it is one of ``TRANSPORTS``.
    """
    chosen = transport if transport is not None else os.environ.get(TRANSPORT_VARIABLE)
    chosen = chosen or DEFAULT_TRANSPORT
    if chosen not in TRANSPORTS:
        source = "transport" if transport is not None else f"${TRANSPORT_VARIABLE}"
        why = (
            f" ({chosen} serves a VM's vsock port: reach it with 'stream' through its relay)"
            if chosen in _GUEST_ONLY
            else ""
        )
        raise ValueError(f"{source} must be one of {', '.join(TRANSPORTS)}, not {chosen!r}{why}")
    return chosen


def _module(name: str) -> Any:
    if name not in _MODULES:
        raise ValueError(f"the transport must be one of {', '.join(ALL_TRANSPORTS)}, not {name!r}")
    return importlib.import_module(_MODULES[name])


def connect(name: str, address: str, *, token: str, tls: TLSConfig | None) -> ClientTransport:
    """The client's end of transport ``name`` to the proxy at ``address`` (not yet started).

    ``tls`` is the client's TLS settings, pinned to the proxy's certificate (None on a
    Unix socket). ``EnclaveLoadError`` if the TLS settings (or, for vsock, the address)
    cannot be used.
    """
    transport: ClientTransport = _module(name).connect(address, token=token, tls=tls)
    return transport


def listen(
    name: str,
    address: str,
    *,
    admission: Admission,
    on_open: OnOpen,
    on_lost: LostCallback,
    tls: TLSConfig | None = None,
) -> Listener:
    """The proxy's end of transport ``name`` on ``address`` (not yet started)."""
    listener: Listener = _module(name).listen(
        address, admission=admission, on_open=on_open, on_lost=on_lost, tls=tls
    )
    return listener
