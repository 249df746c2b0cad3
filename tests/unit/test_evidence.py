"""Sim-mode evidence (``farside.attestation.evidence``), pure: no proxies, no sockets.

``make_evidence`` is what a proxy signs; ``verify_evidence`` is what the client
checks before it sends anything. Every refusal is an ``AttestationError`` whose
``check`` names the first check that failed. The vector ``tests/vectors/evidence_v1.json``
pins the bytes (see tests/vectors/README.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import farside
from farside._proto.v1 import attestation_pb2 as pb
from farside.attestation.evidence import (
    EVIDENCE_FORMAT,
    AttestationPolicy,
    channel_binding,
    make_evidence,
    public_key_bytes,
    report_data,
    verify_evidence,
)
from farside.attestation.identity import UNSIGNED, EnclaveIdentity
from farside.attestation.platform import init_platform

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def counting(start: int, length: int = 32) -> bytes:
    return bytes(range(start, start + length))


PLATFORM = Ed25519PrivateKey.from_private_bytes(counting(0x80))
PLATFORM_PUB = public_key_bytes(PLATFORM)
OTHER_PLATFORM = Ed25519PrivateKey.from_private_bytes(counting(0x90))
MEASUREMENT = counting(0x20)
SIGNER = counting(0x40)
IDENTITY = EnclaveIdentity(
    measurement=MEASUREMENT, signer=SIGNER, product_id=7, security_version=3, debug=False
)
NONCE = counting(0x60)
CLIENT_NONCE = counting(0xC0)
PROXY_NONCE = counting(0xE0)
TLS_KEY = b"DER SubjectPublicKeyInfo of the proxy's TLS key"
BINDING = channel_binding(
    tls_public_key=TLS_KEY, client_nonce=CLIENT_NONCE, proxy_nonce=PROXY_NONCE
)


def strict_policy(**overrides: Any) -> AttestationPolicy:
    """A policy that names every claim of ``IDENTITY`` (and accepts it)."""
    settings: dict[str, Any] = {
        "measurements": (MEASUREMENT,),
        "signers": (SIGNER,),
        "product_id": 7,
        "min_security_version": 3,
        "allow_debug": False,
        "platform_keys": (PLATFORM_PUB,),
    }
    settings.update(overrides)
    return AttestationPolicy(**settings)


def evidence(
    identity: EnclaveIdentity = IDENTITY,
    *,
    key: Ed25519PrivateKey = PLATFORM,
    nonce: bytes = NONCE,
    binding: bytes = BINDING,
) -> pb.Evidence:
    return make_evidence(key, identity, report_data=report_data(nonce, binding))


def refused(
    given: pb.Evidence | None,
    policy: AttestationPolicy | None = None,
    *,
    nonce: bytes = NONCE,
    binding: bytes = BINDING,
) -> farside.AttestationError:
    """Verify ``given`` and return the ``AttestationError`` it must raise."""
    with pytest.raises(farside.AttestationError) as caught:
        verify_evidence(given, policy or strict_policy(), nonce=nonce, binding=binding)  # type: ignore[arg-type]
    error = caught.value
    assert error.check, "an AttestationError must name its check"
    assert f"({error.check})" in str(error)
    return error


def resigned(body: pb.EvidenceBody, key: Ed25519PrivateKey = PLATFORM) -> pb.Evidence:
    """Evidence whose (possibly malformed) body carries a good signature."""
    data = body.SerializeToString()
    return pb.Evidence(
        format=EVIDENCE_FORMAT, body=data, signature=key.sign(data), platform_key=PLATFORM_PUB
    )


def body_of(given: pb.Evidence) -> pb.EvidenceBody:
    return pb.EvidenceBody.FromString(given.body)


# ----------------------------------------------------------------------- round trip


def test_round_trip_returns_the_enclaves_identity() -> None:
    identity = verify_evidence(evidence(), strict_policy(), nonce=NONCE, binding=BINDING)
    assert identity == IDENTITY
    assert identity.signed


def test_round_trip_through_the_wire_encoding() -> None:
    wire = pb.Evidence.FromString(evidence().SerializeToString())
    assert verify_evidence(wire, strict_policy(), nonce=NONCE, binding=BINDING) == IDENTITY


def test_an_empty_policy_accepts_any_claims_on_a_trusted_platform() -> None:
    debug_unsigned = EnclaveIdentity(
        measurement=bytes(32), signer=UNSIGNED, product_id=0, security_version=0, debug=True
    )
    policy = AttestationPolicy(platform_keys=(PLATFORM_PUB,), allow_debug=True)
    got = verify_evidence(evidence(debug_unsigned), policy, nonce=NONCE, binding=BINDING)
    assert got == debug_unsigned
    assert not got.signed


def test_make_evidence_fields() -> None:
    made = make_evidence(
        PLATFORM, IDENTITY, report_data=report_data(NONCE, BINDING), sandbox=("seccomp",)
    )
    assert made.format == EVIDENCE_FORMAT == "farside-sim-v1"
    assert made.platform_key == PLATFORM_PUB
    PLATFORM.public_key().verify(made.signature, made.body)
    body = body_of(made)
    assert body.version == 1
    assert body.measurement == MEASUREMENT
    assert body.signer == SIGNER
    assert (body.product_id, body.security_version, body.debug) == (7, 3, False)
    assert body.report_data == report_data(NONCE, BINDING)
    assert list(body.sandbox) == ["seccomp"]


def test_make_evidence_is_deterministic() -> None:
    assert evidence().SerializeToString() == evidence().SerializeToString()


def test_attestation_error_is_a_load_error() -> None:
    error = refused(evidence(), strict_policy(platform_keys=()))
    assert isinstance(error, farside.EnclaveLoadError)


# ----------------------------------------------------------------------- platform signature


def test_unknown_platform_key() -> None:
    error = refused(evidence(key=OTHER_PLATFORM))
    assert error.check == "platform signature"
    assert "platform_keys" in str(error)  # tells the user how to trust a machine
    # ... in Python terms (hint), and which setting it is, for the CLI's own words
    assert error.hint == "add that machine's platform.pub to AttestationPolicy(platform_keys=...)"
    assert error.setting == "policy.platform_keys"
    assert "platform_keys" not in error.message


def test_no_trusted_platform_at_all() -> None:
    assert refused(evidence(), strict_policy(platform_keys=())).check == "platform signature"


def flipped(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize("where", ["first byte", "last byte"])
def test_corrupted_signature(where: str) -> None:
    given = evidence()
    index = 0 if where == "first byte" else len(given.signature) - 1
    given.signature = flipped(given.signature, index)
    assert refused(given).check == "platform signature"


@pytest.mark.parametrize("length", [0, 63])
def test_truncated_signature(length: int) -> None:
    given = evidence()
    given.signature = given.signature[:length]
    assert refused(given).check == "platform signature"


def test_corrupted_body() -> None:
    given = evidence()
    # Change one byte of the report data inside the signed body: only the signature notices.
    index = given.body.index(report_data(NONCE, BINDING))
    given.body = flipped(given.body, index)
    assert refused(given).check == "platform signature"


def test_body_with_better_claims_keeps_the_old_signature() -> None:
    """A relay that rewrites the claims (here: debug off, higher version) is caught."""
    given = evidence(dataclasses.replace(IDENTITY, debug=True, security_version=0))
    better = body_of(given)
    better.debug = False
    better.security_version = 3
    given.body = better.SerializeToString()
    assert refused(given).check == "platform signature"


def test_another_evidences_signature() -> None:
    given = evidence()
    given.signature = evidence(nonce=counting(0x61)).signature
    assert refused(given).check == "platform signature"


def test_trusted_key_named_but_another_trusted_key_signed() -> None:
    """Both platforms are trusted; the evidence names one and is signed by the other."""
    given = evidence(key=OTHER_PLATFORM)
    given.platform_key = PLATFORM_PUB
    policy = strict_policy(platform_keys=(PLATFORM_PUB, public_key_bytes(OTHER_PLATFORM)))
    assert refused(given, policy).check == "platform signature"


def test_signature_is_checked_before_the_claims() -> None:
    """Untrusted evidence never gets as far as the nonce or claim checks."""
    wrong_everything = EnclaveIdentity(measurement=bytes(32), debug=True)
    given = evidence(wrong_everything, key=OTHER_PLATFORM, nonce=b"old")
    assert refused(given).check == "platform signature"


def test_every_single_bit_flip_is_refused() -> None:
    """No bit of the serialized evidence can change without the client noticing."""
    wire = evidence().SerializeToString()
    for index in range(len(wire)):
        for bit in (0x01, 0x80):
            damaged = wire[:index] + bytes([wire[index] ^ bit]) + wire[index + 1 :]
            try:
                parsed = pb.Evidence.FromString(damaged)
            except Exception:  # DecodeError: the transport would refuse it
                continue
            with pytest.raises(farside.AttestationError):
                verify_evidence(parsed, strict_policy(), nonce=NONCE, binding=BINDING)


# ----------------------------------------------------------------------- malformed evidence


@pytest.mark.parametrize("given", [None, pb.Evidence()], ids=["none", "empty message"])
def test_missing_evidence(given: pb.Evidence | None) -> None:
    assert refused(given).check == "evidence"


def test_evidence_without_a_body() -> None:
    given = evidence()
    given.body = b""
    assert refused(given).check == "evidence"


@pytest.mark.parametrize("name", ["", "farside-sim-v2", "sgx-dcap-v3", "FARSIDE-SIM-V1"])
def test_unknown_format(name: str) -> None:
    given = evidence()
    given.format = name
    error = refused(given)
    assert error.check == "evidence"
    if name:
        assert repr(name) in str(error)


def test_signed_but_malformed_bodies() -> None:
    """A trusted platform's signature over a body that is not version 1 evidence."""
    good = body_of(evidence())
    for change in (
        {"version": 2},
        {"version": 0},
        {"measurement": MEASUREMENT[:31]},
        {"signer": b""},
    ):
        body = pb.EvidenceBody()
        body.CopyFrom(good)
        for name, value in change.items():
            setattr(body, name, value)
        assert refused(resigned(body)).check == "evidence", change


def test_signed_body_that_does_not_parse() -> None:
    data = b"\xff\xff\xff\xff not a protobuf"
    given = pb.Evidence(
        format=EVIDENCE_FORMAT, body=data, signature=PLATFORM.sign(data), platform_key=PLATFORM_PUB
    )
    assert refused(given).check in ("evidence", "platform signature")


# ----------------------------------------------------------------------- session binding


def test_another_nonce() -> None:
    error = refused(evidence(nonce=counting(0x61)))
    assert error.check == "nonce"


@pytest.mark.parametrize("nonce", [b"", NONCE[:31], NONCE + b"\0"], ids=["empty", "short", "long"])
def test_nonce_must_match_exactly(nonce: bytes) -> None:
    assert refused(evidence(), nonce=nonce).check == "nonce"


@pytest.mark.parametrize("length", [0, 32, 63, 65])
def test_report_data_of_the_wrong_length(length: int) -> None:
    body = body_of(evidence())
    body.report_data = (report_data(NONCE, BINDING) * 2)[:length]
    assert refused(resigned(body)).check == "nonce"


@pytest.mark.parametrize("part", ["tls_public_key", "client_nonce", "proxy_nonce"])
def test_another_channel_binding(part: str) -> None:
    parts = {"tls_public_key": TLS_KEY, "client_nonce": CLIENT_NONCE, "proxy_nonce": PROXY_NONCE}
    parts[part] = b"another session's " + part.encode()
    other = channel_binding(**parts)
    assert other != BINDING
    assert refused(evidence(binding=other)).check == "channel binding"


def test_binding_is_checked_before_the_claims() -> None:
    """A replayed evidence of a debug enclave says "nonce", not "debug"."""
    given = evidence(dataclasses.replace(IDENTITY, debug=True), nonce=counting(0x61))
    assert refused(given).check == "nonce"
    given = evidence(dataclasses.replace(IDENTITY, debug=True), binding=bytes(32))
    assert refused(given).check == "channel binding"


# ----------------------------------------------------------------------- claims


def test_measurement_not_in_policy() -> None:
    error = refused(evidence(), strict_policy(measurements=(counting(0x21),)))
    assert error.check == "measurement"
    assert MEASUREMENT.hex() in str(error)


def test_measurement_among_several() -> None:
    policy = strict_policy(measurements=(counting(0x21).hex(), MEASUREMENT.hex()))
    assert verify_evidence(evidence(), policy, nonce=NONCE, binding=BINDING) == IDENTITY


def test_signer_not_in_policy() -> None:
    error = refused(evidence(), strict_policy(signers=(counting(0x41),)))
    assert error.check == "signer"
    assert SIGNER.hex() in str(error)


def test_unsigned_enclave_under_a_signer_policy() -> None:
    unsigned = dataclasses.replace(IDENTITY, signer=UNSIGNED)
    assert refused(evidence(unsigned)).check == "signer"


@pytest.mark.parametrize("wanted", [0, 6, 8])
def test_product_id(wanted: int) -> None:
    error = refused(evidence(), strict_policy(product_id=wanted))
    assert error.check == "product id"


def test_any_product_id_when_none_is_required() -> None:
    policy = strict_policy(product_id=None)
    assert verify_evidence(evidence(), policy, nonce=NONCE, binding=BINDING) == IDENTITY


def test_security_version_below_min() -> None:
    error = refused(evidence(), strict_policy(min_security_version=4))
    assert error.check == "security version"
    assert "3" in str(error)
    assert "4" in str(error)


@pytest.mark.parametrize("minimum", [0, 2, 3])
def test_security_version_at_or_above_min(minimum: int) -> None:
    policy = strict_policy(min_security_version=minimum)
    assert verify_evidence(evidence(), policy, nonce=NONCE, binding=BINDING) == IDENTITY


def test_debug_when_not_allowed() -> None:
    debug = dataclasses.replace(IDENTITY, debug=True)
    assert refused(evidence(debug)).check == "debug"
    allowed = strict_policy(allow_debug=True)
    assert verify_evidence(evidence(debug), allowed, nonce=NONCE, binding=BINDING) == debug


def test_claims_are_checked_in_the_documented_order() -> None:
    """Measurement, signer, product id, security version, debug: the first failure is named."""
    worst = EnclaveIdentity(
        measurement=counting(0x21), signer=UNSIGNED, product_id=1, security_version=0, debug=True
    )
    expected = ["measurement", "signer", "product id", "security version", "debug"]
    fixes: list[dict[str, Any]] = [
        {"measurement": MEASUREMENT},
        {"signer": SIGNER},
        {"product_id": 7},
        {"security_version": 3},
        {"debug": False},
    ]
    identity = worst
    for check, fix in zip(expected, fixes, strict=True):
        assert refused(evidence(identity)).check == check
        identity = dataclasses.replace(identity, **fix)
    assert verify_evidence(evidence(identity), strict_policy(), nonce=NONCE, binding=BINDING)


# ----------------------------------------------------------------------- trust_any_platform


def test_trust_any_platform_accepts_an_unknown_key_loudly(caplog: pytest.LogCaptureFixture) -> None:
    policy = strict_policy(platform_keys=(), trust_any_platform=True)
    with caplog.at_level(logging.WARNING, logger="farside"):
        got = verify_evidence(evidence(key=OTHER_PLATFORM), policy, nonce=NONCE, binding=BINDING)
        verify_evidence(evidence(key=OTHER_PLATFORM), policy, nonce=NONCE, binding=BINDING)
    assert got == IDENTITY
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "farside"]
    assert len(warnings) == 2  # at every load, not once per process
    assert "trust_any_platform" in warnings[0].getMessage()


def test_trust_any_platform_still_checks_everything_else() -> None:
    policy = strict_policy(platform_keys=(), trust_any_platform=True)
    damaged = evidence(key=OTHER_PLATFORM)
    damaged.signature = flipped(damaged.signature, 5)
    assert refused(damaged, policy).check == "platform signature"
    lying = evidence(key=OTHER_PLATFORM)
    lying.platform_key = PLATFORM_PUB  # names a key that did not sign
    assert refused(lying, policy).check == "platform signature"
    keyless = evidence()
    keyless.platform_key = b""
    assert refused(keyless, policy).check == "platform signature"
    assert refused(evidence(key=OTHER_PLATFORM), policy, nonce=b"x").check == "nonce"
    debug = evidence(dataclasses.replace(IDENTITY, debug=True), key=OTHER_PLATFORM)
    assert refused(debug, policy).check == "debug"


def test_trusted_platform_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="farside"):
        verify_evidence(evidence(), strict_policy(), nonce=NONCE, binding=BINDING)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# ----------------------------------------------------------------------- AttestationPolicy


def test_policy_defaults() -> None:
    policy = AttestationPolicy()
    assert policy.measurements == ()
    assert policy.signers == ()
    assert policy.product_id is None
    assert policy.min_security_version == 0
    assert policy.allow_debug is False
    assert policy.platform_keys == ()
    assert policy.trust_any_platform is False


def test_policy_values_as_hex_or_bytes() -> None:
    as_bytes = AttestationPolicy(measurements=(MEASUREMENT,), signers=(SIGNER,))
    as_hex = AttestationPolicy(measurements=(MEASUREMENT.hex(),), signers=(SIGNER.hex(),))
    as_upper = AttestationPolicy(
        measurements=(MEASUREMENT.hex().upper(),), signers=(SIGNER.hex().upper(),)
    )
    as_bytearray = AttestationPolicy(measurements=(bytearray(MEASUREMENT),))
    for policy in (as_bytes, as_hex, as_upper):
        assert policy._measurements == {MEASUREMENT}
        assert policy._signers == {SIGNER}
    assert as_bytearray._measurements == {MEASUREMENT}
    assert AttestationPolicy(measurements=[MEASUREMENT])._measurements == {MEASUREMENT}


def settings(field: str, value: object) -> dict[str, Any]:
    return {field: value}


@pytest.mark.parametrize("field", ["measurements", "signers"])
@pytest.mark.parametrize(
    "value",
    [
        MEASUREMENT[:31],
        MEASUREMENT + b"\0",
        b"",
        MEASUREMENT.hex()[:62],
        MEASUREMENT.hex() + "00",
        "zz" * 32,
        "",
    ],
    ids=["31 bytes", "33 bytes", "no bytes", "31 hex", "33 hex", "not hex", "empty hex"],
)
def test_policy_refuses_values_that_are_not_32_bytes(field: str, value: str | bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (bytes.fromhex's message or ours)
        AttestationPolicy(**settings(field, (value,)))


@pytest.mark.parametrize("field", ["measurements", "signers", "platform_keys"])
@pytest.mark.parametrize("value", [MEASUREMENT.hex(), MEASUREMENT], ids=["str", "bytes"])
def test_policy_refuses_one_value_instead_of_a_tuple(field: str, value: str | bytes) -> None:
    with pytest.raises(TypeError, match="tuple"):
        AttestationPolicy(**settings(field, value))


@pytest.mark.parametrize("field", ["measurements", "signers"])
def test_policy_refuses_values_that_are_neither_hex_nor_bytes(field: str) -> None:
    with pytest.raises((TypeError, ValueError)):
        AttestationPolicy(**settings(field, (32,)))


def test_policy_refuses_a_negative_security_version() -> None:
    with pytest.raises(ValueError, match="min_security_version"):
        AttestationPolicy(min_security_version=-1)


def test_platform_keys_in_every_accepted_form(tmp_path: Path) -> None:
    pub_path = init_platform(tmp_path / "platform")
    public = serialization.load_pem_public_key(pub_path.read_bytes())
    raw = public_key_bytes(public)  # type: ignore[arg-type]
    forms: list[object] = [
        pub_path,  # a platform.pub path
        str(pub_path),
        raw,  # raw 32 bytes
        raw.hex(),
        raw.hex().upper(),
        public,  # an Ed25519PublicKey
    ]
    for form in forms:
        policy = AttestationPolicy(platform_keys=(form,))
        assert policy._platform_keys == {raw}, form
    private = Ed25519PrivateKey.generate()
    assert AttestationPolicy(platform_keys=(private,))._platform_keys == {
        public_key_bytes(private.public_key())
    }


def test_evidence_verifies_against_a_platform_pub_file(tmp_path: Path) -> None:
    pub_path = init_platform(tmp_path / "platform")
    from farside.attestation.platform import load_platform_key

    key = load_platform_key(tmp_path / "platform" / "platform.key")
    policy = strict_policy(platform_keys=(pub_path,))
    assert verify_evidence(evidence(key=key), policy, nonce=NONCE, binding=BINDING) == IDENTITY
    assert refused(evidence(), policy).check == "platform signature"


def test_platform_keys_that_are_not_keys(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_pub = tmp_path / "ec.pub"
    ec_pub.write_bytes(
        ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    init_platform(tmp_path / "platform")
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key\n")
    for bad in (
        PLATFORM_PUB[:31],  # raw bytes of the wrong length
        PLATFORM_PUB + b"\0",
        PLATFORM.public_key().public_bytes(  # PEM bytes are not a path
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        tmp_path / "missing.pub",
        garbage,
        ec_pub,  # not Ed25519
        tmp_path / "platform" / "platform.key",  # the private key file is not a platform.pub
    ):
        with pytest.raises(ValueError):  # noqa: PT011 (each names its own cause)
            AttestationPolicy(platform_keys=(bad,))


def test_with_platform_keys_adds_and_keeps_the_rest() -> None:
    policy = strict_policy(trust_any_platform=False)
    wider = policy.with_platform_keys([public_key_bytes(OTHER_PLATFORM)])
    assert wider._platform_keys == {PLATFORM_PUB, public_key_bytes(OTHER_PLATFORM)}
    assert policy._platform_keys == {PLATFORM_PUB}  # the original is unchanged
    for name in ("measurements", "signers", "product_id", "min_security_version", "allow_debug"):
        assert getattr(wider, name) == getattr(policy, name), name
    assert wider._measurements == policy._measurements
    assert wider._signers == policy._signers
    loose = AttestationPolicy(trust_any_platform=True).with_platform_keys([])
    assert loose.trust_any_platform


# ----------------------------------------------------------------------- report data


def spec_binding(tls_public_key: bytes, client_nonce: bytes, proxy_nonce: bytes) -> bytes:
    """The channel binding as specified: a domain, then each part with a 4-byte length."""
    data = b"farside.channel-binding.v1\0"
    for part in (tls_public_key, client_nonce, proxy_nonce):
        data += len(part).to_bytes(4, "big") + part
    return hashlib.sha256(data).digest()


def spec_report_data(nonce: bytes, binding: bytes) -> bytes:
    return hashlib.sha256(b"farside.nonce.v1\0" + nonce).digest() + binding


def test_report_data_layout() -> None:
    data = report_data(NONCE, BINDING)
    assert len(data) == 64
    assert data[:32] == hashlib.sha256(b"farside.nonce.v1\0" + NONCE).digest()
    assert data[32:] == BINDING
    assert data == spec_report_data(NONCE, BINDING)
    assert report_data(b"", BINDING)[:32] == hashlib.sha256(b"farside.nonce.v1\0").digest()


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_report_data_refuses_a_binding_that_is_not_32_bytes(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        report_data(NONCE, bytes(length))


def test_channel_binding_matches_the_spec() -> None:
    assert spec_binding(TLS_KEY, CLIENT_NONCE, PROXY_NONCE) == BINDING
    local = channel_binding(
        client_nonce=CLIENT_NONCE, proxy_nonce=PROXY_NONCE
    )  # no TLS on a Unix socket
    assert local == spec_binding(b"", CLIENT_NONCE, PROXY_NONCE)
    assert len(local) == 32
    assert local != BINDING


def test_channel_binding_parts_cannot_be_shifted() -> None:
    """Length prefixes: moving bytes from one part to the next changes the binding."""
    one = channel_binding(tls_public_key=b"ab", client_nonce=b"c", proxy_nonce=b"d")
    two = channel_binding(tls_public_key=b"a", client_nonce=b"bc", proxy_nonce=b"d")
    three = channel_binding(tls_public_key=b"a", client_nonce=b"b", proxy_nonce=b"cd")
    assert len({one, two, three}) == 3
    swapped = channel_binding(
        tls_public_key=TLS_KEY, client_nonce=PROXY_NONCE, proxy_nonce=CLIENT_NONCE
    )
    assert swapped != BINDING


# ----------------------------------------------------------------------- public_key_bytes


def test_public_key_bytes_forms() -> None:
    public = PLATFORM.public_key()
    assert public_key_bytes(PLATFORM) == PLATFORM_PUB
    assert public_key_bytes(public) == PLATFORM_PUB
    assert public_key_bytes(PLATFORM_PUB) == PLATFORM_PUB
    assert public_key_bytes(PLATFORM_PUB.hex()) == PLATFORM_PUB
    assert len(PLATFORM_PUB) == 32


# ----------------------------------------------------------------------- the vector


def load_vector() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((VECTORS / "evidence_v1.json").read_text())
    return document


def vector_inputs(v: dict[str, Any]) -> tuple[Ed25519PrivateKey, EnclaveIdentity, bytes, bytes]:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["platform_seed"]))
    identity = EnclaveIdentity(
        measurement=bytes.fromhex(v["measurement"]),
        signer=bytes.fromhex(v["signer"]),
        product_id=v["product_id"],
        security_version=v["security_version"],
        debug=v["debug"],
    )
    binding = channel_binding(
        tls_public_key=bytes.fromhex(v["tls_public_key"]),
        client_nonce=bytes.fromhex(v["client_nonce"]),
        proxy_nonce=bytes.fromhex(v["proxy_nonce"]),
    )
    return key, identity, bytes.fromhex(v["nonce"]), binding


def _varint(value: int) -> bytes:
    out = b""
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            return out + bytes([low])
        out += bytes([low | 0x80])


def spec_body(v: dict[str, Any], report: bytes) -> bytes:
    """``EvidenceBody`` hand-encoded from protos/farside/v1/attestation.proto (proto3 rules)."""

    def scalar(number: int, value: int) -> bytes:
        return _varint(number << 3) + _varint(value) if value else b""

    def blob(number: int, value: bytes) -> bytes:
        return _varint(number << 3 | 2) + _varint(len(value)) + value if value else b""

    return (
        scalar(1, 1)
        + blob(2, bytes.fromhex(v["measurement"]))
        + blob(3, bytes.fromhex(v["signer"]))
        + scalar(4, v["product_id"])
        + scalar(5, v["security_version"])
        + scalar(6, int(v["debug"]))
        + blob(7, report)
    )


def test_evidence_v1_vector_is_remade_byte_for_byte() -> None:
    v = load_vector()
    key, identity, nonce, binding = vector_inputs(v)
    assert public_key_bytes(key).hex() == v["platform_public_key"]
    assert binding.hex() == v["channel_binding"]
    assert report_data(nonce, binding).hex() == v["report_data"]
    made = make_evidence(key, identity, report_data=report_data(nonce, binding))
    assert made.body.hex() == v["body"]
    assert made.signature.hex() == v["signature"]
    assert made.SerializeToString().hex() == v["evidence"]


def test_evidence_v1_vector_matches_an_independent_encoding() -> None:
    v = load_vector()
    tls = bytes.fromhex(v["tls_public_key"])
    binding = spec_binding(tls, bytes.fromhex(v["client_nonce"]), bytes.fromhex(v["proxy_nonce"]))
    report = spec_report_data(bytes.fromhex(v["nonce"]), binding)
    assert report.hex() == v["report_data"]
    body = spec_body(v, report)
    assert body.hex() == v["body"]
    signature = bytes.fromhex(v["signature"])
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["platform_seed"]))
    assert key.sign(body) == signature  # Ed25519 is deterministic
    key.public_key().verify(signature, body)
    wire = (
        _varint(1 << 3 | 2)
        + _varint(len(EVIDENCE_FORMAT))
        + EVIDENCE_FORMAT.encode()
        + _varint(2 << 3 | 2)
        + _varint(len(body))
        + body
        + _varint(3 << 3 | 2)
        + _varint(64)
        + signature
        + _varint(4 << 3 | 2)
        + _varint(32)
        + bytes.fromhex(v["platform_public_key"])
    )
    assert wire.hex() == v["evidence"]


def test_evidence_v1_vector_verifies() -> None:
    v = load_vector()
    _, identity, nonce, binding = vector_inputs(v)
    given = pb.Evidence.FromString(bytes.fromhex(v["evidence"]))
    policy = AttestationPolicy(
        measurements=(v["measurement"],),
        signers=(v["signer"],),
        product_id=v["product_id"],
        min_security_version=v["security_version"],
        platform_keys=(v["platform_public_key"],),
    )
    assert verify_evidence(given, policy, nonce=nonce, binding=binding) == identity
    assert refused(given, policy, nonce=nonce[::-1], binding=binding).check == "nonce"
    assert refused(given, policy, nonce=nonce, binding=binding[::-1]).check == "channel binding"
    higher = dataclasses.replace(policy, min_security_version=v["security_version"] + 1)
    assert refused(given, higher, nonce=nonce, binding=binding).check == "security version"
    assert refused(given, AttestationPolicy(), nonce=nonce, binding=binding).check == (
        "platform signature"
    )


# --------------------------------------------------------------------------- sandbox


def sandboxed(*layers: str) -> pb.Evidence:
    return make_evidence(
        PLATFORM, IDENTITY, report_data=report_data(NONCE, BINDING), sandbox=layers
    )


def test_required_sandbox_layers_that_were_applied_pass() -> None:
    policy = strict_policy(require_sandbox=("seccomp", "landlock-fs"))
    given = sandboxed("landlock-fs", "seccomp", "rlimits")
    assert verify_evidence(given, policy, nonce=NONCE, binding=BINDING) == IDENTITY


@pytest.mark.parametrize("applied", [(), ("landlock-fs",), ("rlimits", "landlock-net")])
def test_a_missing_required_sandbox_layer_is_refused(applied: tuple[str, ...]) -> None:
    policy = strict_policy(require_sandbox=("landlock-fs", "seccomp"))
    with pytest.raises(farside.AttestationError) as info:
        verify_evidence(sandboxed(*applied), policy, nonce=NONCE, binding=BINDING)
    assert info.value.check == "sandbox"
    assert "seccomp" in str(info.value)
    assert f"applied: {', '.join(applied) or 'none'}" in str(info.value)


def test_require_sandbox_is_a_tuple_of_names() -> None:
    with pytest.raises(TypeError, match="require_sandbox"):
        AttestationPolicy(require_sandbox="seccomp")  # type: ignore[arg-type]


def test_with_platform_keys_keeps_the_sandbox_requirement() -> None:
    policy = AttestationPolicy(require_sandbox=("seccomp",)).with_platform_keys([PLATFORM_PUB])
    assert policy.require_sandbox == ("seccomp",)
