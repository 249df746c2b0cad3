"""The trusted machine's platform identity: an Ed25519 key pair.

``farside platform init --dir DIR`` makes it once per trusted machine:
``platform.key`` (PKCS#8 PEM, mode 0600) and ``platform.pub`` (the public half,
which clients trust). Only the platform agent (``farside.attestation.agent``) reads the
private key; proxies get evidence and sealing keys from the agent and never hold it.
Files are written to a temporary name and renamed, so a crash never leaves a
half-written key.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .._files import write_private

__all__ = [
    "PLATFORM_KEY",
    "PLATFORM_PUB",
    "init_platform",
    "load_platform_key",
    "load_platform_public_key",
]

PLATFORM_KEY = "platform.key"
PLATFORM_PUB = "platform.pub"


def init_platform(directory: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Make a platform key pair in ``directory`` (created 0700); return the public key's path."""
    root = Path(directory)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not force:
        for name in (PLATFORM_KEY, PLATFORM_PUB):
            if (root / name).exists():
                raise FileExistsError(f"{str(root / name)!r} exists; pass --force to replace it")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_private(root / PLATFORM_KEY, private, force=force)
    write_private(root / PLATFORM_PUB, public, mode=0o644, force=force)
    return root / PLATFORM_PUB


def load_platform_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read a platform private key; ``ValueError`` naming the file if it is not one."""
    source = Path(path)
    try:
        if source.stat().st_mode & 0o077:
            raise ValueError(
                f"the platform key {str(source)!r} is readable by others; chmod 600 it"
            )
        key = serialization.load_pem_private_key(source.read_bytes(), password=None)
    except OSError as exc:
        raise ValueError(f"cannot read the platform key {str(source)!r}: {exc.strerror}") from None
    except (TypeError, ValueError) as exc:
        if "readable by others" in str(exc):
            raise
        raise ValueError(f"{str(source)!r} is not a PEM platform key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"the platform key {str(source)!r} is not an Ed25519 key")
    return key


def load_platform_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read a platform public key (``platform.pub``)."""
    source = Path(path)
    try:
        key = serialization.load_pem_public_key(source.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read {str(source)!r}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"{str(source)!r} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{str(source)!r} is not an Ed25519 public key")
    return key
