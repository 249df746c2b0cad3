"""The ``Provisioner`` interface: where a fresh proxy for one enclave comes from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import grpc

__all__ = ["ProxyLease", "Provisioner"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyLease:
    """A provisioned proxy: where to reach it and how to prove we are its client.

    ``tls_public_key`` is the DER public key the session's TLS channel is pinned to
    (evidence must bind it); ``platform_keys`` are platform keys the provisioner
    itself vouches for (``LocalProvision``'s own ephemeral one). ``handle`` is the
    provisioner's own bookkeeping, opaque to everyone else.
    """

    address: str
    token: str
    credentials: grpc.ChannelCredentials | None = None
    tls_public_key: bytes = b""
    platform_keys: tuple[bytes, ...] = ()
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
