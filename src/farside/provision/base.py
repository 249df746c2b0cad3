"""The ``Provisioner`` interface: where a fresh proxy for one enclave comes from.

A provisioner answers ``provision`` with a ``ProxyLease`` (where the proxy listens,
which wire it speaks, its one-time token, the TLS settings pinned to it) and takes
it back with ``release``. ``LocalProvision`` and ``RemoteProvision`` are the two
farside ships; anything with these two methods works. A lease holds no transport
library's objects: the transport builds its own credentials from ``tls``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .._tls import TLSConfig
from ..transport.factory import DEFAULT_TRANSPORT

__all__ = ["ProxyLease", "Provisioner", "parse_node_label"]

_LABEL_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyLease:
    """A provisioned proxy: where to reach it and how to prove we are its client.

    ``transport`` is the wire the proxy serves (``farside.transport.TRANSPORTS``);
    ``tls`` is the client's TLS settings pinned to the proxy's own certificate (None
    on a private Unix socket); ``tls_public_key`` is that certificate's DER public key,
    which the evidence must bind; ``platform_keys`` are platform keys the provisioner
    itself vouches for (``LocalProvision``'s own ephemeral one). ``handle`` is the
    provisioner's own bookkeeping, opaque to everyone else.
    """

    address: str
    token: str
    transport: str = DEFAULT_TRANSPORT
    tls: TLSConfig | None = None
    tls_public_key: bytes = b""
    platform_keys: tuple[bytes, ...] = ()
    handle: Any = None

    def __repr__(self) -> str:  # never print the token
        return f"ProxyLease(address={self.address!r}, transport={self.transport!r})"


@runtime_checkable
class Provisioner(Protocol):
    """Anything that can start a proxy for one enclave and later release it.

    ``provision`` raises ``EnclaveLoadError`` (naming the address or the cause)
    when no proxy could be had within ``timeout`` seconds. ``release`` must be
    safe to call whatever state the proxy is in, and must not raise.
    """

    def provision(self, *, name: str, timeout: float) -> ProxyLease: ...

    def release(self, lease: ProxyLease) -> None: ...


def parse_node_label(text: str) -> tuple[str, str]:
    """``"key=value"`` → (key, value); ``ValueError`` unless both parts are plain names.

    Each part: 1-63 letters, digits, '.', '_' or '-', starting and ending with a
    letter or digit (Kubernetes' label syntax, without prefixes). Fleet placement
    matches it against the hosts' labels; clients check it before they ask.
    """
    key, sep, value = text.partition("=")
    if not sep or not _LABEL_PART.fullmatch(key) or not _LABEL_PART.fullmatch(value):
        raise ValueError(
            f"a node label is key=value, each 1-63 letters, digits, '.', '_', '-' "
            f"(starting and ending with a letter or digit), not {text[:80]!r}"
        )
    return key, value
