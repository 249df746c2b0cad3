"""Enclave bundles: reading them from disk, and their measurement.

A bundle is a single ``.py`` file or a package directory (with ``__init__.py``).
Its measurement is SHA-256 over a canonical encoding of its manifest and files
(``docs/architecture.md`` specifies the bytes); the client computes it from what
it sends and the proxy from what it received, so both name the same code.

This module reads files only in ``load_bundle``; everything else is pure.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Bundle", "BundleError", "Manifest", "load_bundle", "measure_bundle", "validate_path"]

MEASUREMENT_DOMAIN = b"farside.bundle.v1\x00"
MAX_PATH_BYTES = 1024
_SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache"})


class BundleError(ValueError):
    """A bundle on disk or on the wire is not a valid enclave bundle."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """The identity fields of an enclave bundle; all of them are measured."""

    name: str
    entry: str
    product_id: int = 0
    security_version: int = 0
    debug: bool = True

    def __post_init__(self) -> None:
        if not self.name:
            raise BundleError("manifest name must not be empty")
        validate_path(self.entry)
        for label, number in (
            ("product_id", self.product_id),
            ("security_version", self.security_version),
        ):
            if not 0 <= number < 2**32:
                raise BundleError(f"manifest {label} must be in [0, 2**32), got {number}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Bundle:
    """An enclave's code: its manifest and its files (bundle-relative path -> bytes)."""

    manifest: Manifest
    files: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for path in self.files:
            validate_path(path)
        if self.manifest.entry not in self.files:
            raise BundleError(f"bundle has no entry module {self.manifest.entry!r}")

    @property
    def size(self) -> int:
        """Total bytes of all files."""
        return sum(len(data) for data in self.files.values())

    def measurement(self) -> bytes:
        """The 32-byte SHA-256 measurement; see ``measure_bundle``."""
        return measure_bundle(self)


def validate_path(path: str) -> str:
    """Check a bundle-relative path: '/'-separated, normalized, inside the bundle."""
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise BundleError(f"bundle path {path!r} is not valid UTF-8") from None
    if not encoded or len(encoded) > MAX_PATH_BYTES:
        raise BundleError(f"bundle path {path!r} is empty or too long")
    if "\x00" in path or "\\" in path or path.startswith("/"):
        raise BundleError(f"bundle path {path!r} must be relative and '/'-separated")
    if posixpath.normpath(path) != path or path.split("/", maxsplit=1)[0] in ("..", "."):
        raise BundleError(f"bundle path {path!r} is not normalized or leaves the bundle")
    return path


def _field(data: bytes) -> bytes:
    return struct.pack(">Q", len(data)) + data


def measure_bundle(bundle: Bundle) -> bytes:
    """Return SHA-256 over the canonical encoding of ``bundle``.

    The encoding is the domain tag, then the manifest fields in a fixed order, then
    the file count and each file (sorted by UTF-8 path bytes) as path and contents,
    every variable-length field preceded by its length as a big-endian u64.
    """
    m = bundle.manifest
    digest = hashlib.sha256(MEASUREMENT_DOMAIN)
    digest.update(_field(m.name.encode()))
    digest.update(_field(m.entry.encode()))
    digest.update(struct.pack(">II?", m.product_id, m.security_version, m.debug))
    paths = sorted(bundle.files, key=lambda p: p.encode())
    digest.update(struct.pack(">Q", len(paths)))
    for path in paths:
        digest.update(_field(path.encode()))
        digest.update(_field(bundle.files[path]))
    return digest.digest()


def load_bundle(path: str | os.PathLike[str], *, debug: bool = True) -> Bundle:
    """Read an enclave bundle (a ``.py`` file or a package directory) from disk.

    Raises ``BundleError`` naming the path when it is missing or not a bundle.
    """
    root = Path(path)
    try:
        if root.is_file():
            if root.suffix != ".py":
                raise BundleError(f"enclave bundle {str(root)!r} is not a .py file or package")
            files = {root.name: root.read_bytes()}
            return Bundle(
                manifest=Manifest(name=root.stem, entry=root.name, debug=debug), files=files
            )
        if root.is_dir():
            if not (root / "__init__.py").is_file():
                raise BundleError(f"enclave package {str(root)!r} has no __init__.py")
            files = {}
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
                for filename in sorted(filenames):
                    if filename.endswith((".pyc", ".pyo")):
                        continue
                    full = Path(dirpath) / filename
                    files[full.relative_to(root).as_posix()] = full.read_bytes()
            name = root.resolve().name
            return Bundle(
                manifest=Manifest(name=name, entry="__init__.py", debug=debug), files=files
            )
    except OSError as exc:
        raise BundleError(f"cannot read enclave bundle {str(root)!r}: {exc.strerror}") from exc
    raise BundleError(f"enclave bundle {str(root)!r} does not exist")
