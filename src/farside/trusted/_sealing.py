"""Sealing: data that only this enclave (or, by choice, its signer's later versions) can open.

A sealed blob is a 23-byte header, then AES-256-GCM ciphertext and its 16-byte
tag; the header is the associated data, so none of it can be changed unnoticed::

    header = b"FSEAL" (5) | version = 1 (1) | policy: 1 enclave, 2 signer (1)
             | the sealer's security version, u32 big-endian (4) | nonce (12)
    blob   = header || AES-256-GCM(key, nonce, data, associated data = header)

The keys are ``attestation.identity.SealingKeys``, derived from the platform's
sealing root by the proxy before any enclave code runs (the root itself never
reaches enclave code):

* ``"enclave"``: HKDF-SHA256(root, salt ``b"farside.seal.v1"``, info ``0x01 ||
  measurement``). Only the same bundle, byte for byte and with the same manifest,
  on the same platform opens the blob.
* ``"signer"``: a hash chain over security versions 0..4095 rooted in
  HKDF(root, info ``0x02 || signer || product id (u32 BE) || debug (1 byte)``);
  the enclave holds the link of its own version, so any enclave of the same
  signer and product whose own security version is at least the sealer's opens
  the blob (it walks down to the header's version), and one of a lower version
  cannot. A debug enclave and a production one never share keys, as under SGX's
  attribute mask: a debug enclave's secrets are not secret from its host.

``seal``/``unseal`` are the recipes enclave code uses; ``seal_with``/
``unseal_with`` are the pure layer under them (root or keys, and identity, passed in),
kept public inside this module for tests and test vectors. Every failure to
unseal is one ``UnsealError`` with one message, raised from one place with no
chained cause, so neither its text, its code nor its traceback tells a prober
which check failed. This module owns the blob format and its keys only; it must
not talk to the host: sealing happens wholly inside the enclave.
"""

from __future__ import annotations

import os
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._errors import UnsealError
from ..attestation.identity import SIGNER_CHAIN_LENGTH, EnclaveIdentity, SealingKeys
from .runtime import current_runtime

__all__ = ["UNSEAL_FAILED", "seal", "seal_with", "unseal", "unseal_with"]

MAGIC: Final = b"FSEAL"
VERSION: Final = 1
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
ROOT_SIZE: Final = 32
_HEADER: Final = struct.Struct(">5sBBI12s")  # magic, version, policy, security version, nonce
HEADER_SIZE: Final = _HEADER.size
_SALT: Final = b"farside.seal.v1"
_POLICIES: Final = {"enclave": 1, "signer": 2}
_ENCLAVE, _SIGNER = _POLICIES["enclave"], _POLICIES["signer"]
_U32_MAX: Final = 2**32 - 1
# AESGCM refuses more than 2**31 - 1 bytes of plaintext (or ciphertext with its tag).
_MAX_PLAINTEXT: Final = 2**31 - 1 - TAG_SIZE

UNSEAL_FAILED: Final = "the sealed blob cannot be opened by this enclave on this platform"
"""The one message of every ``UnsealError``."""


# --------------------------------------------------------------------- the pure layer


def seal_with(
    root: bytes,
    identity: EnclaveIdentity,
    data: bytes,
    policy: str = "enclave",
    *,
    nonce: bytes | None = None,
) -> bytes:
    """Seal ``data`` for ``identity`` under the platform sealing ``root``; return the blob.

    ``policy`` is ``"enclave"`` (only this measurement opens it) or ``"signer"``
    (this signer and product, at this security version or higher; the enclave must
    be signed). ``nonce`` is a seam for test vectors only: leave it ``None`` (a
    fresh random nonce), since reusing a nonce under one key breaks AES-GCM.
    """
    _check_root(root)
    _check_identity(identity)
    _check_data(data)
    policy_byte = _policy_byte(policy)
    if policy_byte == _SIGNER and not identity.signed:
        raise ValueError(
            "to seal with policy 'signer' the enclave must be signed, and this one has no "
            "signer (sign its bundle with `farside sign`, or seal with policy 'enclave')"
        )
    return _seal(SealingKeys.derive(root, identity), identity, data, policy_byte, nonce)


def _seal(
    keys: SealingKeys,
    identity: EnclaveIdentity,
    data: bytes,
    policy_byte: int,
    nonce: bytes | None,
) -> bytes:
    if nonce is None:
        nonce = os.urandom(NONCE_SIZE)
    elif not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    svn = identity.security_version
    key = keys.enclave_key if policy_byte == _ENCLAVE else keys.signer_key(svn)
    if key is None:
        raise ValueError(
            f"policy 'signer' supports security versions up to {SIGNER_CHAIN_LENGTH - 1}"
        )
    header = _HEADER.pack(MAGIC, VERSION, policy_byte, svn, nonce)
    return header + AESGCM(key).encrypt(nonce, bytes(data), header)


def unseal_with(root: bytes, identity: EnclaveIdentity, blob: bytes) -> bytes:
    """Open a blob that ``seal_with`` made for ``identity`` under ``root``; return the data.

    Raises ``UnsealError``, always with the same message, whatever is wrong with
    ``blob`` (including not being ``bytes``). ``root`` and ``identity`` are the
    caller's own and are checked like arguments (``TypeError``/``ValueError``).
    """
    _check_root(root)
    _check_identity(identity)
    return _unseal(SealingKeys.derive(root, identity), identity, blob)


def _unseal(keys: SealingKeys, identity: EnclaveIdentity, blob: object) -> bytes:
    data = _open(keys, identity, blob)
    if data is None:
        # The only raise site, outside any except block: no cause, no context,
        # and the same traceback whichever check failed.
        raise UnsealError(UNSEAL_FAILED)
    return data


def _open(keys: SealingKeys, identity: EnclaveIdentity, blob: object) -> bytes | None:
    """The data in ``blob``, or ``None`` if it does not open; never raises for a bad blob."""
    if not isinstance(blob, bytes):
        return None
    blob = bytes(blob)
    if not HEADER_SIZE + TAG_SIZE <= len(blob) <= HEADER_SIZE + TAG_SIZE + _MAX_PLAINTEXT:
        return None
    header = blob[:HEADER_SIZE]
    magic, version, policy_byte, svn, nonce = _HEADER.unpack(header)
    if magic != MAGIC or version != VERSION or policy_byte not in (_ENCLAVE, _SIGNER):
        return None
    if svn > identity.security_version:
        return None  # sealed by a newer version: an old enclave must not read a newer one's data
    if policy_byte == _SIGNER and not identity.signed:
        return None
    key = keys.enclave_key if policy_byte == _ENCLAVE else keys.signer_key(svn)
    if key is None:
        return None
    try:
        return AESGCM(key).decrypt(nonce, blob[HEADER_SIZE:], header)
    except InvalidTag:
        return None


# --------------------------------------------------------------------- argument checks


def _check_root(root: object) -> None:
    if not isinstance(root, bytes):
        raise TypeError(f"the sealing root must be bytes, not {type(root).__name__}")
    if len(root) != ROOT_SIZE:
        raise ValueError(f"the sealing root must be {ROOT_SIZE} bytes, not {len(root)}")


def _check_identity(identity: object) -> None:
    if not isinstance(identity, EnclaveIdentity):
        raise TypeError(f"identity must be an EnclaveIdentity, not {type(identity).__name__}")
    for field in ("product_id", "security_version"):
        value = getattr(identity, field)
        if not isinstance(value, int) or not 0 <= value <= _U32_MAX:
            raise ValueError(f"the enclave's {field} must be an int in [0, 2**32), got {value!r}")


def _check_data(data: object) -> None:
    if not isinstance(data, bytes):
        hint = " (encode it first, e.g. text.encode())" if isinstance(data, str) else ""
        raise TypeError(f"seal() takes bytes, not {type(data).__name__}{hint}")
    if len(data) > _MAX_PLAINTEXT:
        raise ValueError(f"seal() takes at most {_MAX_PLAINTEXT} bytes, got {len(data)}")


def _policy_byte(policy: object) -> int:
    if not isinstance(policy, str):
        raise TypeError(f"policy must be 'enclave' or 'signer', not {type(policy).__name__}")
    try:
        return _POLICIES[policy]
    except KeyError:
        raise ValueError(f"policy must be 'enclave' or 'signer', not {policy!r}") from None


# --------------------------------------------------------------------- the recipes


def seal(data: bytes, policy: str = "enclave") -> bytes:
    """Encrypt ``data`` so that only this enclave on this platform can ``unseal`` it.

    With ``policy="signer"`` (signed enclaves only), any enclave of the same
    signer and product id whose security version is at least this one's can open
    it too, so an upgrade keeps its data. Returns a versioned, authenticated blob
    that may be stored anywhere, the untrusted host included.
    """
    _check_data(data)
    policy_byte = _policy_byte(policy)
    keys, identity = _enclave_secrets("seal")
    if policy_byte == _SIGNER and not identity.signed:
        return seal_with(bytes(ROOT_SIZE), identity, data, policy)  # raises the clear error
    return _seal(keys, identity, data, policy_byte, None)


def unseal(blob: bytes) -> bytes:
    """Return the data that ``seal`` put in ``blob``.

    Raises ``UnsealError``, with one message for every cause (another enclave
    or platform, a lower security version, tampering, truncation, not a blob).
    """
    keys, identity = _enclave_secrets("unseal")
    return _unseal(keys, identity, blob)


def _enclave_secrets(what: str) -> tuple[SealingKeys, EnclaveIdentity]:
    """The sealing keys and the identity of the enclave this process hosts."""
    try:
        runtime = current_runtime()
    except RuntimeError as exc:
        raise RuntimeError(
            f"farside.trusted.{what}() works only inside an enclave loaded by a proxy"
        ) from exc
    identity = runtime.identity
    if identity is None:
        raise RuntimeError(
            f"farside.trusted.{what}() works only once the enclave's bundle is loaded"
        )
    try:
        keys = runtime.sealing_keys
    except NotImplementedError as exc:  # a hardware attester: its message says why
        raise NotImplementedError(f"farside.trusted.{what}(): {exc}") from None
    except RuntimeError as exc:
        raise RuntimeError(
            f"farside.trusted.{what}() needs the platform's sealing secret, but this proxy "
            "has no platform key (run the enclave on a provision server started with "
            "--platform-dir)"
        ) from exc
    return keys, identity
