"""Bundle archives and signatures: enclave.toml, build_bundle, .fsb loading, signing, the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import stat
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import farside.attestation
from farside.attestation import (
    Bundle,
    BundleError,
    BundleSignature,
    Manifest,
    build_bundle,
    bundle as bundle_module,
    bundle_files,
    generate_signer_key,
    load_bundle,
    load_signer_key,
    sign_bundle,
    verify_bundle_signature,
)
from farside.attestation.bundle import decode_archive, encode_archive
from farside.attestation.identity import UNSIGNED

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
MANIFEST = {
    "version": 1,
    "name": "pkg",
    "entry": "__init__.py",
    "product_id": 0,
    "security_version": 0,
    "debug": True,
}


@pytest.fixture
def package(tmp_path: Path) -> Path:
    root = tmp_path / "src" / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_bytes(b"from .sub import impl\n")
    (root / "sub" / "__init__.py").write_bytes(b"")
    (root / "sub" / "impl.py").write_bytes(b"X = 1\n")
    (root / "sub" / "table.bin").write_bytes(bytes(range(256)))
    (root / "é.py").write_bytes(b"# non-ASCII path\n")
    return root


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def write_zip(
    path: Path,
    entries: list[tuple[str, bytes]],
    compression: int = zipfile.ZIP_STORED,
) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicates some tests want
        with zipfile.ZipFile(path, "w", compression=compression) as archive:
            for name, data in entries:
                archive.writestr(name, data)
    return path


def manifest_json(**changes: object) -> bytes:
    return json.dumps({**MANIFEST, **changes}).encode()


def valid_entries(**changes: object) -> list[tuple[str, bytes]]:
    return [("manifest.json", manifest_json(**changes)), ("files/__init__.py", b"X = 1\n")]


# ------------------------------------------------------------------ building


def test_build_round_trip_keeps_files_manifest_and_measurement(
    package: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pkg.fsb"
    built = build_bundle(package, out)
    loaded = load_bundle(out)
    source = load_bundle(package)
    assert loaded == built == source
    assert loaded.signature is None
    assert loaded.measurement() == source.measurement()
    assert dict(loaded.files) == dict(source.files)


def test_build_single_py_file(tmp_path: Path) -> None:
    (tmp_path / "worker.py").write_bytes(b"def build_trusted_application():\n    pass\n")
    out = tmp_path / "worker.fsb"
    build_bundle(tmp_path / "worker.py", out)
    loaded = load_bundle(out)
    assert loaded.manifest == Manifest(name="worker", entry="worker.py")
    assert loaded.measurement() == load_bundle(tmp_path / "worker.py").measurement()


def test_build_overrides_become_the_measured_manifest(package: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg.fsb"
    built = build_bundle(package, out, name="svc", product_id=7, security_version=3, debug=False)
    expected = Manifest(
        name="svc", entry="__init__.py", product_id=7, security_version=3, debug=False
    )
    assert built.manifest == expected
    loaded = load_bundle(out)
    assert loaded.manifest == expected
    same = Bundle(manifest=expected, files=load_bundle(package).files)
    assert loaded.measurement() == same.measurement()


def test_two_builds_are_byte_identical(package: Path, tmp_path: Path) -> None:
    build_bundle(package, tmp_path / "one.fsb")
    # Newer times and a file written last must not change a byte.
    (package / "sub" / "impl.py").write_bytes(b"X = 1\n")
    (package / "sub" / "impl.py").chmod(0o755)
    build_bundle(package, tmp_path / "two.fsb")
    assert (tmp_path / "one.fsb").read_bytes() == (tmp_path / "two.fsb").read_bytes()


def test_archive_layout_is_canonical(package: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg.fsb"
    build_bundle(package, out)
    with zipfile.ZipFile(out) as archive:
        infos = archive.infolist()
        assert archive.comment == b""
        manifest = json.loads(archive.read("manifest.json"))
    assert [info.filename for info in infos] == [
        "manifest.json",
        "files/__init__.py",
        "files/sub/__init__.py",
        "files/sub/impl.py",
        "files/sub/table.bin",
        "files/é.py",
    ]
    for info in infos:
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.compress_type == zipfile.ZIP_STORED
        assert info.external_attr >> 16 == 0o100644
        assert info.extra == b""
    assert manifest == {**MANIFEST, "name": "pkg"}


def test_build_refuses_bad_outputs_and_sources(package: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"must end in \.fsb"):
        build_bundle(package, tmp_path / "pkg.zip")
    with pytest.raises(BundleError, match="inside the package"):
        build_bundle(package, package / "pkg.fsb")
    build_bundle(package, tmp_path / "pkg.fsb")
    with pytest.raises(BundleError, match="already a built archive"):
        build_bundle(tmp_path / "pkg.fsb", tmp_path / "again.fsb")
    with pytest.raises(BundleError, match="does not exist"):
        build_bundle(tmp_path / "gone", tmp_path / "gone.fsb")
    with pytest.raises(BundleError, match="cannot write"):
        build_bundle(package, tmp_path / "no" / "such" / "dir.fsb")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg.fsb", "src"]


# ------------------------------------------------------------------ enclave.toml


def test_enclave_toml_sets_the_manifest_and_is_not_a_file(package: Path) -> None:
    (package / "enclave.toml").write_text(
        '[enclave]\nname = "svc"\nproduct_id = 4\nsecurity_version = 2\ndebug = false\n'
    )
    (package / "sub" / "enclave.toml").write_text("# only the root one is the manifest\n")
    bundle = load_bundle(package)
    assert bundle.manifest == Manifest(
        name="svc", entry="__init__.py", product_id=4, security_version=2, debug=False
    )
    assert "enclave.toml" not in bundle.files
    assert "sub/enclave.toml" in bundle.files
    assert load_bundle(package, debug=False) == bundle


def test_enclave_toml_defaults_and_caller_debug(package: Path) -> None:
    (package / "enclave.toml").write_text("[enclave]\nproduct_id = 9\n")
    assert load_bundle(package).manifest == Manifest(
        name="pkg", entry="__init__.py", product_id=9, debug=True
    )
    assert load_bundle(package, debug=False).manifest.debug is False
    (package / "enclave.toml").write_text("")
    assert load_bundle(package).manifest == Manifest(name="pkg", entry="__init__.py")


def test_enclave_toml_debug_conflicting_with_the_loader_is_refused(package: Path) -> None:
    (package / "enclave.toml").write_text("[enclave]\ndebug = false\n")
    with pytest.raises(BundleError, match=r"debug.*conflicts") as excinfo:
        load_bundle(package, debug=True)
    assert "enclave.toml" in str(excinfo.value)


def test_build_flags_override_enclave_toml(package: Path, tmp_path: Path) -> None:
    (package / "enclave.toml").write_text('[enclave]\nname = "svc"\ndebug = false\n')
    assert build_bundle(package, tmp_path / "a.fsb").manifest.debug is False
    overridden = build_bundle(package, tmp_path / "b.fsb", name="other", debug=True)
    assert overridden.manifest.name == "other"
    assert overridden.manifest.debug is True


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[enclave]\nversion = 1\n", "enclave.version"),
        ("[enclave]\nname = 3\n", "enclave.name"),
        ('[enclave]\nproduct_id = "1"\n', "enclave.product_id"),
        ("[enclave]\nproduct_id = true\n", "enclave.product_id"),
        ("[enclave]\nsecurity_version = 1.5\n", "enclave.security_version"),
        ("[enclave]\ndebug = 1\n", "enclave.debug"),
        ('[enclav]\nname = "x"\n', "enclav"),
        ('name = "x"\n', "name"),
        ('enclave = "x"\n', "enclave"),
        ("[enclave]\nproduct_id = -1\n", "product_id"),
        ("[enclave]\nsecurity_version = 4294967296\n", "security_version"),
        ('[enclave]\nname = ""\n', "name"),
        ("[enclave\n", "TOML"),
    ],
    ids=repr,
)
def test_bad_enclave_toml_names_the_file_and_key(package: Path, text: str, key: str) -> None:
    (package / "enclave.toml").write_text(text)
    with pytest.raises(BundleError) as excinfo:
        load_bundle(package)
    assert str(package / "enclave.toml") in str(excinfo.value)
    assert key in str(excinfo.value)


def test_enclave_toml_that_is_not_utf8_is_refused(package: Path) -> None:
    (package / "enclave.toml").write_bytes(b'[enclave]\nname = "\xff"\n')
    with pytest.raises(BundleError, match="UTF-8"):
        load_bundle(package)


# ------------------------------------------------------------------ loading archives


def test_archive_debug_must_match_the_loader(package: Path, tmp_path: Path) -> None:
    out = tmp_path / "prod.fsb"
    build_bundle(package, out, debug=False)
    assert load_bundle(out).manifest.debug is False
    assert load_bundle(out, debug=False).manifest.debug is False
    with pytest.raises(BundleError, match="built with debug=False") as excinfo:
        load_bundle(out, debug=True)
    assert str(out) in str(excinfo.value)


def test_deflated_archive_is_accepted(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "d.fsb", valid_entries(), zipfile.ZIP_DEFLATED)
    bundle = load_bundle(path)
    assert dict(bundle.files) == {"__init__.py": b"X = 1\n"}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([*valid_entries(), ("files/../x", b"")], "leaves the bundle"),
        ([*valid_entries(), ("files//etc/passwd", b"")], "relative"),
        ([*valid_entries(), ("files/a\\b.py", b"")], "'/'-separated"),
        ([*valid_entries(), ("files/", b"")], "empty"),
        ([*valid_entries(), ("files/__init__.py", b"evil")], "twice"),
        ([*valid_entries(), ("manifest.json", manifest_json())], "twice"),
        ([*valid_entries(), ("extra.txt", b"")], "unexpected entry"),
        ([*valid_entries(), ("files/sub/", b"")], "not normalized"),
        ([("files/__init__.py", b"")], "no manifest.json"),
        ([("manifest.json", manifest_json())], "no entry module"),
        ([("manifest.json", b"{"), ("files/__init__.py", b"")], "not valid JSON"),
        ([("manifest.json", b"\xff"), ("files/__init__.py", b"")], "not valid JSON"),
        ([("manifest.json", b"[]"), ("files/__init__.py", b"")], "not a JSON object"),
        ([("manifest.json", b"[" * 100_000), ("files/__init__.py", b"")], "larger than"),
        ([("manifest.json", b"[" * 5_000), ("files/__init__.py", b"")], "not valid JSON"),
        (valid_entries(product_id="1"), "'product_id' must be an integer"),
        (valid_entries(product_id=True), "'product_id' must be an integer"),
        (valid_entries(security_version=1.0), "'security_version' must be an integer"),
        (valid_entries(debug=1), "'debug' must be a boolean"),
        (valid_entries(name=None), "'name' must be a string"),
        (valid_entries(product_id=2**32), "product_id must be in"),
        (valid_entries(name=""), "name must not be empty"),
        (valid_entries(entry="../x.py"), "leaves the bundle"),
        (valid_entries(version=2), "version 2 is not supported"),
        (valid_entries(extra=1), "unknown key 'extra'"),
        (
            [("manifest.json", json.dumps({"version": 1}).encode()), ("files/a", b"")],
            "has no 'name'",
        ),
        (
            [
                ("manifest.json", manifest_json()[:-1] + b', "debug": false}'),
                ("files/__init__.py", b""),
            ],
            "repeats a key",
        ),
        (
            [
                ("manifest.json", manifest_json()[:-1] + b', "x": NaN}'),
                ("files/__init__.py", b""),
            ],
            "NaN",
        ),
    ],
    ids=repr,
)
def test_invalid_archives_are_refused(
    tmp_path: Path, entries: list[tuple[str, bytes]], message: str
) -> None:
    path = write_zip(tmp_path / "bad.fsb", entries)
    with pytest.raises(BundleError, match=message) as excinfo:
        load_bundle(path)
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        ({"public_key": "00" * 32, "signature": "0" * 127}, "128 lowercase hex"),
        ({"public_key": "AA" * 32, "signature": "00" * 64}, "64 lowercase hex"),
        ({"public_key": " a" * 32, "signature": "00" * 64}, "64 lowercase hex"),
        ({"public_key": "00" * 32, "signature": "00" * 64, "alg": "x"}, "unknown key 'alg'"),
        ({"public_key": "00" * 32}, "has no 'signature'"),
        ({"public_key": 1, "signature": "00" * 64}, "must be a string"),
    ],
    ids=repr,
)
def test_invalid_signature_json_is_refused(
    tmp_path: Path, signature: dict[str, object], message: str
) -> None:
    document = json.dumps({"version": 1, **signature}).encode()
    path = write_zip(tmp_path / "bad.fsb", [*valid_entries(), ("signature.json", document)])
    with pytest.raises(BundleError, match=message):
        load_bundle(path)


def test_zip_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    big = bundle_module.MAX_ARCHIVE_CONTENT + 1
    path = write_zip(
        tmp_path / "bomb.fsb", [*valid_entries(), ("files/zeros", bytes(big))], zipfile.ZIP_DEFLATED
    )
    assert path.stat().st_size < 1024 * 1024
    with pytest.raises(BundleError, match="uncompressed bytes"):
        load_bundle(path)


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    extra = [(f"files/m{i}.py", b"") for i in range(bundle_module.MAX_ARCHIVE_ENTRIES)]
    path = write_zip(tmp_path / "many.fsb", [*valid_entries(), *extra])
    with pytest.raises(BundleError, match="more than 10000 entries"):
        load_bundle(path)


def test_archive_file_too_large_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_zip(tmp_path / "big.fsb", valid_entries())
    monkeypatch.setattr(bundle_files, "MAX_ARCHIVE_BYTES", path.stat().st_size - 1)
    with pytest.raises(BundleError, match="larger than"):
        load_bundle(path)


def test_unsupported_compression_is_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "bz.fsb", valid_entries(), zipfile.ZIP_BZIP2)
    with pytest.raises(BundleError, match="unsupported compression"):
        load_bundle(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip content", "empty"])
def test_corrupted_archives_are_refused(package: Path, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "pkg.fsb"
    build_bundle(package, path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"PK\x03\x04 not really a zip" * 10)
    elif damage == "flip content":
        data[data.index(b"X = 1") + 4] ^= 0x01  # a stored file's byte: its CRC no longer fits
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="not a valid enclave archive") as excinfo:
        load_bundle(path)
    assert str(path) in str(excinfo.value)


def test_decode_archive_round_trips_encode_archive(package: Path) -> None:
    bundle = load_bundle(package)
    signed = dataclasses.replace(
        bundle, signature=BundleSignature(public_key=bytes(32), signature=bytes(64))
    )
    for value in (bundle, signed):
        assert decode_archive(encode_archive(value)) == value


# ------------------------------------------------------------------ signing


@pytest.fixture
def signer_key(tmp_path: Path) -> Path:
    key = tmp_path / "keys" / "signer.key"
    key.parent.mkdir()
    generate_signer_key(key)
    return key


def test_generate_signer_key_files_and_modes(signer_key: Path) -> None:
    public = signer_key.with_name("signer.pub")
    assert stat.S_IMODE(signer_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    key = load_signer_key(signer_key)
    assert signer_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded_public = serialization.load_pem_public_key(public.read_bytes())
    assert loaded_public.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    ) == raw_public(key)
    assert sorted(p.name for p in signer_key.parent.iterdir()) == ["signer.key", "signer.pub"]


def test_generate_signer_key_refuses_to_overwrite_unless_forced(signer_key: Path) -> None:
    before = signer_key.read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        generate_signer_key(signer_key)
    assert signer_key.read_bytes() == before
    signer_key.unlink()
    with pytest.raises(FileExistsError, match=r"signer\.pub"):  # half a pair is not replaced
        generate_signer_key(signer_key)
    generate_signer_key(signer_key, force=True)
    assert signer_key.read_bytes() != before


def test_sign_then_verify_gives_sha256_of_the_public_key(
    package: Path, tmp_path: Path, signer_key: Path
) -> None:
    out = tmp_path / "pkg.fsb"
    unsigned = build_bundle(package, out)
    assert verify_bundle_signature(unsigned) == UNSIGNED
    signed = sign_bundle(out, signer_key)
    loaded = load_bundle(out)
    assert loaded == signed
    assert loaded.signature is not None
    public = raw_public(load_signer_key(signer_key))
    assert loaded.signature.public_key == public
    assert verify_bundle_signature(loaded) == hashlib.sha256(public).digest()
    # The signature is not measured: signing leaves the measurement alone.
    assert loaded.measurement() == unsigned.measurement()


def test_signing_is_deterministic_and_resigning_replaces(
    package: Path, tmp_path: Path, signer_key: Path
) -> None:
    out = tmp_path / "pkg.fsb"
    build_bundle(package, out)
    sign_bundle(out, signer_key)
    first = out.read_bytes()
    sign_bundle(out, signer_key)
    assert out.read_bytes() == first
    other = tmp_path / "other.key"
    generate_signer_key(other)
    sign_bundle(out, other)
    with zipfile.ZipFile(out) as archive:
        assert [i.filename for i in archive.infolist()].count("signature.json") == 1
    identity = verify_bundle_signature(load_bundle(out))
    assert identity == hashlib.sha256(raw_public(load_signer_key(other))).digest()
    assert identity != hashlib.sha256(raw_public(load_signer_key(signer_key))).digest()


def _rewrite(path: Path, change_file: bool) -> None:
    """Change one byte of a file (or the manifest) but keep the old signature."""
    bundle = load_bundle(path)
    if change_file:
        files = dict(bundle.files)
        data = bytearray(files["sub/impl.py"])
        data[0] ^= 0x01
        files["sub/impl.py"] = bytes(data)
        bundle = dataclasses.replace(bundle, files=files)
    else:
        bundle = dataclasses.replace(
            bundle, manifest=dataclasses.replace(bundle.manifest, security_version=1)
        )
    path.write_bytes(encode_archive(bundle))


@pytest.mark.parametrize("change_file", [True, False], ids=["file byte", "manifest"])
def test_tampered_signed_archive_fails_verification(
    package: Path, tmp_path: Path, signer_key: Path, change_file: bool
) -> None:
    out = tmp_path / "pkg.fsb"
    build_bundle(package, out)
    sign_bundle(out, signer_key)
    _rewrite(out, change_file)
    tampered = load_bundle(out)
    with pytest.raises(BundleError, match="signature does not verify"):
        verify_bundle_signature(tampered)
    # Re-signing does not launder it: the old signature must verify first.
    before = out.read_bytes()
    with pytest.raises(BundleError, match="signature does not verify"):
        sign_bundle(out, signer_key)
    assert out.read_bytes() == before


def test_a_signature_from_another_bundle_does_not_verify(package: Path, signer_key: Path) -> None:
    key = load_signer_key(signer_key)
    bundle = load_bundle(package)
    other = Bundle(manifest=Manifest(name="other", entry="a.py"), files={"a.py": b""})
    from farside.attestation.identity import SIGNATURE_DOMAIN

    stolen = BundleSignature(
        public_key=raw_public(key), signature=key.sign(SIGNATURE_DOMAIN + other.measurement())
    )
    with pytest.raises(BundleError, match="signature"):
        verify_bundle_signature(dataclasses.replace(bundle, signature=stolen))
    no_domain = BundleSignature(
        public_key=raw_public(key), signature=key.sign(bundle.measurement())
    )
    with pytest.raises(BundleError, match="signature"):
        verify_bundle_signature(dataclasses.replace(bundle, signature=no_domain))


def test_bundle_signature_validates_its_sizes() -> None:
    with pytest.raises(BundleError):
        BundleSignature(public_key=bytes(31), signature=bytes(64))
    with pytest.raises(BundleError):
        BundleSignature(public_key=bytes(32), signature=bytes(65))


def test_wrong_signer_keys_are_refused(tmp_path: Path) -> None:
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="not an Ed25519 key"):
        load_signer_key(ec_key)
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        load_signer_key(encrypted)
    with pytest.raises(ValueError, match="cannot read"):
        load_signer_key(tmp_path / "missing.key")


def test_sign_refuses_what_is_not_an_archive(package: Path, signer_key: Path) -> None:
    with pytest.raises(BundleError, match="not a built archive"):
        sign_bundle(package, signer_key)
    with pytest.raises(BundleError, match="not a built archive"):
        sign_bundle(package / "__init__.py", signer_key)


def test_attestation_all_is_exact() -> None:
    for name in farside.attestation.__all__:  # names load lazily: load them all first
        getattr(farside.attestation, name)
    public = {
        name
        for name, value in vars(farside.attestation).items()
        if not name.startswith("_") and not isinstance(value, type(sys))
    }
    assert public == set(farside.attestation.__all__)


# ------------------------------------------------------------------ vectors


def test_signed_bundle_v1_vector() -> None:
    expected = json.loads((VECTORS / "signed_bundle_v1.json").read_text())
    data = (VECTORS / "signed_bundle_v1.fsb").read_bytes()
    assert hashlib.sha256(data).hexdigest() == expected["archive_sha256"]
    bundle = load_bundle(VECTORS / "signed_bundle_v1.fsb")
    assert bundle.manifest == Manifest(name="bundle_v1", entry="__init__.py", debug=True)
    assert bundle.measurement().hex() == expected["measurement"]
    assert expected["measurement"] == (VECTORS / "bundle_v1.measurement").read_text().strip()
    assert bundle.measurement() == load_bundle(VECTORS / "bundle_v1").measurement()
    assert bundle.signature is not None
    assert bundle.signature.public_key.hex() == expected["public_key"]
    assert bundle.signature.signature.hex() == expected["signature"]
    key = load_signer_key(VECTORS / "signer_v1.key")
    assert raw_public(key).hex() == expected["public_key"]
    signer = verify_bundle_signature(bundle)
    assert signer.hex() == expected["signer"] == hashlib.sha256(raw_public(key)).hexdigest()


def test_signed_bundle_v1_vector_is_reproducible(tmp_path: Path) -> None:
    out = tmp_path / "signed_bundle_v1.fsb"
    build_bundle(VECTORS / "bundle_v1", out)
    sign_bundle(out, VECTORS / "signer_v1.key")
    assert out.read_bytes() == (VECTORS / "signed_bundle_v1.fsb").read_bytes()


# ------------------------------------------------------------------ the CLI


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farside", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        check=False,
    )


def assert_clean_failure(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    for needle in needles:
        assert needle in done.stderr


def test_cli_build_keygen_sign_measure(package: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg.fsb"
    built = run_cli(
        "build",
        package,
        "--out",
        out,
        "--product-id",
        "5",
        "--security-version",
        "2",
        "--no-debug",
        "--name",
        "svc",
    )
    assert built.returncode == 0, built.stderr
    manifest = Manifest(
        name="svc", entry="__init__.py", product_id=5, security_version=2, debug=False
    )
    measurement = Bundle(manifest=manifest, files=load_bundle(package).files).measurement()
    assert built.stdout.splitlines()[-1] == f"measurement: {measurement.hex()}"

    key = tmp_path / "signer.key"
    made = run_cli("keygen", "--out", key)
    assert made.returncode == 0, made.stderr
    identity = hashlib.sha256(raw_public(load_signer_key(key))).hexdigest()
    assert made.stdout.splitlines()[-1] == f"signer: {identity}"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    measured = run_cli("measure", out)
    assert measured.returncode == 0, measured.stderr
    assert measured.stdout.splitlines()[-2:] == [
        "signer: unsigned",
        f"measurement: {measurement.hex()}",
    ]

    signed = run_cli("sign", out, "--key", key)
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.splitlines()[-2:] == [
        f"measurement: {measurement.hex()}",
        f"signer: {identity}",
    ]

    measured = run_cli("measure", out, "--no-debug")
    assert measured.returncode == 0, measured.stderr
    assert measured.stdout.splitlines()[-2:] == [
        f"signer: {identity}",
        f"measurement: {measurement.hex()}",
    ]
    # Without --no-debug, measure takes the archive's own flag; a contradicting flag fails.
    assert "debug=False" in run_cli("measure", out).stdout
    debug_build = tmp_path / "debug.fsb"
    build_bundle(package, debug_build)
    assert_clean_failure(run_cli("measure", debug_build, "--no-debug"), "debug=True")


def test_cli_measure_of_a_source_says_unsigned(package: Path) -> None:
    done = run_cli("measure", package)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    measurement = load_bundle(package).measurement().hex()
    assert lines[-2:] == ["signer: unsigned", f"measurement: {measurement}"]


def test_cli_build_errors_leave_no_file(package: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert_clean_failure(run_cli("build", tmp_path / "gone", "--out", out / "x.fsb"), "gone")
    assert_clean_failure(run_cli("build", package, "--out", out / "x.zip"), ".fsb")
    (package / "enclave.toml").write_text("[enclave]\nproduct_id = true\n")
    assert_clean_failure(run_cli("build", package, "--out", out / "x.fsb"), "product_id")
    assert list(out.iterdir()) == []


def test_cli_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "signer.key"
    assert run_cli("keygen", "--out", key).returncode == 0
    before = key.read_bytes()
    assert_clean_failure(run_cli("keygen", "--out", key), "--force")
    assert key.read_bytes() == before
    assert run_cli("keygen", "--out", key, "--force").returncode == 0
    assert key.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signer.key", "signer.pub"]


def test_cli_sign_errors_leave_the_archive_alone(package: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg.fsb"
    build_bundle(package, out)
    before = out.read_bytes()
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert_clean_failure(run_cli("sign", out, "--key", ec_key), "Ed25519")
    assert_clean_failure(run_cli("sign", out, "--key", tmp_path / "none.key"), "none.key")
    generate_signer_key(tmp_path / "good.key")
    assert_clean_failure(run_cli("sign", out, "--key", tmp_path / "good.pub"), "good.pub")
    assert_clean_failure(run_cli("sign", tmp_path / "gone.fsb", "--key", tmp_path / "good.key"))
    assert out.read_bytes() == before
    corrupt = tmp_path / "corrupt.fsb"
    corrupt.write_bytes(before[:-30])
    assert_clean_failure(
        run_cli("sign", corrupt, "--key", tmp_path / "good.key"), "not a valid enclave archive"
    )
    assert corrupt.read_bytes() == before[:-30]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "corrupt.fsb",
        "ec.key",
        "good.key",
        "good.pub",
        "pkg.fsb",
        "src",
    ]


def test_cli_measure_refuses_tampered_and_corrupted_archives(
    package: Path, tmp_path: Path, signer_key: Path
) -> None:
    out = tmp_path / "pkg.fsb"
    build_bundle(package, out)
    sign_bundle(out, signer_key)
    _rewrite(out, change_file=True)
    assert_clean_failure(run_cli("measure", out), "signature does not verify")
    out.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: no manifest
    assert_clean_failure(run_cli("measure", out), "no manifest.json")
    out.write_bytes(b"not a zip")
    assert_clean_failure(run_cli("measure", out), "not a valid enclave archive")
