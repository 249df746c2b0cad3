"""Signer keys and bundle signatures: who vouches for an enclave's code.

A signer is an Ed25519 key pair (``farside keygen``). ``sign_bundle`` puts the
signer's signature over a built archive's measurement into the archive, and
``verify_bundle_signature`` checks it and returns the signer identity: SHA-256 of
the raw 32-byte public key (Asylo's MRSIGNER), or ``UNSIGNED``. The measurement
already covers the manifest, so one signature over it vouches for both.

This module owns signer keys and the signing recipe; the archive format is
``bundle``'s, and the signature domain and check are ``identity``'s (the proxy
verifies with the same function).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .._files import write_private
from .bundle import ARCHIVE_SUFFIX, Bundle, BundleError, BundleSignature, encode_archive
from .bundle_files import load_bundle
from .identity import SIGNATURE_DOMAIN, UNSIGNED, verify_signature

__all__ = ["generate_signer_key", "load_signer_key", "sign_bundle", "verify_bundle_signature"]


def generate_signer_key(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write a new signer key to ``path`` (PKCS#8 PEM, 0600) and its ``.pub`` next to it.

    Both are written atomically; an existing key or public key is refused unless
    ``force`` (``FileExistsError``). Returns the public key's path.
    """
    private_path = Path(path)
    public_path = private_path.with_suffix(".pub")
    if public_path == private_path:
        raise ValueError(f"the signer key {str(private_path)!r} must not be named .pub")
    if not force:
        for existing in (private_path, public_path):
            if existing.exists():
                raise FileExistsError(f"{str(existing)!r} exists; pass --force to replace it")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_private(private_path, private, force=force)
    write_private(public_path, public, mode=0o644, force=force)
    return public_path


def load_signer_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read a signer key (unencrypted PKCS#8 PEM); ``ValueError`` naming the file if not one."""
    source = Path(path)
    try:
        key = serialization.load_pem_private_key(source.read_bytes(), password=None)
    except OSError as exc:
        raise ValueError(f"cannot read the signer key {str(source)!r}: {exc.strerror}") from None
    except (TypeError, ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{str(source)!r} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"the signer key {str(source)!r} is not an Ed25519 key")
    return key


def sign_bundle(archive: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> Bundle:
    """Sign the built archive ``archive`` with the signer key at ``key_path``, in place.

    ``signature.json`` is added, or replaced when the archive was signed before; an
    existing signature that no longer verifies (the archive changed since) is
    refused rather than papered over. The archive is rewritten atomically. Returns
    the signed bundle. Raises ``BundleError`` for a bad archive, ``ValueError`` for a
    bad key.
    """
    target = Path(archive)
    if target.suffix != ARCHIVE_SUFFIX or target.is_dir():
        raise BundleError(
            f"{str(target)!r} is not a built archive ({ARCHIVE_SUFFIX}); run farside build first"
        )
    key = load_signer_key(key_path)
    bundle = load_bundle(target)
    if bundle.signature is not None:
        verify_bundle_signature(bundle)
    signature = BundleSignature(
        public_key=key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ),
        signature=key.sign(SIGNATURE_DOMAIN + bundle.measurement()),
    )
    signed = dataclasses.replace(bundle, signature=signature)
    try:
        write_private(target, encode_archive(signed), mode=0o644, force=True)
    except OSError as exc:
        raise BundleError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from exc
    return signed


def verify_bundle_signature(bundle: Bundle) -> bytes:
    """Return ``bundle``'s 32-byte signer identity, or ``UNSIGNED`` if it carries none.

    Raises ``BundleError`` when the signature does not verify against the bundle's
    measurement, whatever the cause (changed files or manifest, another bundle's
    signature, a damaged key or signature): one error, no oracle.
    """
    if bundle.signature is None:
        return UNSIGNED
    try:
        return verify_signature(
            bundle.measurement(), bundle.signature.public_key, bundle.signature.signature
        )
    except ValueError:
        raise BundleError(
            "the bundle signature does not verify: the bundle changed after it was signed, "
            "or the signature is not its own"
        ) from None
