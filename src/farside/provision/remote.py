"""``RemoteProvision``: ask a provision server on a trusted machine for a proxy.

The client dials the server (TLS, optionally mTLS and/or a bearer token), gets
the address of a fresh proxy there and its one-time session token, and then
opens its session straight to that proxy with the same TLS settings. Every
failure becomes ``EnclaveLoadError`` naming the address and the reason.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .._errors import EnclaveError, EnclaveLoadError, StatusCode
from .._proto.v1 import provision_pb2 as pb, provision_pb2_grpc as pb_grpc
from .._tls import TLSConfig
from ..transport.factory import choose_transport
from ..transport.grpc import channel_credentials
from .base import ProxyLease, parse_node_label

__all__ = ["RemoteProvision"]

log = logging.getLogger("farside")

RELEASE_TIMEOUT = 5.0

_REASONS = {
    grpc.StatusCode.UNAVAILABLE: "is unreachable or the TLS handshake failed",
    grpc.StatusCode.DEADLINE_EXCEEDED: "did not answer in time",
    grpc.StatusCode.PERMISSION_DENIED: "refused this client (permission denied)",
    grpc.StatusCode.UNAUTHENTICATED: "refused this client (not authenticated)",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "is over capacity",
    grpc.StatusCode.INVALID_ARGUMENT: "rejected the request as invalid",
}


@dataclass(frozen=True, slots=True)
class _Diagnosis:
    """What went wrong reaching the server, in words, and what fixes it."""

    cause: str
    hint: str | None = None
    setting: str | None = None


def _diagnose(details: str, tls: TLSConfig | None) -> _Diagnosis | None:
    """Name the cause of a connection failure from gRPC's details, or ``None``.

    gRPC reports TLS and connection failures only as text; the phrases matched here
    are those of gRPC's C core and BoringSSL (tests/integration/test_cli_errors.py
    provokes each one).
    """
    if "Failed to create security handshaker" in details:
        return _Diagnosis(
            "cannot be reached: the client's TLS certificate and key do not work together",
            "TLSConfig(cert=..., key=...) must be a PEM certificate and its own private key",
            "tls.cert",
        )
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return _Diagnosis(
            "has a TLS certificate not signed by the CA this client trusts",
            "TLSConfig(ca=...) must be the CA bundle that signed the server's certificate",
            "tls.ca",
        )
    if "not in peer certificate" in details:
        return _Diagnosis(
            "has a TLS certificate that does not name the host this client dialed",
            "dial a name the certificate lists, or issue it for this name",
            "address",
        )
    if "WRONG_VERSION_NUMBER" in details:
        return _Diagnosis(
            "does not speak TLS, and this client does",
            "connect without TLS (on loopback only), or give the server TLS",
            "tls",
        )
    if "Connection refused" in details:
        return _Diagnosis(
            "is unreachable: nothing listens there (connection refused)",
            "check the address, and that the provision server runs",
            "address",
        )
    if "timed out before receiving SETTINGS" in details:
        return _Diagnosis("accepted the connection but never answered (is it a provision server?)")
    if "Socket closed" in details or "Connection reset" in details:
        if tls is None:
            return _Diagnosis(
                "closed the connection: it requires TLS, and this client connects in plaintext",
                "give RemoteProvision(tls=TLSConfig(ca=...))",
                "tls",
            )
        if tls.cert is None:
            return _Diagnosis(
                "closed the connection in the TLS handshake: it requires a client "
                "certificate (mTLS), and this client has none",
                "give TLSConfig(cert=..., key=...)",
                "tls.cert",
            )
        return _Diagnosis(
            "closed the connection in the TLS handshake: it did not accept this "
            "client's certificate",
            "TLSConfig(cert=...) must be signed by the CA the server requires of clients",
            "tls.cert",
        )
    return None


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost" or address.startswith("unix:"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RemoteProvision:
    """Provision proxies from the provision server at ``address`` (``host:port``).

    ``tls`` is the client's ``TLSConfig`` (CA bundle; certificate and key for
    mTLS), used for the server and for the proxies it starts; ``token`` is the
    server's bearer token, if it requires one. Without ``tls`` the connection is
    plaintext, which is only sensible on loopback: farside logs a warning otherwise.
    ``transport`` is the sessions' wire: "stream" (the default, or
    ``$FARSIDE_TRANSPORT``; TLS 1.3 on a plain TCP connection) or "grpc" (a gRPC stream,
    for HTTP/2 infrastructure between the client and the proxies).
    ``node_label`` (``"key=value"``, e.g. ``"tee=sgx"``) asks a server in fleet mode
    to place the enclave on a host carrying that label.
    """

    def __init__(
        self,
        address: str,
        *,
        tls: TLSConfig | None = None,
        token: str | None = None,
        transport: str | None = None,
        node_label: str | None = None,
    ) -> None:
        if not isinstance(address, str) or ":" not in address:
            raise ValueError(f"the provision server address must be host:port, not {address!r}")
        if node_label is not None:
            parse_node_label(node_label)  # ValueError now, not a refusal later
        self.node_label = node_label or ""
        if tls is not None and not isinstance(tls, TLSConfig):
            raise TypeError("tls must be a farside.TLSConfig")
        self.address = address
        self.tls = tls
        self.transport = choose_transport(transport)
        self._token = token
        self._channel: grpc.Channel | None = None
        self._lock = threading.Lock()
        if tls is None and not _is_loopback(address):
            log.warning(
                "farside: talking to the provision server at %s WITHOUT TLS: anyone on the "
                "network can read and change the session",
                address,
            )

    def __repr__(self) -> str:
        return f"RemoteProvision({self.address!r}, tls={self.tls!r})"

    def _credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls is None:
            return None
        try:
            return channel_credentials(self.tls)
        except ValueError as exc:
            raise EnclaveLoadError(str(exc), code=StatusCode.INVALID_ARGUMENT) from exc

    def _stub(self) -> pb_grpc.ProvisionerStub:
        with self._lock:
            if self._channel is None:
                credentials = self._credentials()
                self._channel = (
                    grpc.secure_channel(self.address, credentials)
                    if credentials is not None
                    else grpc.insecure_channel(self.address)
                )
            return pb_grpc.ProvisionerStub(self._channel)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._token}"),) if self._token else ()

    def _failure(self, exc: grpc.RpcError, timeout: float) -> EnclaveError:
        """The error to raise for a failed request: the cause in words, and the fix."""
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (exc.details() if isinstance(exc, grpc.Call) else "") or ""
        status = StatusCode.coerce(code.value[0])
        where = f"the provision server at {self.address}"
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return EnclaveError(
                f"{where} did not answer within {timeout:g} s", code=status, setting="timeout"
            )
        diagnosis = _diagnose(details, self.tls)
        if diagnosis is not None:
            return EnclaveError(
                f"{where} {diagnosis.cause}",
                code=status,
                hint=diagnosis.hint,
                setting=diagnosis.setting,
            )
        if code is grpc.StatusCode.PERMISSION_DENIED and "bearer token" in details:
            return EnclaveError(
                f"{where} refused this client (permission denied): {details}",
                code=status,
                hint="give the server's token: RemoteProvision(token=...)",
                setting="token",
            )
        reason = _REASONS.get(code, f"failed ({code.name})")
        return EnclaveError(f"{where} {reason}: {details}", code=status)

    def provision(self, *, name: str, timeout: float) -> ProxyLease:
        """Ask the server for a proxy; ``EnclaveLoadError`` with the reason if it fails."""
        try:
            response = self._stub().Provision(
                pb.ProvisionRequest(
                    name=name, transport=self.transport, node_label=self.node_label
                ),
                timeout=timeout,
                metadata=self._metadata(),
            )
        except grpc.RpcError as exc:
            error = self._failure(exc, timeout)
            raise EnclaveLoadError(
                error.message, code=error.code, hint=error.hint, setting=error.setting
            ) from None
        pinned, tls_public_key = self._pinned(response.proxy_certificate)
        return ProxyLease(
            address=response.address,
            token=response.session_token,
            tls=pinned,
            transport=self.transport,
            tls_public_key=tls_public_key,
            handle=response.enclave_id,
        )

    def _pinned(self, certificate: bytes) -> tuple[TLSConfig | None, bytes]:
        """TLS settings pinned to the proxy's own certificate, and its public key."""
        if self.tls is None or not certificate:
            return self.tls, b""
        try:
            public_key = x509.load_pem_x509_certificate(certificate).public_key()
        except ValueError as exc:
            raise EnclaveLoadError(
                f"the provision server at {self.address} sent an invalid proxy certificate: {exc}"
            ) from None
        pinned = TLSConfig(ca=certificate, cert=self.tls.cert, key=self.tls.key)
        spki = public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pinned, spki

    def release(self, lease: ProxyLease) -> None:
        """Tell the server we are done with the proxy (best effort; it reaps it anyway)."""
        try:
            self._stub().Release(
                pb.ReleaseRequest(enclave_id=str(lease.handle)),
                timeout=RELEASE_TIMEOUT,
                metadata=self._metadata(),
            )
        except (grpc.RpcError, EnclaveLoadError) as exc:
            log.info(
                "farside: releasing enclave %s at %s failed: %s", lease.handle, self.address, exc
            )

    def server_status(self, *, timeout: float = 10.0) -> pb.ListEnclavesResponse:
        """The server's hosts and the enclaves it shows this caller (``farside status``).

        ``EnclaveError`` with the server's status code and the reason if it fails.
        """
        try:
            reply: pb.ListEnclavesResponse = self._stub().ListEnclaves(
                pb.ListEnclavesRequest(), timeout=timeout, metadata=self._metadata()
            )
        except grpc.RpcError as exc:
            raise self._failure(exc, timeout) from None
        except EnclaveLoadError as exc:  # the TLS settings cannot be read
            raise EnclaveError(
                exc.message, code=exc.code, hint=exc.hint, setting=exc.setting
            ) from None
        return reply

    def close(self) -> None:
        """Close the channel to the server (it reopens on the next use)."""
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
