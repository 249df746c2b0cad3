"""Sealing: round trips, the opaque unseal error, signer upgrades, the fixed vector.

The pure layer (``seal_with``/``unseal_with``) is tested with roots and
identities made here; the recipes (``seal``/``unseal``) through a runtime
installed by hand, and in a real proxy by tests/integration/test_sealing_enclave.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings, strategies as st

import farside
import farside.trusted
from farside._errors import EnclaveError, StatusCode, UnsealError
from farside.attestation.identity import (
    SIGNER_CHAIN_LENGTH,
    EnclaveIdentity,
    SealingKeys,
    sealing_root,
)
from farside.trusted import _sealing, runtime as _runtime
from farside.trusted._sealing import UNSEAL_FAILED, seal_with, unseal_with

VECTORS = Path(__file__).resolve().parent.parent / "vectors"

ROOT = bytes(range(32))
OTHER_ROOT = bytes(range(1, 33))
SIGNER = bytes([0x51]) * 32
ENCLAVE = EnclaveIdentity(measurement=bytes([0xA1]) * 32, product_id=3, security_version=1)
SIGNED = dataclasses.replace(ENCLAVE, signer=SIGNER)
HEADER_SIZE = 5 + 1 + 1 + 4 + 12
TAG_SIZE = 16
DATA = b"the quarterly numbers"


def identity(base: EnclaveIdentity = SIGNED, **changes: Any) -> EnclaveIdentity:
    return dataclasses.replace(base, **changes)


def unseal_failure(root: bytes, who: EnclaveIdentity, blob: Any) -> UnsealError:
    """The UnsealError that opening ``blob`` raises (one call site, to compare tracebacks)."""
    with pytest.raises(UnsealError) as info:
        unseal_with(root, who, blob)
    return info.value


def assert_opaque(error: UnsealError) -> None:
    assert type(error) is UnsealError
    assert str(error) == error.message == UNSEAL_FAILED
    assert error.args == (UNSEAL_FAILED,)
    assert error.code is StatusCode.DATA_LOSS
    assert error.__cause__ is None
    assert error.__context__ is None  # nothing from inside (InvalidTag, struct.error) leaks


# ------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("policy", ["enclave", "signer"])
@pytest.mark.parametrize("data", [b"", b"x", DATA, bytes(range(256)) * 4096])
def test_round_trip(policy: str, data: bytes) -> None:
    blob = seal_with(ROOT, SIGNED, data, policy)
    assert unseal_with(ROOT, SIGNED, blob) == data
    assert len(blob) == HEADER_SIZE + len(data) + TAG_SIZE


def test_round_trip_unsigned_enclave_policy() -> None:
    assert unseal_with(ROOT, ENCLAVE, seal_with(ROOT, ENCLAVE, DATA)) == DATA


def test_default_policy_is_enclave() -> None:
    blob = seal_with(ROOT, SIGNED, DATA)
    assert blob[6] == 1
    with pytest.raises(UnsealError):
        unseal_with(ROOT, identity(measurement=bytes(32)), blob)


@pytest.mark.parametrize(("policy", "byte"), [("enclave", 1), ("signer", 2)])
def test_header_layout(policy: str, byte: int) -> None:
    nonce = bytes(range(12))
    who = identity(security_version=0x0A0B)
    blob = seal_with(ROOT, who, DATA, policy, nonce=nonce)
    assert blob[:HEADER_SIZE] == b"FSEAL" + bytes([1, byte]) + bytes([0, 0, 0x0A, 0x0B]) + nonce


def test_each_seal_uses_a_fresh_nonce() -> None:
    blobs = {seal_with(ROOT, SIGNED, DATA) for _ in range(50)}
    assert len(blobs) == 50
    assert len({blob[11:HEADER_SIZE] for blob in blobs}) == 50


def test_bytes_subclass_is_accepted_and_normalized() -> None:
    class Secret(bytes):
        pass

    blob = seal_with(ROOT, SIGNED, Secret(DATA))
    assert type(blob) is bytes
    opened = unseal_with(ROOT, SIGNED, Secret(blob))
    assert opened == DATA
    assert type(opened) is bytes


# ------------------------------------------------------------------------ argument checks


@pytest.mark.parametrize("data", ["text", bytearray(b"x"), memoryview(b"x"), None, 1, [1]])
def test_seal_refuses_non_bytes_data(data: Any) -> None:
    with pytest.raises(TypeError, match="takes bytes"):
        seal_with(ROOT, SIGNED, data)


def test_seal_str_hint_says_encode() -> None:
    with pytest.raises(TypeError, match=r"encode"):
        seal_with(ROOT, SIGNED, "text")  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["", "Enclave", "mrenclave", "signer ", "product"])
def test_seal_refuses_unknown_policy(policy: str) -> None:
    with pytest.raises(ValueError, match="'enclave' or 'signer'"):
        seal_with(ROOT, SIGNED, DATA, policy)


@pytest.mark.parametrize("policy", [None, 1, b"enclave"])
def test_seal_refuses_non_str_policy(policy: Any) -> None:
    with pytest.raises(TypeError, match="'enclave' or 'signer'"):
        seal_with(ROOT, SIGNED, DATA, policy)


def test_signer_policy_needs_a_signed_enclave() -> None:
    with pytest.raises(ValueError, match="enclave must be signed"):
        seal_with(ROOT, ENCLAVE, DATA, "signer")


@pytest.mark.parametrize("nonce", [b"", bytes(11), bytes(13), bytearray(12), "x" * 12])
def test_seal_refuses_a_bad_nonce(nonce: Any) -> None:
    with pytest.raises(ValueError, match="nonce must be 12 bytes"):
        seal_with(ROOT, SIGNED, DATA, nonce=nonce)


@pytest.mark.parametrize(
    ("root", "error"),
    [
        (ROOT.hex(), TypeError),
        (bytearray(ROOT), TypeError),
        (ROOT[:31], ValueError),
        (b"", ValueError),
    ],
)
def test_root_is_checked(root: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="sealing root"):
        seal_with(root, SIGNED, DATA)
    with pytest.raises(error, match="sealing root"):
        unseal_with(root, SIGNED, seal_with(ROOT, SIGNED, DATA))


def test_identity_is_checked() -> None:
    with pytest.raises(TypeError, match="EnclaveIdentity"):
        seal_with(ROOT, {"measurement": bytes(32)}, DATA)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="EnclaveIdentity"):
        unseal_with(ROOT, None, b"")  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["product_id", "security_version"])
@pytest.mark.parametrize("value", [-1, 2**32])
def test_identity_numbers_must_fit_u32(field: str, value: int) -> None:
    who = identity(SIGNED, **{field: value})
    with pytest.raises(ValueError, match=field):
        seal_with(ROOT, who, DATA, "signer")
    with pytest.raises(ValueError, match=field):
        unseal_with(ROOT, who, seal_with(ROOT, SIGNED, DATA))


def test_oversized_data_is_refused_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sealing, "_MAX_PLAINTEXT", 8)
    assert unseal_with(ROOT, SIGNED, seal_with(ROOT, SIGNED, bytes(8))) == bytes(8)
    with pytest.raises(ValueError, match="at most 8 bytes"):
        seal_with(ROOT, SIGNED, bytes(9))


# ------------------------------------------------------------------------ the opaque error


def _flip(blob: bytes, index: int, mask: int = 0x01) -> bytes:
    return blob[:index] + bytes([blob[index] ^ mask]) + blob[index + 1 :]


def _with_header(blob: bytes, **fields: Any) -> bytes:
    """``blob`` with header fields replaced (no re-encryption: the tag no longer matches)."""
    magic, version, policy, svn, nonce = struct.unpack(">5sBBI12s", blob[:HEADER_SIZE])
    values = {"magic": magic, "version": version, "policy": policy, "svn": svn, "nonce": nonce}
    values.update(fields)
    header = struct.pack(
        ">5sBBI12s",
        values["magic"],
        values["version"],
        values["policy"],
        values["svn"],
        values["nonce"],
    )
    return header + blob[HEADER_SIZE:]


def _spliced() -> bytes:
    first = seal_with(ROOT, SIGNED, DATA)
    second = seal_with(ROOT, SIGNED, DATA)
    return first[:HEADER_SIZE] + second[HEADER_SIZE:]


_ENCLAVE_BLOB = seal_with(ROOT, SIGNED, DATA, "enclave")
_SIGNER_BLOB = seal_with(ROOT, identity(security_version=2), DATA, "signer")
_V2 = identity(security_version=2)

# (label, root, identity of the unsealer, blob): every way an unseal can fail.
FAILURES: list[tuple[str, bytes, EnclaveIdentity, Any]] = [
    ("other measurement", ROOT, identity(measurement=bytes(32)), _ENCLAVE_BLOB),
    ("other platform, enclave", OTHER_ROOT, SIGNED, _ENCLAVE_BLOB),
    ("other platform, signer", OTHER_ROOT, _V2, _SIGNER_BLOB),
    ("lower security version", ROOT, identity(security_version=1), _SIGNER_BLOB),
    ("other product", ROOT, identity(_V2, product_id=4), _SIGNER_BLOB),
    ("other signer", ROOT, identity(_V2, signer=bytes([0x52]) * 32), _SIGNER_BLOB),
    ("unsigned unsealer", ROOT, identity(_V2, signer=bytes(32)), _SIGNER_BLOB),
    ("production opens debug's", ROOT, identity(_V2, debug=False), _SIGNER_BLOB),
    ("wrong magic", ROOT, SIGNED, _with_header(_ENCLAVE_BLOB, magic=b"FSEAM")),
    ("version 0", ROOT, SIGNED, _with_header(_ENCLAVE_BLOB, version=0)),
    ("version 2", ROOT, SIGNED, _with_header(_ENCLAVE_BLOB, version=2)),
    ("policy 0", ROOT, SIGNED, _with_header(_ENCLAVE_BLOB, policy=0)),
    ("policy 3", ROOT, SIGNED, _with_header(_ENCLAVE_BLOB, policy=3)),
    ("enclave blob relabelled signer", ROOT, SIGNED, _with_header(_ENCLAVE_BLOB, policy=2)),
    ("signer blob relabelled enclave", ROOT, _V2, _with_header(_SIGNER_BLOB, policy=1)),
    ("header svn lowered", ROOT, _V2, _with_header(_SIGNER_BLOB, svn=1)),
    ("header svn raised", ROOT, identity(security_version=9), _with_header(_SIGNER_BLOB, svn=3)),
    ("nonce changed", ROOT, SIGNED, _with_header(_ENCLAVE_BLOB, nonce=bytes(12))),
    ("ciphertext flipped", ROOT, SIGNED, _flip(_ENCLAVE_BLOB, HEADER_SIZE)),
    ("tag flipped", ROOT, SIGNED, _flip(_ENCLAVE_BLOB, len(_ENCLAVE_BLOB) - 1, 0x80)),
    ("spliced", ROOT, SIGNED, _spliced()),
    ("one byte appended", ROOT, SIGNED, _ENCLAVE_BLOB + b"\0"),
    ("tag dropped", ROOT, SIGNED, _ENCLAVE_BLOB[:-TAG_SIZE]),
    ("header only", ROOT, SIGNED, _ENCLAVE_BLOB[:HEADER_SIZE]),
    ("empty", ROOT, SIGNED, b""),
    ("str", ROOT, SIGNED, _ENCLAVE_BLOB.hex()),
    ("bytearray", ROOT, SIGNED, bytearray(_ENCLAVE_BLOB)),
    ("memoryview", ROOT, SIGNED, memoryview(_ENCLAVE_BLOB)),
    ("None", ROOT, SIGNED, None),
    ("int", ROOT, SIGNED, 7),
    ("list", ROOT, SIGNED, list(_ENCLAVE_BLOB)),
]


def test_the_failure_table_is_sound() -> None:
    # Each case fails for its stated reason only: its unmodified twin opens.
    assert unseal_with(ROOT, SIGNED, _ENCLAVE_BLOB) == DATA
    assert unseal_with(ROOT, _V2, _SIGNER_BLOB) == DATA
    assert len({label for label, *_ in FAILURES}) == len(FAILURES)


@pytest.mark.parametrize(
    ("root", "who", "blob"), [case[1:] for case in FAILURES], ids=[case[0] for case in FAILURES]
)
def test_every_failure_is_the_same_opaque_error(
    root: bytes, who: EnclaveIdentity, blob: Any
) -> None:
    assert_opaque(unseal_failure(root, who, blob))


def test_failures_are_indistinguishable_even_by_traceback() -> None:
    shapes = set()
    for _label, root, who, blob in FAILURES:
        error = unseal_failure(root, who, blob)
        frames = traceback.extract_tb(error.__traceback__)
        shapes.add((type(error), str(error), error.code, tuple((f.name, f.lineno) for f in frames)))
    assert len(shapes) == 1


@pytest.mark.parametrize("policy", ["enclave", "signer"])
def test_every_single_bit_flip_fails(policy: str) -> None:
    blob = seal_with(ROOT, SIGNED, b"12345", policy)
    for index in range(len(blob)):
        for bit in range(8):
            assert_opaque(unseal_failure(ROOT, SIGNED, _flip(blob, index, 1 << bit)))


@pytest.mark.parametrize("policy", ["enclave", "signer"])
def test_every_truncation_fails(policy: str) -> None:
    blob = seal_with(ROOT, SIGNED, b"12345", policy)
    for length in range(len(blob)):
        assert_opaque(unseal_failure(ROOT, SIGNED, blob[:length]))


def test_unseal_error_is_an_enclave_error_with_data_loss() -> None:
    assert issubclass(UnsealError, EnclaveError)
    assert UnsealError.default_code is StatusCode.DATA_LOSS
    assert farside.trusted.UnsealError is UnsealError
    assert "UnsealError" in farside._errors.__all__


# ------------------------------------------------------------------------ policies and upgrades


def test_signer_upgrade_opens_what_the_old_version_sealed() -> None:
    v1 = identity(security_version=1)
    v2 = identity(security_version=2, measurement=bytes([0xB2]) * 32)  # new code, same line
    blob = seal_with(ROOT, v1, DATA, "signer")
    assert unseal_with(ROOT, v2, blob) == DATA
    assert unseal_with(ROOT, identity(security_version=SIGNER_CHAIN_LENGTH - 1), blob) == DATA


def test_signer_policy_is_bounded_by_the_key_chain() -> None:
    too_new = identity(security_version=SIGNER_CHAIN_LENGTH)
    with pytest.raises(ValueError, match="security versions up to"):
        seal_with(ROOT, too_new, DATA, "signer")
    # The enclave policy has no such bound.
    assert unseal_with(ROOT, too_new, seal_with(ROOT, too_new, DATA)) == DATA
    # An enclave beyond the chain cannot open what an older version sealed for the signer.
    old = seal_with(ROOT, identity(security_version=1), DATA, "signer")
    assert_opaque(unseal_failure(ROOT, too_new, old))


def test_sealing_keys_walk_down_never_up() -> None:
    v5 = SealingKeys.derive(ROOT, identity(security_version=5))
    v3 = SealingKeys.derive(ROOT, identity(security_version=3))
    assert v5.signer_key(3) == v3.signer_key(3) is not None
    assert v3.signer_key(5) is None  # a newer version's key is out of reach
    assert v5.enclave_key == v3.enclave_key  # same measurement in this helper


def test_signer_old_version_cannot_open_what_the_new_one_sealed() -> None:
    v1 = identity(security_version=1)
    v2 = identity(security_version=2, measurement=bytes([0xB2]) * 32)
    assert_opaque(unseal_failure(ROOT, v1, seal_with(ROOT, v2, DATA, "signer")))


def test_signer_other_product_or_signer_fails() -> None:
    blob = seal_with(ROOT, SIGNED, DATA, "signer")
    assert_opaque(unseal_failure(ROOT, identity(product_id=4), blob))
    assert_opaque(unseal_failure(ROOT, identity(signer=bytes([0x52]) * 32), blob))


def test_signer_debug_and_production_do_not_share_keys() -> None:
    debug, production = identity(debug=True), identity(debug=False)
    assert_opaque(unseal_failure(ROOT, production, seal_with(ROOT, debug, DATA, "signer")))
    assert_opaque(unseal_failure(ROOT, debug, seal_with(ROOT, production, DATA, "signer")))


@pytest.mark.parametrize("index", [0, 15, 31])
def test_enclave_policy_fails_after_any_measurement_change(index: int) -> None:
    blob = seal_with(ROOT, SIGNED, DATA, "enclave")
    changed = bytearray(SIGNED.measurement)
    changed[index] ^= 0x01
    assert_opaque(unseal_failure(ROOT, identity(measurement=bytes(changed)), blob))
    # ... even for an upgrade of the same signer and product.
    upgrade = identity(measurement=bytes(changed), security_version=2)
    assert_opaque(unseal_failure(ROOT, upgrade, blob))


def test_enclave_policy_ignores_signer_fields_beyond_the_measurement() -> None:
    # The measurement already covers the manifest; the signer is not part of the key.
    blob = seal_with(ROOT, ENCLAVE, DATA, "enclave")
    assert unseal_with(ROOT, identity(ENCLAVE, signer=SIGNER), blob) == DATA


def test_platform_roots_from_keys_differ() -> None:
    one, two = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    blob = seal_with(sealing_root(one), SIGNED, DATA)
    assert unseal_with(sealing_root(one), SIGNED, blob) == DATA
    assert_opaque(unseal_failure(sealing_root(two), SIGNED, blob))


# ------------------------------------------------------------------------ fuzzing

_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(blob: bytes) -> None:
    assert_opaque(unseal_failure(ROOT, SIGNED, blob))


@_FUZZ
@given(
    policy=st.sampled_from([0, 1, 2, 3, 255]),
    svn=st.integers(0, 2**32 - 1),
    rest=st.binary(max_size=100),
)
def test_fuzz_well_formed_headers(policy: int, svn: int, rest: bytes) -> None:
    blob = b"FSEAL\x01" + bytes([policy]) + struct.pack(">I", svn) + rest
    assert_opaque(unseal_failure(ROOT, identity(security_version=2**32 - 1), blob))


@_FUZZ
@given(st.data())
def test_fuzz_mutated_blobs(data: st.DataObject) -> None:
    blob = bytearray(_SIGNER_BLOB)
    # Distinct positions: two changes at one position could cancel out.
    for index in data.draw(st.sets(st.integers(0, len(blob) - 1), min_size=1, max_size=4)):
        blob[index] ^= data.draw(st.integers(1, 255))
    assert_opaque(unseal_failure(ROOT, _V2, bytes(blob)))


@_FUZZ
@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers()), st.floats()))
def test_fuzz_non_bytes(blob: Any) -> None:
    assert_opaque(unseal_failure(ROOT, SIGNED, blob))


# ------------------------------------------------------------------------ the recipes


class FakeRuntime:
    """What the recipes use of ``EnclaveRuntime``: its identity and its sealing keys."""

    def __init__(self, identity: EnclaveIdentity | None, root: bytes | None) -> None:
        self.identity = identity
        self._root = root

    @property
    def sealing_keys(self) -> SealingKeys:
        if self._root is None or self.identity is None:
            raise RuntimeError("this proxy has no platform identity, so it cannot seal")
        return SealingKeys.derive(self._root, self.identity)


@pytest.fixture
def install_runtime(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make a runtime the current one, as the proxy does once the bundle is loaded."""

    def install(who: EnclaveIdentity | None, key: Ed25519PrivateKey | None) -> None:
        root = None if key is None else sealing_root(key)
        monkeypatch.setattr(_runtime, "_current", FakeRuntime(who, root))

    return install


def test_recipes_round_trip_in_a_runtime(install_runtime: Callable[..., Any]) -> None:
    key = Ed25519PrivateKey.generate()
    install_runtime(SIGNED, key)
    for policy in ("enclave", "signer"):
        blob = farside.trusted.seal(DATA, policy)
        assert farside.trusted.unseal(blob) == DATA
        assert unseal_with(sealing_root(key), SIGNED, blob) == DATA
    assert farside.trusted.seal(DATA)[6] == 1  # default policy: enclave


def test_recipes_unseal_failure_is_opaque(install_runtime: Callable[..., Any]) -> None:
    install_runtime(SIGNED, Ed25519PrivateKey.generate())
    with pytest.raises(UnsealError) as info:
        farside.trusted.unseal(_ENCLAVE_BLOB)  # sealed under another root
    assert_opaque(info.value)


def test_recipes_outside_an_enclave_raise_runtime_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Outside an enclave there is no runtime (in-process proxies of other tests install one).
    monkeypatch.setattr(_runtime, "_current", None)
    with pytest.raises(RuntimeError, match=r"seal\(\) works only inside an enclave"):
        farside.trusted.seal(DATA)
    with pytest.raises(RuntimeError, match=r"unseal\(\) works only inside an enclave"):
        farside.trusted.unseal(_ENCLAVE_BLOB)


def test_recipes_without_a_platform_key_raise_runtime_error(
    install_runtime: Callable[..., Any],
) -> None:
    install_runtime(SIGNED, None)
    with pytest.raises(RuntimeError, match="no platform key"):
        farside.trusted.seal(DATA)
    with pytest.raises(RuntimeError, match="no platform key"):
        farside.trusted.unseal(_ENCLAVE_BLOB)


def test_recipes_before_the_bundle_is_loaded_raise_runtime_error(
    install_runtime: Callable[..., Any],
) -> None:
    install_runtime(None, Ed25519PrivateKey.generate())
    with pytest.raises(RuntimeError, match="bundle is loaded"):
        farside.trusted.seal(DATA)


def test_recipes_check_arguments_before_anything_else() -> None:
    with pytest.raises(TypeError, match="takes bytes"):
        farside.trusted.seal("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'enclave' or 'signer'"):
        farside.trusted.seal(DATA, "nobody")


def test_recipe_signer_policy_on_unsigned_enclave(install_runtime: Callable[..., Any]) -> None:
    install_runtime(ENCLAVE, Ed25519PrivateKey.generate())
    with pytest.raises(ValueError, match="signed"):
        farside.trusted.seal(DATA, "signer")


# ------------------------------------------------------------------------ the fixed vector


def _vectors() -> Iterator[dict[str, Any]]:
    document = json.loads((VECTORS / "sealed_v1.json").read_text())
    yield from document["vectors"]


def _vector_identity(vector: dict[str, Any]) -> EnclaveIdentity:
    return EnclaveIdentity(
        measurement=bytes.fromhex(vector["measurement"]),
        signer=bytes.fromhex(vector["signer"]),
        product_id=vector["product_id"],
        security_version=vector["security_version"],
        debug=vector["debug"],
    )


def spec_seal(vector: dict[str, Any]) -> tuple[bytes, bytes]:
    """The key and blob per the format in _sealing's docstring, written out independently."""
    policy = {"enclave": 1, "signer": 2}[vector["policy"]]
    svn = vector["security_version"]
    if policy == 1:
        info = b"\x01" + bytes.fromhex(vector["measurement"])
    else:
        info = (
            b"\x02"
            + bytes.fromhex(vector["signer"])
            + vector["product_id"].to_bytes(4, "big")
            + (b"\x01" if vector["debug"] else b"\x00")
        )

    def hkdf(ikm: bytes, info: bytes) -> bytes:
        return HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"farside.seal.v1", info=info
        ).derive(ikm)

    key = hkdf(bytes.fromhex(vector["root"]), info)
    if policy == 2:  # walk the chain down from version 4095 to the sealer's, then expand
        for _ in range(4095 - svn):
            key = hashlib.sha256(b"farside.seal.chain.v1\0" + key).digest()
        key = hkdf(key, b"farside.seal.signer-key.v1")
    nonce = bytes.fromhex(vector["nonce"])
    header = b"FSEAL" + bytes([1, policy]) + svn.to_bytes(4, "big") + nonce
    body = AESGCM(key).encrypt(nonce, bytes.fromhex(vector["plaintext"]), header)
    return key, header + body


@pytest.mark.parametrize("vector", list(_vectors()), ids=lambda v: v["policy"])
def test_sealed_v1_vector(vector: dict[str, Any]) -> None:
    root, who = bytes.fromhex(vector["root"]), _vector_identity(vector)
    plaintext, blob = bytes.fromhex(vector["plaintext"]), bytes.fromhex(vector["blob"])
    nonce = bytes.fromhex(vector["nonce"])
    assert seal_with(root, who, plaintext, vector["policy"], nonce=nonce) == blob
    assert unseal_with(root, who, blob) == plaintext
    assert spec_seal(vector) == (bytes.fromhex(vector["key"]), blob)


def test_sealed_v1_signer_vector_opens_for_an_upgrade_only() -> None:
    (vector,) = [v for v in _vectors() if v["policy"] == "signer"]
    root, who = bytes.fromhex(vector["root"]), _vector_identity(vector)
    blob, plaintext = bytes.fromhex(vector["blob"]), bytes.fromhex(vector["plaintext"])
    upgrade = dataclasses.replace(
        who, measurement=bytes(32), security_version=who.security_version + 1
    )
    assert unseal_with(root, upgrade, blob) == plaintext
    older = dataclasses.replace(who, security_version=who.security_version - 1)
    assert_opaque(unseal_failure(root, older, blob))
