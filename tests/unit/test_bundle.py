"""Enclave bundles (``farside.attestation.bundle``): loading from disk, paths, measurement."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
from pathlib import Path

import pytest

from farside.attestation import (
    Bundle,
    BundleError,
    Manifest,
    load_bundle,
    measure_bundle,
    validate_path,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def spec_measurement(bundle: Bundle) -> bytes:
    """The measurement as docs/architecture.md specifies it, written independently."""

    def field(data: bytes) -> bytes:
        return len(data).to_bytes(8, "big") + data

    m = bundle.manifest
    out = b"farside.bundle.v1\x00"
    out += field(m.name.encode("utf-8")) + field(m.entry.encode("utf-8"))
    out += m.product_id.to_bytes(4, "big") + m.security_version.to_bytes(4, "big")
    out += bytes([1 if m.debug else 0])
    paths = sorted(p.encode("utf-8") for p in bundle.files)
    out += len(paths).to_bytes(8, "big")
    for path in paths:
        out += field(path) + field(bundle.files[path.decode("utf-8")])
    return hashlib.sha256(out).digest()


def make_bundle(**manifest_changes: object) -> Bundle:
    manifest = Manifest(name="demo", entry="__init__.py", product_id=7, security_version=3)
    files = {
        "__init__.py": b"from .util import f\n",
        "util.py": b"def f():\n    return 1\n",
        "sub/__init__.py": b"",
        "sub/data.txt": b"\x00\x01\xff",
    }
    return Bundle(manifest=dataclasses.replace(manifest, **manifest_changes), files=files)


# ------------------------------------------------------------------ load_bundle


def test_load_single_py_file(tmp_path: Path) -> None:
    source = b"def build_trusted_application():\n    return None\n"
    (tmp_path / "my_enclave.py").write_bytes(source)
    bundle = load_bundle(tmp_path / "my_enclave.py", debug=False)
    assert bundle.manifest == Manifest(name="my_enclave", entry="my_enclave.py", debug=False)
    assert dict(bundle.files) == {"my_enclave.py": source}
    assert bundle.size == len(source)


def test_load_package_directory_skips_caches_and_bytecode(tmp_path: Path) -> None:
    pkg = tmp_path / "secret_pkg"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    (pkg / "__pycache__").mkdir()
    (pkg / "__init__.py").write_bytes(b"from . import sub\n")
    (pkg / "sub" / "__init__.py").write_bytes(b"")
    (pkg / "sub" / "impl.py").write_bytes(b"X = 1\n")
    (pkg / "sub" / "table.bin").write_bytes(b"\x00\x01")
    (pkg / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"junk")
    (pkg / "sub" / "__pycache__" / "impl.cpython-311.pyc").write_bytes(b"junk")
    (pkg / "stale.pyc").write_bytes(b"junk")
    (pkg / "stale.pyo").write_bytes(b"junk")
    (pkg / ".git").mkdir()
    (pkg / ".git" / "HEAD").write_bytes(b"ref")

    bundle = load_bundle(pkg)

    assert bundle.manifest == Manifest(name="secret_pkg", entry="__init__.py", debug=True)
    assert dict(bundle.files) == {
        "__init__.py": b"from . import sub\n",
        "sub/__init__.py": b"",
        "sub/impl.py": b"X = 1\n",
        "sub/table.bin": b"\x00\x01",
    }


def test_load_package_via_relative_path_takes_the_real_directory_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_bytes(b"")
    monkeypatch.chdir(tmp_path / "pkg")
    assert load_bundle(".").manifest.name == "pkg"


def test_a_link_out_of_the_package_is_refused(tmp_path: Path) -> None:
    """A third-party package's ``notes.txt -> /outside/secret`` must not carry the client's
    file into the bundle (the enclave would read it past files_root)."""
    secret = tmp_path / "outside" / "secret"
    secret.parent.mkdir()
    secret.write_text("the client's private file")
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("x = 1\n")
    (package / "notes.txt").symlink_to(secret)
    with pytest.raises(BundleError, match=r"notes\.txt.*outside the package"):
        load_bundle(package)


def test_a_linked_directory_is_refused(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "real").mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    (package / "real" / "data.txt").write_text("data")
    (package / "alias").symlink_to(package / "real", target_is_directory=True)
    with pytest.raises(BundleError, match="linked directory 'alias'"):
        load_bundle(package)


def test_a_link_to_a_file_of_the_package_is_read_as_that_file(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("x = 1\n")
    (package / "data.txt").write_text("shared")
    (package / "same.txt").symlink_to("data.txt")
    bundle = load_bundle(package)
    assert bundle.files["same.txt"] == bundle.files["data.txt"] == b"shared"


def test_missing_path_is_a_bundle_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "enclave.py"
    with pytest.raises(BundleError, match="does not exist") as excinfo:
        load_bundle(missing)
    assert str(missing) in str(excinfo.value)


def test_non_python_file_is_a_bundle_error(tmp_path: Path) -> None:
    path = tmp_path / "enclave.txt"
    path.write_text("print('hi')")
    with pytest.raises(BundleError, match=r"not a \.py file") as excinfo:
        load_bundle(path)
    assert str(path) in str(excinfo.value)


def test_directory_without_init_is_a_bundle_error(tmp_path: Path) -> None:
    (tmp_path / "module.py").write_bytes(b"")
    with pytest.raises(BundleError, match=r"no __init__\.py") as excinfo:
        load_bundle(tmp_path)
    assert str(tmp_path) in str(excinfo.value)


def test_bundle_error_is_a_value_error() -> None:
    assert issubclass(BundleError, ValueError)


def test_file_name_that_is_not_utf8_is_a_bundle_error(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_bytes(b"")
    with open(os.path.join(os.fsencode(pkg), b"caf\xe9.txt"), "wb") as f:
        f.write(b"latin-1 name")
    with pytest.raises(BundleError):
        load_bundle(pkg).measurement()


# ---------------------------------------------------------------- validate_path


@pytest.mark.parametrize(
    "path", ["a.py", "__init__.py", "pkg/sub/mod.py", "...", "..a", "a..", ".hidden", "é.py"]
)
def test_valid_paths_are_returned(path: str) -> None:
    assert validate_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "../x",
        "..",
        "a/../b",
        "a/../../b",
        "/abs",
        "/",
        "./a",
        "a/./b",
        "a/.",
        "a//b",
        "a/",
        "a\\b",
        "..\\x",
        "a\x00b",
        "x" * 1025,
        "é" * 513,  # 1026 UTF-8 bytes
    ],
    ids=repr,
)
def test_invalid_paths_are_refused(path: str) -> None:
    with pytest.raises(BundleError):
        validate_path(path)


def test_path_of_exactly_max_bytes_is_accepted() -> None:
    assert validate_path("x" * 1024) == "x" * 1024


def test_dot_is_not_a_file_path() -> None:
    with pytest.raises(BundleError):
        validate_path(".")


@pytest.mark.parametrize("path", ["../evil.py", "/etc/passwd"])
def test_bundle_refuses_bad_paths_in_files_and_entry(path: str) -> None:
    with pytest.raises(BundleError):
        Bundle(manifest=Manifest(name="x", entry="a.py"), files={"a.py": b"", path: b""})
    with pytest.raises(BundleError):
        Manifest(name="x", entry=path)


def test_bundle_requires_its_entry_module() -> None:
    with pytest.raises(BundleError, match=r"no entry module 'main\.py'"):
        Bundle(manifest=Manifest(name="x", entry="main.py"), files={"other.py": b""})


@pytest.mark.parametrize(
    "changes",
    [{"name": ""}, {"product_id": -1}, {"product_id": 2**32}, {"security_version": 2**32}],
    ids=repr,
)
def test_manifest_validates_its_fields(changes: dict[str, object]) -> None:
    with pytest.raises(BundleError):
        Manifest(**{"name": "x", "entry": "a.py", **changes})  # type: ignore[arg-type]


# ------------------------------------------------------------------ measurement


def test_measurement_is_32_bytes_and_matches_the_spec() -> None:
    bundle = make_bundle()
    digest = measure_bundle(bundle)
    assert len(digest) == 32
    assert digest == bundle.measurement() == spec_measurement(bundle)


def test_in_memory_vector() -> None:
    # Pinned once from the code and cross-checked against spec_measurement.
    assert measure_bundle(make_bundle()).hex() == (
        "310b0d7ebcd2407c32cc5f0910b3e845e51750bd2de56e72686143ea0ed5521c"
    )


def test_measurement_does_not_depend_on_dict_order() -> None:
    bundle = make_bundle()
    reversed_files = dict(reversed(list(bundle.files.items())))
    assert list(reversed_files) != list(bundle.files)
    again = Bundle(manifest=bundle.manifest, files=reversed_files)
    assert measure_bundle(again) == measure_bundle(bundle)


def test_measurement_sorts_paths_by_utf8_bytes() -> None:
    # "Z" < "a" < "é" in UTF-8; the spec sorts bytes, not locale or code points of pairs.
    files = {"é.py": b"1", "a.py": b"2", "Z.py": b"3"}
    bundle = Bundle(manifest=Manifest(name="n", entry="a.py"), files=files)
    assert measure_bundle(bundle) == spec_measurement(bundle)


def _mutations() -> list[tuple[str, Bundle]]:
    base = make_bundle()
    files = dict(base.files)
    out: list[tuple[str, Bundle]] = []

    def with_files(label: str, new_files: dict[str, bytes]) -> None:
        out.append((label, Bundle(manifest=base.manifest, files=new_files)))

    for path, data in files.items():
        for index in range(len(data)):
            flipped = bytearray(data)
            flipped[index] ^= 0x01
            with_files(f"flip byte {index} of {path}", {**files, path: bytes(flipped)})
        with_files(f"append to {path}", {**files, path: data + b"\n"})
    with_files("truncate util.py", {**files, "util.py": files["util.py"][:-1]})
    renamed = {("util2.py" if p == "util.py" else p): d for p, d in files.items()}
    with_files("rename util.py", renamed)
    moved = {("sub/util.py" if p == "util.py" else p): d for p, d in files.items()}
    with_files("move util.py", moved)
    with_files("add a file", {**files, "extra.py": b""})
    with_files("drop a file", {p: d for p, d in files.items() if p != "sub/data.txt"})
    # Moving bytes across a file boundary keeps the concatenation the same.
    with_files(
        "shift a byte between files",
        {**files, "__init__.py": files["__init__.py"] + b"d", "util.py": files["util.py"][1:]},
    )
    for label, changes in [
        ("name", {"name": "demo2"}),
        ("entry", {"entry": "util.py"}),
        ("product_id", {"product_id": 8}),
        ("security_version", {"security_version": 4}),
        ("debug", {"debug": False}),
    ]:
        out.append((f"manifest {label}", make_bundle(**changes)))
    return out


def test_measurement_changes_with_every_byte_path_and_manifest_field() -> None:
    base = measure_bundle(make_bundle())
    seen = {base: "base"}
    for label, bundle in _mutations():
        digest = measure_bundle(bundle)
        assert digest == spec_measurement(bundle), label
        assert digest not in seen, f"{label} measures the same as {seen.get(digest)}"
        seen[digest] = label


def test_name_and_entry_are_length_prefixed() -> None:
    # Without length prefixes, name "ab" + entry "c.py" and "a" + "bc.py" could collide.
    one = Bundle(manifest=Manifest(name="ab", entry="c.py"), files={"c.py": b"", "bc.py": b""})
    two = Bundle(manifest=Manifest(name="a", entry="bc.py"), files={"c.py": b"", "bc.py": b""})
    assert measure_bundle(one) != measure_bundle(two)


def test_manifest_fields_are_encoded_as_the_spec_says() -> None:
    bundle = make_bundle(product_id=2**32 - 1, security_version=2**31, debug=False)
    assert measure_bundle(bundle) == spec_measurement(bundle)
    # And struct's view of the same fixed part, in case both were wrong the same way.
    assert struct.pack(">II?", 2**32 - 1, 2**31, False) == b"\xff\xff\xff\xff\x80\x00\x00\x00\x00"


# ----------------------------------------------------------------------- vector


def test_bundle_v1_vector_measurement() -> None:
    expected = (VECTORS / "bundle_v1.measurement").read_text().strip()
    bundle = load_bundle(VECTORS / "bundle_v1")
    assert sorted(bundle.files) == ["__init__.py", "helper.py"]
    assert bundle.manifest == Manifest(name="bundle_v1", entry="__init__.py", debug=True)
    assert spec_measurement(bundle).hex() == expected
    assert measure_bundle(bundle).hex() == expected
