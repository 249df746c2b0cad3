"""Choosing a transport by name: one table, and the two functions that use it.

``connect`` and ``listen`` import the chosen transport's module only when it is used,
so the stream transport never loads gRPC. A new transport (vsock, say) is a module
with ``connect`` and ``listen`` (see ``farside.transport.base``) and a line in
``_MODULES``: nothing outside ``farside.transport`` changes.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from .._tls import TLSConfig
from .base import Admission, ClientTransport, Listener, LostCallback, OnOpen

__all__ = [
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
}
TRANSPORTS = tuple(_MODULES)
"""The transports' names, as ``LocalProvision(transport=...)`` and the CLI take them."""
TRANSPORT_VARIABLE = "FARSIDE_TRANSPORT"
DEFAULT_TRANSPORT = "grpc"


def choose_transport(transport: str | None) -> str:
    """``transport``, or ``$FARSIDE_TRANSPORT``, or the default; ``ValueError`` if unknown."""
    chosen = transport if transport is not None else os.environ.get(TRANSPORT_VARIABLE)
    chosen = chosen or DEFAULT_TRANSPORT
    if chosen not in _MODULES:
        source = "transport" if transport is not None else f"${TRANSPORT_VARIABLE}"
        raise ValueError(f"{source} must be one of {', '.join(TRANSPORTS)}, not {chosen!r}")
    return chosen


def _module(name: str) -> Any:
    return importlib.import_module(_MODULES[choose_transport(name)])


def connect(name: str, address: str, *, token: str, tls: TLSConfig | None) -> ClientTransport:
    """The client's end of transport ``name`` to the proxy at ``address`` (not yet started).

    ``tls`` is the client's TLS settings, pinned to the proxy's certificate (None on a
    Unix socket). ``EnclaveLoadError`` if the TLS settings cannot be used.
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
