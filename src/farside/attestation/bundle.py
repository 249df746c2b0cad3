"""Enclave bundles: reading them from disk, building archives, and their measurement.

A bundle is a single ``.py`` file, a package directory (with ``__init__.py``), or a
built archive (``.fsb``, see ``build_bundle``). Its measurement is SHA-256 over a
canonical encoding of its manifest and files (``docs/architecture.md`` specifies the
bytes); the client computes it from what it sends and the proxy from what it
received, so both name the same code.

A package directory may hold ``enclave.toml`` with an ``[enclave]`` table (``name``,
``product_id``, ``security_version``, ``debug``): it sets the manifest, and is not
itself one of the measured files (its content is measured through the manifest).

An archive is a zip written byte-for-byte deterministically (``encode_archive``):
``manifest.json``, then ``files/<path>`` for each file sorted by UTF-8 path, then
``signature.json`` when signed. Reading one (``decode_archive``) trusts nothing in
it: sizes, counts, paths and every manifest field are checked.

This module does no I/O: it is the model the session protocol carries (``Bundle``,
``Manifest``), the measurement and the archive codec. Reading bundles from disk and
writing archives is ``farside.attestation.bundle_files``'s; signing is
``farside.attestation.signing``'s.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import re
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Bundle",
    "BundleError",
    "BundleSignature",
    "Manifest",
    "decode_archive",
    "encode_archive",
    "measure_bundle",
    "validate_path",
]

MEASUREMENT_DOMAIN = b"farside.bundle.v1\x00"
MAX_PATH_BYTES = 1024
MANIFEST_SOURCE = "enclave.toml"
ARCHIVE_SUFFIX = ".fsb"
ARCHIVE_VERSION = 1
MAX_ARCHIVE_ENTRIES = 10_000
MAX_ARCHIVE_CONTENT = 64 * 1024 * 1024  # total uncompressed bytes of all entries
MAX_ARCHIVE_BYTES = 2 * MAX_ARCHIVE_CONTENT  # the .fsb file itself, before it is parsed
_MAX_METADATA_BYTES = 64 * 1024  # manifest.json, signature.json
_MANIFEST_ENTRY = "manifest.json"
_SIGNATURE_ENTRY = "signature.json"
_FILES_PREFIX = "files/"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold
_ZIP_FILE_MODE = 0o100644 << 16  # a regular file, rw-r--r--, in the Unix attribute bits
_HEX = re.compile(r"[0-9a-f]*")


# The manifest fields enclave.toml and an archive's manifest.json set, and their types.
MANIFEST_FIELD_TYPES: dict[str, type] = {
    "name": str,
    "product_id": int,
    "security_version": int,
    "debug": bool,
}
TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean"}


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
class BundleSignature:
    """A signer's Ed25519 signature over a bundle's measurement (``signature.json``).

    Carried by a signed archive and not measured. It is a claim until
    ``verify_bundle_signature`` checks it and gives the signer identity.
    """

    public_key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, bytes) or len(self.public_key) != 32:
            raise BundleError("a bundle signature's public key is 32 raw bytes")
        if not isinstance(self.signature, bytes) or len(self.signature) != 64:
            raise BundleError("a bundle signature is 64 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Bundle:
    """An enclave's code: its manifest and its files (bundle-relative path -> bytes).

    ``signature`` is a signer's signature when the bundle came from a signed archive;
    it is not part of the measurement.
    """

    manifest: Manifest
    files: Mapping[str, bytes] = field(default_factory=dict)
    signature: BundleSignature | None = None

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


# ------------------------------------------------------------------ archives


def encode_archive(bundle: Bundle) -> bytes:
    """The ``.fsb`` bytes of ``bundle``: the same bundle always gives the same bytes.

    Entries are stored uncompressed (deflate output varies across zlib builds), dated
    1980-01-01, mode 0644, with no extra fields or comment.
    """
    m = bundle.manifest
    manifest = {
        "version": ARCHIVE_VERSION,
        "name": m.name,
        "entry": m.entry,
        "product_id": m.product_id,
        "security_version": m.security_version,
        "debug": m.debug,
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(_zip_entry(_MANIFEST_ENTRY), _json_bytes(manifest))
        for path in sorted(bundle.files, key=lambda p: p.encode()):
            archive.writestr(_zip_entry(_FILES_PREFIX + path), bundle.files[path])
        if bundle.signature is not None:
            signature = {
                "version": ARCHIVE_VERSION,
                "public_key": bundle.signature.public_key.hex(),
                "signature": bundle.signature.signature.hex(),
            }
            archive.writestr(_zip_entry(_SIGNATURE_ENTRY), _json_bytes(signature))
    return buffer.getvalue()


def _zip_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3  # Unix, so that external_attr means a file mode everywhere
    info.external_attr = _ZIP_FILE_MODE
    return info


def _json_bytes(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def decode_archive(data: bytes, *, origin: str = "enclave archive") -> Bundle:
    """Parse ``.fsb`` bytes into a ``Bundle``; ``BundleError`` naming ``origin`` if invalid.

    Refused: more than ``MAX_ARCHIVE_ENTRIES`` entries or ``MAX_ARCHIVE_CONTENT``
    uncompressed bytes (checked before anything is decompressed), duplicate or
    unexpected entries, paths that leave the bundle, encrypted or oddly compressed
    entries, and a manifest or signature with missing, unknown or mistyped fields.
    """
    entries = _read_zip(data, origin)
    if _MANIFEST_ENTRY not in entries:
        raise BundleError(f"{origin!r} has no {_MANIFEST_ENTRY}")
    manifest = _decode_manifest(entries.pop(_MANIFEST_ENTRY), origin)
    signature = None
    if _SIGNATURE_ENTRY in entries:
        signature = _decode_signature(entries.pop(_SIGNATURE_ENTRY), origin)
    files = {}
    for name, content in entries.items():
        if not name.startswith(_FILES_PREFIX):
            raise BundleError(f"{origin!r} has an unexpected entry {name!r}")
        try:
            files[validate_path(name.removeprefix(_FILES_PREFIX))] = content
        except BundleError as exc:
            raise BundleError(f"{origin!r}: entry {name!r}: {exc}") from None
    try:
        return Bundle(manifest=manifest, files=files, signature=signature)
    except BundleError as exc:
        raise BundleError(f"{origin!r}: {exc}") from None


# What zipfile raises on a corrupt archive varies with where the damage is.
_CORRUPT_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    EOFError,
    OSError,
    ValueError,
    RuntimeError,
)


def _read_zip(data: bytes, origin: str) -> dict[str, bytes]:
    if len(data) > MAX_ARCHIVE_BYTES:
        raise BundleError(f"{origin!r} is larger than {MAX_ARCHIVE_BYTES} bytes")
    entries: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_ARCHIVE_ENTRIES:
                raise BundleError(f"{origin!r} has more than {MAX_ARCHIVE_ENTRIES} entries")
            # Declared sizes bound what zipfile will inflate, so a bomb stops here.
            if sum(info.file_size for info in infos) > MAX_ARCHIVE_CONTENT:
                raise BundleError(
                    f"{origin!r} holds more than {MAX_ARCHIVE_CONTENT} uncompressed bytes"
                )
            for info in infos:
                name = info.filename
                if name in entries:
                    raise BundleError(f"{origin!r} has the entry {name!r} twice")
                if info.flag_bits & 0x1:
                    raise BundleError(f"{origin!r}: entry {name!r} is encrypted")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise BundleError(f"{origin!r}: entry {name!r} has an unsupported compression")
                with archive.open(info) as member:
                    content = member.read(info.file_size + 1)
                if len(content) != info.file_size:
                    raise BundleError(f"{origin!r}: entry {name!r} is not its declared size")
                entries[name] = content
    except BundleError:
        raise
    except _CORRUPT_ZIP_ERRORS as exc:
        raise BundleError(f"{origin!r} is not a valid enclave archive: {exc}") from None
    return entries


def _decode_json(data: bytes, what: str, origin: str) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        if len(keys) != len(set(keys)):
            raise BundleError(f"{origin!r}: {what} repeats a key")
        return dict(pairs)

    def no_constant(name: str) -> None:
        raise BundleError(f"{origin!r}: {what} holds {name}, which is not JSON")

    if len(data) > _MAX_METADATA_BYTES:
        raise BundleError(f"{origin!r}: {what} is larger than {_MAX_METADATA_BYTES} bytes")
    try:
        value = json.loads(
            data.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constant
        )
    except BundleError:
        raise
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{origin!r}: {what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BundleError(f"{origin!r}: {what} is not a JSON object")
    return value


def _check_fields(value: dict[str, Any], expected: dict[str, type], what: str, origin: str) -> None:
    for key in value:
        if key not in expected:
            raise BundleError(f"{origin!r}: {what} has an unknown key {key!r}")
    for key, kind in expected.items():
        if key not in value:
            raise BundleError(f"{origin!r}: {what} has no {key!r}")
        if type(value[key]) is not kind:  # bool is an int; neither stands in for the other
            raise BundleError(f"{origin!r}: {what} {key!r} must be {TYPE_NAMES[kind]}")
    if value["version"] != ARCHIVE_VERSION:
        raise BundleError(
            f"{origin!r}: {what} version {value['version']} is not supported "
            f"(this farside reads version {ARCHIVE_VERSION})"
        )


def _decode_manifest(data: bytes, origin: str) -> Manifest:
    value = _decode_json(data, _MANIFEST_ENTRY, origin)
    _check_fields(
        value, {"version": int, **MANIFEST_FIELD_TYPES, "entry": str}, _MANIFEST_ENTRY, origin
    )
    del value["version"]
    try:
        return Manifest(**value)
    except BundleError as exc:
        raise BundleError(f"{origin!r}: {_MANIFEST_ENTRY}: {exc}") from None


def _decode_signature(data: bytes, origin: str) -> BundleSignature:
    value = _decode_json(data, _SIGNATURE_ENTRY, origin)
    expected = {"version": int, "public_key": str, "signature": str}
    _check_fields(value, expected, _SIGNATURE_ENTRY, origin)
    for key, size in (("public_key", 32), ("signature", 64)):
        if len(value[key]) != 2 * size or not _HEX.fullmatch(value[key]):
            raise BundleError(
                f"{origin!r}: {_SIGNATURE_ENTRY} {key!r} must be {2 * size} lowercase hex digits"
            )
    return BundleSignature(
        public_key=bytes.fromhex(value["public_key"]), signature=bytes.fromhex(value["signature"])
    )
