"""Real public evidence (tests/vectors/hardware, provenance in its README) against the verifiers.

Every vector verifies, with the claims its source documents; one flipped byte
anywhere that matters (the signed body, the signature, a certificate) is
rejected, naming the check that caught it. Verification is offline and pinned.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

import farside
from farside.attestation.hardware import (
    FORMATS,
    HardwareReport,
    NitroClaims,
    SevSnpClaims,
    SgxClaims,
    TdxClaims,
    _roots,
    verify_hardware_evidence,
)
from farside.attestation.hardware._dcap_format import parse_quote

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "hardware"
SNP_REPORT = (VECTORS / "sev-snp" / "attestation.bin").read_bytes()
VCEK = (VECTORS / "sev-snp" / "vcek.testcer").read_bytes()


def nitro_raw(file: str) -> bytes:
    data = (VECTORS / "nitro" / file).read_bytes()
    return base64.b64decode(data) if file.endswith("base64") else data


def nitro_time(data: bytes) -> datetime:
    """The document's own signing time: inside its short-lived certificate's validity."""
    payload = cbor2.loads(cbor2.loads(data)[2])
    return datetime.fromtimestamp(payload["timestamp"] / 1000, UTC)


@dataclass(frozen=True)
class Vector:
    file: str
    format: str
    measurement: str
    debug: bool
    collateral: tuple[bytes, ...] = ()

    @property
    def data(self) -> bytes:
        return (VECTORS / self.file).read_bytes()

    @property
    def at(self) -> datetime | None:
        if self.format != "nitro":
            return datetime(2026, 6, 1, tzinfo=UTC)  # inside every PCK/VCEK validity
        raw = self.data
        return nitro_time(base64.b64decode(raw) if self.file.endswith("base64") else raw)

    def verify(self, data: bytes | None = None, **kwargs: object) -> HardwareReport:
        options: dict[str, object] = {"at": self.at, "collateral": self.collateral}
        options.update(kwargs)
        return verify_hardware_evidence(self.data if data is None else data, **options)  # type: ignore[arg-type]


VECTORS_ALL = [
    Vector(
        "nitro/valid-attestation-doc-bytes",
        "nitro",
        "f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b",
        False,
    ),
    Vector("nitro/debug-mode-attestation-doc-bytes", "nitro", "00" * 48, True),
    Vector("nitro/valid-attestation-doc-base64", "nitro", "00" * 48, True),
    Vector(
        "sev-snp/attestation.bin",
        "sev-snp",
        "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01",
        True,
        (VCEK,),
    ),
    Vector("tdx/tdx_quote", "tdx", "", False),
    Vector("tdx/tdx_quote_outdated", "tdx", "", False),
    Vector("tdx/quote_v5_sample.dat", "tdx", "", False),
    Vector("sgx/sgx_quote", "sgx", "", False),
]
IDS = [v.file for v in VECTORS_ALL]


@pytest.mark.parametrize("vector", VECTORS_ALL, ids=IDS)
def test_every_vector_verifies_with_its_claims(vector: Vector) -> None:
    report = vector.verify()
    assert report.format == vector.format
    assert report.debug is vector.debug
    if vector.measurement:
        assert report.measurement.hex() == vector.measurement
    expected_claims = {
        "nitro": NitroClaims,
        "sev-snp": SevSnpClaims,
        "tdx": TdxClaims,
        "sgx": SgxClaims,
    }[vector.format]
    assert isinstance(report.claims, expected_claims)
    # The format named explicitly gives the same report as detection.
    assert vector.verify(format=vector.format) == report


def test_nitro_claims_are_the_documents_fields() -> None:
    data = nitro_raw("debug-mode-attestation-doc-bytes")
    report = verify_hardware_evidence(data, at=nitro_time(data))
    assert isinstance(report.claims, NitroClaims)
    assert report.report_data == b"hello, world!"  # user_data
    assert report.public_key == b"my super secret key"
    assert report.nonce is None
    assert report.claims.digest == "SHA384"
    assert report.claims.module_id == "i-03ad7cdb817437eeb-enc0183cc7569b3f6e1"
    assert sorted(report.claims.pcrs) == list(range(16))
    assert report.claims.timestamp == datetime(2022, 10, 12, 13, 50, 6, 81000, tzinfo=UTC)


def test_sev_snp_claims_are_the_reports_fields() -> None:
    report = verify_hardware_evidence(SNP_REPORT, collateral=[VCEK])
    claims = report.claims
    assert isinstance(claims, SevSnpClaims)
    assert report.report_data == bytes([1, 2, 3, 4, 5]) + bytes(59)  # go-sev-guest's nonce
    assert claims.product == "Milan"
    assert claims.signing_key == "vcek"
    assert claims.policy == 0xB0000  # bit 19 set: debug allowed
    assert claims.reported_tcb.to_bytes(8, "little") == bytes([2, 0, 0, 0, 0, 0, 5, 68])
    assert claims.chip_id.hex().startswith("3ac3fe21e13fb099")


def test_tdx_and_sgx_claims_are_the_bodys_fields() -> None:
    tdx = verify_hardware_evidence((VECTORS / "tdx" / "quote_v5_sample.dat").read_bytes())
    assert isinstance(tdx.claims, TdxClaims)
    body = parse_quote((VECTORS / "tdx" / "quote_v5_sample.dat").read_bytes()).body
    assert tdx.claims.quote_version == 5
    assert tdx.measurement == body[136:184]
    assert tdx.claims.rtmrs[3] == body[472:520]
    assert len(tdx.claims.mr_servicetd) == 48  # a TDX 1.5 body
    sgx = verify_hardware_evidence((VECTORS / "sgx" / "sgx_quote").read_bytes())
    assert isinstance(sgx.claims, SgxClaims)
    assert sgx.claims.quote_version == 3
    assert sgx.report_data.startswith(b"Hello, world")  # dcap-qvl's sample report data


def test_text_forms_of_evidence_are_accepted() -> None:
    raw = nitro_raw("valid-attestation-doc-bytes")
    at = nitro_time(raw)
    expected = verify_hardware_evidence(raw, at=at)
    assert verify_hardware_evidence(base64.b64encode(raw), at=at) == expected
    assert verify_hardware_evidence(base64.urlsafe_b64encode(raw).rstrip(b"="), at=at) == expected
    quote = (VECTORS / "sgx" / "sgx_quote").read_bytes()
    assert verify_hardware_evidence(b"0x" + quote.hex().encode() + b"\n") == (
        verify_hardware_evidence(quote)
    )


def test_without_a_time_an_old_nitro_document_is_expired_not_forged() -> None:
    with pytest.raises(farside.AttestationError) as caught:
        verify_hardware_evidence(nitro_raw("valid-attestation-doc-bytes"))
    assert caught.value.check == "expired"
    assert "expired at 2022-10-13" in caught.value.message


@pytest.mark.parametrize("vector", [v for v in VECTORS_ALL if v.format != "nitro"], ids=str)
@pytest.mark.parametrize(
    "when", [datetime(2017, 1, 1, tzinfo=UTC), datetime(2051, 1, 1, tzinfo=UTC)]
)
def test_outside_the_certificates_validity_is_expired(vector: Vector, when: datetime) -> None:
    with pytest.raises(farside.AttestationError) as caught:
        vector.verify(at=when)
    assert caught.value.check == "expired"


def test_trailing_bytes_zero_padding_is_tolerated_anything_else_is_not() -> None:
    quote = (VECTORS / "tdx" / "tdx_prod_quote_SPR_E4.dat").read_bytes()
    # go-tdx-guest appended "extra bytes(only for testing purpose)": nothing signs them.
    with pytest.raises(farside.AttestationError) as caught:
        verify_hardware_evidence(quote)
    assert caught.value.check == "format"
    signed_part = quote[: quote.index(b"\nextra bytes")]
    assert verify_hardware_evidence(signed_part).format == "tdx"
    assert verify_hardware_evidence(signed_part + bytes(100)).format == "tdx"


# ------------------------------------------------------------------ one flipped byte


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def rejected_check(vector: Vector, data: bytes, **kwargs: object) -> str:
    with pytest.raises(farside.AttestationError) as caught:
        vector.verify(data, **kwargs)
    assert "\n" not in caught.value.message
    return caught.value.check


def nitro_cases() -> list[tuple[str, str, int, str]]:
    data = nitro_raw("valid-attestation-doc-bytes")
    payload = cbor2.loads(cbor2.loads(data)[2])
    cabundle = payload["cabundle"]
    return [
        ("PCR0 (signed body)", "nitro", data.index(payload["pcrs"][0]) + 5, "signature"),
        ("module_id (signed body)", "nitro", data.index(b"i-020b6af9246d90e92"), "signature"),
        ("COSE signature", "nitro", len(data) - 10, "signature"),
        (
            "leaf certificate's signature",
            "nitro",
            data.index(payload["certificate"]) + 630,
            "certificate chain",
        ),
        (
            "leaf certificate's key",
            "nitro",
            data.index(payload["certificate"]) + 300,
            "certificate chain",
        ),
        (
            "instance CA's signature",
            "nitro",
            data.index(cabundle[3]) + len(cabundle[3]) - 5,
            "certificate chain",
        ),
        (
            "regional CA's signature",
            "nitro",
            data.index(cabundle[1]) + len(cabundle[1]) - 5,
            "root",
        ),
        ("the bundled root's key", "nitro", data.index(cabundle[0]) + 250, "root"),
    ]


def snp_cases() -> list[tuple[str, str, int, str]]:
    return [
        ("MEASUREMENT (signed body)", "report", 0x90, "signature"),
        ("REPORT_DATA (signed body)", "report", 0x50, "signature"),
        ("signature R", "report", 0x2A0, "signature"),
        ("signature S", "report", 0x2A0 + 72, "signature"),
        ("reserved after the signature", "report", 0x400, "format"),
        ("VCEK's signature", "vcek", len(VCEK) - 5, "certificate chain"),
        ("VCEK's key", "vcek", VCEK.index(b"\x04", 700) + 20, "certificate chain"),
    ]


def dcap_cases(file: str) -> list[tuple[str, str, int, str]]:
    quote = (VECTORS / file).read_bytes()
    parts = parse_quote(quote)
    body_start = len(parts.signed) - len(parts.body)
    signature_data = len(parts.signed) + 4
    qe_report = quote.index(parts.qe_report)
    return [
        ("header (signed)", file, 30, "signature"),
        ("body (signed)", file, body_start + 100, "signature"),
        ("quote signature", file, signature_data + 3, "signature"),
        ("attestation key", file, signature_data + 64 + 5, "attestation key"),
        ("QE report", file, qe_report + 10, "qe report"),
        ("QE report signature", file, qe_report + 384 + 3, "qe report"),
        ("QE auth data", file, quote.index(parts.qe_auth_data), "attestation key"),
    ]


@pytest.mark.parametrize(
    ("what", "_where", "offset", "check"),
    nitro_cases(),
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_nitro_flipped_byte_is_rejected_naming_the_check(
    what: str, _where: str, offset: int, check: str
) -> None:
    vector = VECTORS_ALL[0]
    assert rejected_check(vector, flip(vector.data, offset)) == check, what


@pytest.mark.parametrize(
    ("what", "where", "offset", "check"), snp_cases(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_sev_snp_flipped_byte_is_rejected_naming_the_check(
    what: str, where: str, offset: int, check: str
) -> None:
    vector = VECTORS_ALL[3]
    if where == "report":
        got = rejected_check(vector, flip(SNP_REPORT, offset))
    else:
        got = rejected_check(vector, SNP_REPORT, collateral=(flip(VCEK, offset),))
    assert got == check, what


@pytest.mark.parametrize("file", ["tdx/tdx_quote", "tdx/quote_v5_sample.dat", "sgx/sgx_quote"])
def test_dcap_flipped_byte_is_rejected_naming_the_check(file: str) -> None:
    vector = next(v for v in VECTORS_ALL if v.file == file)
    for what, _file, offset, check in dcap_cases(file):
        assert rejected_check(vector, flip(vector.data, offset)) == check, what


@pytest.mark.parametrize("file", ["tdx/tdx_quote", "sgx/sgx_quote"])
def test_dcap_flipped_byte_in_the_pck_certificate_is_rejected(file: str) -> None:
    quote = (VECTORS / file).read_bytes()
    block = re.search(rb"-----BEGIN CERTIFICATE-----\n(.+?)-----END", quote, re.S)
    assert block is not None
    body = block.group(1)
    der = base64.b64decode(body)
    lines = [len(line) for line in body.split(b"\n") if line]
    tampered = base64.b64encode(der[:-5] + bytes([der[-5] ^ 1]) + der[-4:])
    rewrapped = b"\n".join(tampered[i : i + lines[0]] for i in range(0, len(tampered), lines[0]))
    forged = quote.replace(body, rewrapped + b"\n")
    assert len(forged) == len(quote)
    assert forged != quote
    with pytest.raises(farside.AttestationError) as caught:
        verify_hardware_evidence(forged)
    assert caught.value.check == "certificate chain"


def test_sev_snp_without_its_vcek_names_the_collateral() -> None:
    with pytest.raises(farside.AttestationError) as caught:
        verify_hardware_evidence(SNP_REPORT)
    assert caught.value.check == "collateral"
    assert "VCEK" in caught.value.message


def test_sev_snp_accepts_the_vcek_as_pem_and_with_its_chain() -> None:
    pem = b"".join(
        x509.load_pem_x509_certificates(_roots.AMD_ARK_MILAN_PEM)[0].public_bytes(
            serialization.Encoding.PEM
        )
        for _ in range(1)
    )
    vcek_pem = base64.encodebytes(VCEK)
    collateral = [b"-----BEGIN CERTIFICATE-----\n" + vcek_pem + b"-----END CERTIFICATE-----\n", pem]
    report = verify_hardware_evidence(SNP_REPORT, collateral=collateral)
    assert report.claims.product == "Milan"  # type: ignore[union-attr]


def test_the_pinned_roots_are_the_vendors_by_fingerprint() -> None:
    """The pins of the issue text and of independent projects, recomputed from the PEMs."""

    def sha256(certificate: x509.Certificate) -> str:
        return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()

    assert sha256(_roots.NITRO_ROOT) == (
        "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
    )
    assert sha256(_roots.INTEL_SGX_ROOT) == (
        "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
    )
    assert {product: sha256(ark) for product, ark in _roots.AMD_ARKS.items()} == {
        "Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
        "Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
        "Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    }
    assert _roots.NITRO_ROOT.fingerprint(hashes.SHA256()).hex() == _roots.NITRO_ROOT_SHA256


def test_a_nitro_document_in_the_bundle_root_matches_the_pin() -> None:
    """AWS puts its root first in every cabundle: the real documents carry the pinned bytes."""
    payload = cbor2.loads(cbor2.loads(nitro_raw("valid-attestation-doc-bytes"))[2])
    assert hashlib.sha256(payload["cabundle"][0]).hexdigest() == _roots.NITRO_ROOT_SHA256


def test_formats_are_the_cli_names() -> None:
    assert FORMATS == ("nitro", "sev-snp", "tdx", "sgx")


@pytest.mark.parametrize(
    ("data", "check"),
    [
        (b"", "format"),
        (b"\x00" * 100, "format"),
        (b"not evidence at all!", "format"),
        (b"\x84\x40\xa0\x40\x40", "format"),
        (bytes(1184), "format"),
        (SNP_REPORT[:-1], "format"),
        ((VECTORS / "sgx" / "sgx_quote").read_bytes()[:500], "format"),
    ],
)
def test_malformed_evidence_is_a_format_rejection(data: bytes, check: str) -> None:
    with pytest.raises(farside.AttestationError) as caught:
        verify_hardware_evidence(data)
    assert caught.value.check == check


def test_a_named_format_that_does_not_fit_is_rejected() -> None:
    with pytest.raises(farside.AttestationError) as caught:
        verify_hardware_evidence((VECTORS / "tdx" / "tdx_quote").read_bytes(), format="sgx")
    assert caught.value.check == "format"
    with pytest.raises(farside.AttestationError) as caught:
        verify_hardware_evidence(SNP_REPORT, format="nitro")
    assert caught.value.check == "format"


def test_misuse_is_a_type_or_value_error() -> None:
    with pytest.raises(TypeError):
        verify_hardware_evidence("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="format"):
        verify_hardware_evidence(SNP_REPORT, format="sev")
    with pytest.raises(ValueError, match="timezone"):
        verify_hardware_evidence(SNP_REPORT, at=datetime(2026, 1, 1))
    with pytest.raises(TypeError):
        verify_hardware_evidence(SNP_REPORT, collateral=VCEK)
