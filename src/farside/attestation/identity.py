"""An enclave's identity, and the platform secrets derived from the platform key.

``EnclaveIdentity`` is what evidence reports and what sealing keys are bound to:
the measurement (Asylo's MRENCLAVE), the signer (SHA-256 of the signer's public
key, Asylo's MRSIGNER; 32 zero bytes for an unsigned bundle), and the manifest's
product id, security version and debug flag.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "SIGNATURE_DOMAIN",
    "UNSIGNED",
    "EnclaveIdentity",
    "sealing_root",
    "signer_of",
    "verify_signature",
]

UNSIGNED = bytes(32)
"""The signer of a bundle that carries no signature."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EnclaveIdentity:
    """Who an enclave is: its code, its signer, and its manifest's claims."""

    measurement: bytes
    signer: bytes = UNSIGNED
    product_id: int = 0
    security_version: int = 0
    debug: bool = True

    def __post_init__(self) -> None:
        if len(self.measurement) != 32 or len(self.signer) != 32:
            raise ValueError("measurement and signer are 32 bytes each")

    @property
    def signed(self) -> bool:
        """True when a signer vouched for the bundle."""
        return self.signer != UNSIGNED


def sealing_root(platform_key: Ed25519PrivateKey) -> bytes:
    """The platform's 32-byte sealing secret, derived from (never equal to) its private key."""
    raw = platform_key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"farside.sealing-root.v1", info=b""
    ).derive(raw)


SIGNATURE_DOMAIN = b"farside.bundle-signature.v1\0"


def signer_of(public_key: bytes) -> bytes:
    """The signer identity of a raw 32-byte Ed25519 public key (Asylo's MRSIGNER)."""
    return hashlib.sha256(public_key).digest()


def verify_signature(measurement: bytes, public_key: bytes, signature: bytes) -> bytes:
    """Check a bundle signature over ``measurement``; return the signer identity.

    Raises ``ValueError`` if the key is malformed or the signature does not verify.
    """
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, SIGNATURE_DOMAIN + measurement
        )
    except (InvalidSignature, ValueError):
        raise ValueError("the bundle's signature does not verify") from None
    return signer_of(public_key)
