"""``TLSConfig``: TLS (and mTLS) for farside's channels, both ends (gRPC and stream).

Certificates and keys are given as PEM bytes or paths to PEM files. A client
needs ``ca`` (the bundle it trusts) and, for mTLS, ``cert`` and ``key``; a
server needs ``cert`` and ``key``, and ``client_ca`` to require client
certificates. Files are read when credentials are built, and a missing or
unreadable file is a ``ValueError`` naming it.

This module is part of the base layer: it knows ``ssl`` and nothing of gRPC. The
gRPC transport builds its credentials from the same settings
(``farside.transport.grpc.channel_credentials``).
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PEM", "TLSConfig"]

PEM = bytes | str | os.PathLike[str]
_SETTINGS = {
    "ca": "CA bundle",
    "cert": "certificate",
    "key": "key",
    "client_ca": "client CA bundle",
}


def _read_pem(value: PEM, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    path = Path(value)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS {what} {str(path)!r}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"the TLS {what} {str(path)!r} is not a PEM file")
    return data


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSConfig:
    """TLS settings for one end of a channel (see the module docstring)."""

    ca: PEM | None = None
    cert: PEM | None = None
    key: PEM | None = None
    client_ca: PEM | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLSConfig needs both cert and key, or neither")

    def __repr__(self) -> str:  # never print key material
        parts = [f"{name}=..." for name in ("ca", "cert", "client_ca") if getattr(self, name)]
        return f"TLSConfig({', '.join(parts)})"

    @property
    def mutual(self) -> bool:
        """True when the client presents a certificate (client side) or must (server side)."""
        return self.cert is not None if self.client_ca is None else True

    def pem(self, name: str) -> bytes | None:
        """The PEM bytes of ``ca``, ``cert``, ``key`` or ``client_ca`` (None when unset).

        ``ValueError`` naming the file if it cannot be read or is not PEM.
        """
        what = _SETTINGS.get(name)
        if what is None:
            raise ValueError(f"TLSConfig has no PEM setting {name!r}")
        value = getattr(self, name)
        return None if value is None else _read_pem(value, what)

    def client_ssl_context(self) -> ssl.SSLContext:
        """An ``ssl`` context for a client socket (the stream transport): TLS 1.3 only."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        ca = self.pem("ca")
        if ca is not None:
            context.load_verify_locations(cadata=ca.decode())
        else:
            context.load_default_certs()
        if self.cert is not None and self.key is not None:
            _load_chain(context, self.cert, self.key)
        return context

    def server_ssl_context(self) -> ssl.SSLContext:
        """An ``ssl`` context for a listening socket; requires client certificates if
        ``client_ca``. TLS 1.3 only, no session tickets (every session is one connection)."""
        if self.cert is None or self.key is None:
            raise ValueError("a TLS server needs cert and key")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.num_tickets = 0
        _load_chain(context, self.cert, self.key)
        client_ca = self.pem("client_ca")
        if client_ca is not None:
            context.load_verify_locations(cadata=client_ca.decode())
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def _load_chain(context: ssl.SSLContext, cert: PEM, key: PEM) -> None:
    """``load_cert_chain`` reads only files: PEM bytes go through a private, short-lived one."""
    if not isinstance(cert, bytes) and not isinstance(key, bytes):
        try:
            context.load_cert_chain(os.fspath(cert), os.fspath(key))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the TLS certificate {str(cert)!r}: {exc}") from None
        return
    with tempfile.TemporaryDirectory(prefix="farside-tls-") as directory:  # mode 0700
        path = Path(directory) / "chain.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(_read_pem(key, "key") + b"\n" + _read_pem(cert, "certificate"))
        try:
            context.load_cert_chain(str(path))
        except ssl.SSLError as exc:
            raise ValueError(f"the TLS certificate and key do not load: {exc}") from None
