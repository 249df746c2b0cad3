"""``TLSConfig``: TLS (and mTLS) for farside's channels, both ends (gRPC and stream).

Certificates and keys are given as PEM bytes or paths to PEM files. A client
needs ``ca`` (the bundle it trusts) and, for mTLS, ``cert`` and ``key``; a
server needs ``cert`` and ``key``, and ``client_ca`` to require client
certificates. Files are read when credentials are built, and a missing or
unreadable file is a ``ValueError`` naming it.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["PEM", "TLSConfig"]

PEM = bytes | str | os.PathLike[str]


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

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for a client channel."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.ca, "CA bundle") if self.ca is not None else None,
            private_key=_read_pem(self.key, "key") if self.key is not None else None,
            certificate_chain=_read_pem(self.cert, "certificate")
            if self.cert is not None
            else None,
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for a server port; requires client certificates if ``client_ca``."""
        if self.cert is None or self.key is None:
            raise ValueError("a TLS server needs cert and key")
        pair = (_read_pem(self.key, "key"), _read_pem(self.cert, "certificate"))
        client_ca = (
            _read_pem(self.client_ca, "client CA bundle") if self.client_ca is not None else None
        )
        return grpc.ssl_server_credentials(
            [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
        )

    def client_ssl_context(self) -> ssl.SSLContext:
        """An ``ssl`` context for a client socket (the stream transport): TLS 1.3 only."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        if self.ca is not None:
            context.load_verify_locations(cadata=_read_pem(self.ca, "CA bundle").decode())
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
        if self.client_ca is not None:
            context.load_verify_locations(
                cadata=_read_pem(self.client_ca, "client CA bundle").decode()
            )
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
