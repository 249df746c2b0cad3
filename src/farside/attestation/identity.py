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
    "SIGNER_CHAIN_LENGTH",
    "SealingKeys",
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


SIGNER_CHAIN_LENGTH = 4096
"""Security versions 0..4095 can use the ``"signer"`` sealing policy."""

_SEAL_SALT = b"farside.seal.v1"


def _hkdf(ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SEAL_SALT, info=info).derive(ikm)


def _chain_step(key: bytes) -> bytes:
    return hashlib.sha256(b"farside.seal.chain.v1\0" + key).digest()


@dataclass(frozen=True, slots=True)
class SealingKeys:
    """The sealing keys one enclave is entitled to, derived before its code runs.

    The platform's sealing root never reaches enclave code: the proxy derives
    these and drops the root. ``enclave_key`` is bound to the measurement. For
    the ``"signer"`` policy, the keys of security versions 0..4095 form a hash
    chain from the top down (the key material of version ``s`` is SHA-256 of
    that of ``s + 1``), and the enclave gets the link of its own version: it can
    walk down to older versions' keys, never up to a newer version's.
    """

    enclave_key: bytes
    signer_link: bytes | None  # None: unsigned, or a version beyond the chain
    security_version: int

    @classmethod
    def derive(cls, root: bytes, identity: EnclaveIdentity) -> SealingKeys:
        """The keys of ``identity`` under the platform sealing ``root``."""
        enclave_key = _hkdf(root, b"\x01" + identity.measurement)
        link = None
        if identity.signed and identity.security_version < SIGNER_CHAIN_LENGTH:
            link = _hkdf(
                root,
                b"\x02"
                + identity.signer
                + identity.product_id.to_bytes(4, "big")
                + bytes([int(identity.debug)]),
            )
            for _ in range(SIGNER_CHAIN_LENGTH - 1 - identity.security_version):
                link = _chain_step(link)
        return cls(enclave_key, link, identity.security_version)

    def signer_key(self, security_version: int) -> bytes | None:
        """The ``"signer"`` key of an older (or this) version; None if not entitled."""
        if self.signer_link is None or not 0 <= security_version <= self.security_version:
            return None
        link = self.signer_link
        for _ in range(self.security_version - security_version):
            link = _chain_step(link)
        return _hkdf(link, b"farside.seal.signer-key.v1")
