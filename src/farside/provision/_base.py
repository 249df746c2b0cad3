"""The ``Provisioner`` interface: where a fresh proxy for one enclave comes from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import grpc

from .._tls import TLSConfig

__all__ = ["TRANSPORTS", "TRANSPORT_VARIABLE", "ProxyLease", "Provisioner", "choose_transport"]

TRANSPORTS = ("grpc", "stream")
TRANSPORT_VARIABLE = "FARSIDE_TRANSPORT"


def choose_transport(transport: str | None) -> str:
    """``transport``, or ``$FARSIDE_TRANSPORT``, or "grpc"; ``ValueError`` if unknown."""
    chosen = transport if transport is not None else os.environ.get(TRANSPORT_VARIABLE) or "grpc"
    if chosen not in TRANSPORTS:
        source = "transport" if transport is not None else f"${TRANSPORT_VARIABLE}"
        raise ValueError(f"{source} must be one of {', '.join(TRANSPORTS)}, not {chosen!r}")
    return chosen


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyLease:
    """A provisioned proxy: where to reach it and how to prove we are its client.

    ``tls_public_key`` is the DER public key the session's TLS channel is pinned to
    (evidence must bind it); ``platform_keys`` are platform keys the provisioner
    itself vouches for (``LocalProvision``'s own ephemeral one). ``transport`` is
    the wire the proxy serves ("grpc" or "stream"); a stream over TCP uses ``tls``
    (pinned to the proxy's certificate) where gRPC uses ``credentials``. ``handle``
    is the provisioner's own bookkeeping, opaque to everyone else.
    """

    address: str
    token: str
    credentials: grpc.ChannelCredentials | None = None
    tls_public_key: bytes = b""
    platform_keys: tuple[bytes, ...] = ()
    transport: str = "grpc"
    tls: TLSConfig | None = None
    handle: Any = None

    def __repr__(self) -> str:  # never print the token
        return f"ProxyLease(address={self.address!r})"


@runtime_checkable
class Provisioner(Protocol):
    """Anything that can start a proxy for one enclave and later release it.

    ``provision`` raises ``EnclaveLoadError`` (naming the address or the cause)
    when no proxy could be had within ``timeout`` seconds. ``release`` must be
    safe to call whatever state the proxy is in, and must not raise.
    """

    def provision(self, *, name: str, timeout: float) -> ProxyLease: ...

    def release(self, lease: ProxyLease) -> None: ...
