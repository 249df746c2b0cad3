"""Enclave bundles on disk: reading a ``.py`` file, package or ``.fsb`` archive, and building one.

What a bundle is and how it is measured is ``farside.attestation.bundle``'s (no I/O);
this module is where files are read and archives written. A package is read as its
own files only: a link that leaves it is refused (``_refuse_link``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any

from .._files import write_private
from .bundle import (
    ARCHIVE_SUFFIX,
    MANIFEST_FIELD_TYPES,
    MANIFEST_SOURCE,
    MAX_ARCHIVE_BYTES,
    TYPE_NAMES,
    Bundle,
    BundleError,
    Manifest,
    decode_archive,
    encode_archive,
)

__all__ = ["build_bundle", "load_bundle"]

_SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache"})


def load_bundle(path: str | os.PathLike[str], *, debug: bool | None = None) -> Bundle:
    """Read an enclave bundle (a ``.py`` file, package directory or ``.fsb`` archive).

    ``debug`` is the mode the caller will run the enclave in; ``None`` takes the
    bundle's own. A ``.py`` file or a package without a ``debug`` in its
    ``enclave.toml`` gets ``debug`` (``True`` when ``None``). Where the bundle fixes
    the flag itself (an archive's manifest, or ``enclave.toml``), a ``debug`` that
    differs is refused rather than silently overridden: a loader asking for a
    production enclave must not get a debug one, nor the other way round.

    An archive's signature is read but not verified; ``verify_bundle_signature`` does
    that. Raises ``BundleError`` naming the path when it is missing or not a bundle.
    """
    root = Path(path)
    try:
        if root.is_file():
            if root.suffix == ARCHIVE_SUFFIX:
                return _load_archive(root, debug)
            if root.suffix != ".py":
                raise BundleError(
                    f"enclave bundle {str(root)!r} is not a .py file, package or .fsb archive"
                )
            files = {root.name: root.read_bytes()}
            manifest = Manifest(name=root.stem, entry=root.name, debug=_or_true(debug))
            return Bundle(manifest=manifest, files=files)
        if root.is_dir():
            return _load_package(root, debug)
    except OSError as exc:
        raise BundleError(f"cannot read enclave bundle {str(root)!r}: {exc.strerror}") from exc
    raise BundleError(f"enclave bundle {str(root)!r} does not exist")


def _or_true(debug: bool | None) -> bool:
    return True if debug is None else debug


def _load_package(root: Path, debug: bool | None) -> Bundle:
    if not (root / "__init__.py").is_file():
        raise BundleError(f"enclave package {str(root)!r} has no __init__.py")
    files = {}
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        for name in dirnames:
            _refuse_link(Path(dirpath) / name, root, real_root, directory=True)
        for filename in sorted(filenames):
            if filename.endswith((".pyc", ".pyo")):
                continue
            full = Path(dirpath) / filename
            _refuse_link(full, root, real_root, directory=False)
            files[full.relative_to(root).as_posix()] = full.read_bytes()
    fields: dict[str, Any] = {"name": root.resolve().name}
    if MANIFEST_SOURCE in files:
        source = root / MANIFEST_SOURCE
        fields.update(_parse_manifest_source(files.pop(MANIFEST_SOURCE), str(source)))
        if "debug" in fields and debug is not None and fields["debug"] != debug:
            raise BundleError(
                f"{str(source)!r} sets debug = {str(fields['debug']).lower()}, which conflicts "
                f"with debug={debug} asked by the loader; load it with debug="
                f"{fields['debug']} (--no-debug for false) or change the file"
            )
    fields.setdefault("debug", _or_true(debug))
    try:
        manifest = Manifest(entry="__init__.py", **fields)
    except BundleError as exc:  # only enclave.toml's values can be out of range here
        raise BundleError(f"{str(root / MANIFEST_SOURCE)!r}: {exc}") from None
    return Bundle(manifest=manifest, files=files)


def _refuse_link(path: Path, root: Path, real_root: Path, *, directory: bool) -> None:
    """A package is its own files: a link may only point at another file of the package.

    A link that leaves it (``notes.txt -> /home/me/.ssh/id_ed25519`` in a third-party
    package) would hand the client's file to the enclave through the bundle, past the
    files_root the client chose. Linked directories are refused outright: the walk
    does not follow them, so their files would silently be left out.
    """
    if not path.is_symlink():
        return
    shown = str(path.relative_to(root))
    if directory:
        raise BundleError(
            f"enclave package {str(root)!r} holds a linked directory {shown!r}; "
            "replace the link with the directory itself"
        )
    target = path.resolve()
    if not target.is_relative_to(real_root) or not target.is_file():
        raise BundleError(
            f"enclave package {str(root)!r} holds a link {shown!r} to {str(target)!r}, "
            "outside the package; a bundle carries only the package's own files"
        )


def _parse_manifest_source(data: bytes, where: str) -> dict[str, Any]:
    """The manifest fields an ``enclave.toml`` sets; ``BundleError`` naming file and key."""
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise BundleError(f"{where!r} is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise BundleError(f"{where!r} is not valid TOML: {exc}") from None
    for key in document:
        if key != "enclave":
            raise BundleError(f"{where!r}: unknown key {key!r} (only an [enclave] table)")
    table = document.get("enclave", {})
    if not isinstance(table, dict):
        raise BundleError(f"{where!r}: 'enclave' must be a table")
    for key, value in table.items():
        expected = MANIFEST_FIELD_TYPES.get(key)
        if expected is None:
            known = ", ".join(MANIFEST_FIELD_TYPES)
            raise BundleError(f"{where!r}: unknown key 'enclave.{key}' (known: {known})")
        # bool is an int in Python, and `product_id = true` is a mistake, not a 1.
        if type(value) is not expected:
            raise BundleError(
                f"{where!r}: 'enclave.{key}' must be {TYPE_NAMES[expected]}, "
                f"not {type(value).__name__}"
            )
    return dict(table)


def _load_archive(root: Path, debug: bool | None) -> Bundle:
    size = root.stat().st_size
    if size > MAX_ARCHIVE_BYTES:
        raise BundleError(f"enclave archive {str(root)!r} is larger than {MAX_ARCHIVE_BYTES} bytes")
    bundle = decode_archive(root.read_bytes(), origin=str(root))
    built = bundle.manifest.debug
    if debug is not None and debug != built:
        raise BundleError(
            f"enclave archive {str(root)!r} was built with debug={built}, and a built "
            f"archive cannot be loaded with debug={debug}: load it with debug={built}"
            f"{' (without --no-debug)' if built else ' (--no-debug)'}, or rebuild it"
        )
    return bundle


# ------------------------------------------------------------------ archives


def build_bundle(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    name: str | None = None,
    product_id: int | None = None,
    security_version: int | None = None,
    debug: bool | None = None,
) -> Bundle:
    """Write ``source`` (a ``.py`` file or package directory) as an archive at ``out``.

    Each manifest field is the keyword argument when given, else ``enclave.toml``'s,
    else the default (the file or directory name, 0, 0, ``True``): flags override the
    file. ``out`` must end in ``.fsb``; it is written atomically (replacing an older
    build), so a failure leaves no partial archive. Returns the bundle as built
    (unsigned; see ``sign_bundle``).
    """
    root, target = Path(source), Path(out)
    if target.suffix != ARCHIVE_SUFFIX:
        raise BundleError(f"the archive name {str(target)!r} must end in {ARCHIVE_SUFFIX}")
    if root.is_file() and root.suffix == ARCHIVE_SUFFIX:
        raise BundleError(f"{str(root)!r} is already a built archive; build from its source")
    if root.is_dir() and target.resolve().is_relative_to(root.resolve()):
        raise BundleError(
            f"the archive {str(target)!r} is inside the package {str(root)!r}: "
            "the next build would measure it; write it elsewhere"
        )
    bundle = load_bundle(root)  # debug=None: the package's own, before the overrides
    m = bundle.manifest
    manifest = Manifest(
        name=m.name if name is None else name,
        entry=m.entry,
        product_id=m.product_id if product_id is None else product_id,
        security_version=m.security_version if security_version is None else security_version,
        debug=m.debug if debug is None else debug,
    )
    bundle = dataclasses.replace(bundle, manifest=manifest)
    data = encode_archive(bundle)
    try:
        write_private(target, data, mode=0o644, force=True)
    except OSError as exc:
        raise BundleError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from exc
    return bundle
