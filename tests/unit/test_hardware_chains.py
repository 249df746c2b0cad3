"""Trust comes from the pinned roots' bytes, never from names; and each check does its part.

Evidence signed by a CA of our own (tests/unit/_hardware_fakes.py), however
exactly its certificates copy the vendors' names, is refused by the production
entry point with check "root". Through the modules' private test seam (``_verify``
with a test root), the same synthetic evidence shows what each later check
catches: debug flags, a foreign quoting enclave, a VCEK for another chip, times.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

import farside
from farside.attestation.hardware import _roots, dcap, nitro, sev_snp, verify_hardware_evidence
from farside.attestation.hardware._amd_certs import AMD_INTERMEDIATE_PEMS

from ._hardware_fakes import (
    CHIP_ID,
    INSIDE,
    NOT_AFTER,
    NitroPki,
    PckPki,
    SnpPki,
    certificate_table,
    dcap_quote,
    later,
    nitro_document,
    replace_pck_chain,
    snp_report,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "hardware"


def check_of(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(farside.AttestationError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value.check


# ------------------------------------------------------------ names buy nothing


def test_nitro_chain_to_a_root_named_like_aws_is_rejected_as_root() -> None:
    pki = NitroPki.make(root_name=_roots.NITRO_ROOT.subject)
    document = pki.document()
    assert check_of(verify_hardware_evidence, document, at=INSIDE) == "root"
    # Without the look-alike root in the bundle the last link is checked against the pin.
    document = nitro_document(pki.leaf, [pki.intermediate.der])
    assert check_of(verify_hardware_evidence, document, at=INSIDE) == "root"


def test_dcap_quote_with_a_pck_chain_named_like_intels_is_rejected_as_root() -> None:
    real = (VECTORS / "sgx" / "sgx_quote").read_bytes()
    real_chain = dcap._chain.load_certificates(
        dcap.parse_quote(real).pck_chain.rstrip(b"\0"), check="format", what="chain"
    )
    pki = PckPki.make(root_name=_roots.INTEL_SGX_ROOT.subject, ca_name=real_chain[1].subject)
    forged = replace_pck_chain(real, pki)
    assert check_of(verify_hardware_evidence, forged) == "root"


def test_snp_vcek_chained_to_an_ark_named_like_amds_is_rejected_as_root() -> None:
    ask = x509.load_pem_x509_certificate(AMD_INTERMEDIATE_PEMS[0])  # AMD's ASK-Milan
    pki = SnpPki.make(ark_name=_roots.AMD_ARKS["Milan"].subject, ask_name=ask.subject)
    report = snp_report(pki.vcek)
    collateral = [pki.vcek.der, pki.ask.der, pki.ark.der]
    assert check_of(verify_hardware_evidence, report, collateral=collateral, at=INSIDE) == "root"
    # Only the look-alike VCEK: AMD's real ASK has its issuer's name but did not sign it.
    assert check_of(verify_hardware_evidence, report, collateral=[pki.vcek.der], at=INSIDE) == (
        "certificate chain"
    )


# --------------------------------------------------- through the test-root seam


def test_nitro_round_trip_with_a_test_root() -> None:
    pki = NitroPki.make()
    document = pki.document(user_data=b"u" * 64, nonce=b"n" * 16, public_key=b"k" * 10)
    report = nitro._verify(document, at=INSIDE, roots=[pki.root.certificate])
    assert (report.report_data, report.nonce, report.public_key) == (
        b"u" * 64,
        b"n" * 16,
        b"k" * 10,
    )
    assert report.debug is False
    assert report.measurement == b"\x01" * 48


def test_nitro_debug_is_pcr0_to_2_all_zero() -> None:
    pki = NitroPki.make()
    pcrs = {i: bytes(48) for i in range(3)} | {3: b"\x09" * 48}
    report = nitro._verify(pki.document(pcrs=pcrs), at=INSIDE, roots=[pki.root.certificate])
    assert report.debug is True


def test_nitro_document_timestamp_outside_its_certificate_is_rejected() -> None:
    pki = NitroPki.make()
    document = pki.document(timestamp=datetime(2045, 1, 1, tzinfo=UTC))
    assert check_of(nitro._verify, document, at=INSIDE, roots=[pki.root.certificate]) == (
        "timestamp"
    )


def test_nitro_expiry_is_checked_at_the_given_time() -> None:
    pki = NitroPki.make()
    document = pki.document()
    roots = [pki.root.certificate]
    assert nitro._verify(document, at=later(10), roots=roots).format == "nitro"
    assert check_of(nitro._verify, document, at=NOT_AFTER.replace(year=2041), roots=roots) == (
        "expired"
    )


def test_nitro_document_signed_by_another_key_is_rejected() -> None:
    pki, other = NitroPki.make(), NitroPki.make()
    document = nitro_document(other.leaf, [pki.intermediate.der])
    assert check_of(nitro._verify, document, at=INSIDE, roots=[pki.root.certificate]) == (
        "certificate chain"
    )


def snp_verify(pki: SnpPki, report: bytes, collateral: list[bytes]) -> object:
    return sev_snp._verify(
        report,
        at=INSIDE,
        collateral=collateral,
        arks={"Milan": pki.ark.certificate},
        intermediates=[pki.ask.certificate],
    )


def test_snp_round_trip_and_debug_policy_bit() -> None:
    pki = SnpPki.make()
    plain = snp_verify(pki, snp_report(pki.vcek, report_data=b"r" * 64), [pki.vcek.der])
    assert plain.report_data == b"r" * 64  # type: ignore[attr-defined]
    assert plain.debug is False  # type: ignore[attr-defined]
    debug = snp_verify(pki, snp_report(pki.vcek, policy=0x30000 | 1 << 19), [pki.vcek.der])
    assert debug.debug is True  # type: ignore[attr-defined]


def test_snp_vcek_for_another_chip_or_tcb_is_rejected() -> None:
    pki = SnpPki.make(chip_id=b"\x77" * 64)
    report = snp_report(pki.vcek, chip_id=CHIP_ID)
    assert check_of(snp_verify, pki, report, [pki.vcek.der]) == "collateral"
    pki = SnpPki.make()
    report = snp_report(pki.vcek, tcb=bytes([3, 0, 0, 0, 0, 0, 9, 115]))
    with pytest.raises(farside.AttestationError) as caught:
        snp_verify(pki, report, [pki.vcek.der])
    assert caught.value.check == "collateral"
    assert "snp SPL 8" in caught.value.message


def test_snp_collateral_as_an_extended_report_certificate_table() -> None:
    pki = SnpPki.make()
    table = certificate_table([pki.vcek.der, pki.ask.der])
    report = snp_verify(pki, snp_report(pki.vcek), [table])
    assert report.format == "sev-snp"  # type: ignore[attr-defined]
    assert check_of(snp_verify, pki, snp_report(pki.vcek), [table[:30]]) == "collateral"


def dcap_verify(pki: PckPki, quote: bytes) -> object:
    return dcap._verify(quote, at=INSIDE, roots=[pki.root.certificate])


@pytest.mark.parametrize("tdx", [True, False], ids=["tdx", "sgx"])
def test_dcap_round_trip_and_debug_attribute(tdx: bool) -> None:
    pki = PckPki.make()
    report = dcap_verify(pki, dcap_quote(pki, tdx=tdx, report_data=b"d" * 64))
    assert report.format == ("tdx" if tdx else "sgx")  # type: ignore[attr-defined]
    assert report.report_data == b"d" * 64  # type: ignore[attr-defined]
    assert report.debug is False  # type: ignore[attr-defined]
    assert dcap_verify(pki, dcap_quote(pki, tdx=tdx, debug=True)).debug is True  # type: ignore[attr-defined]


@pytest.mark.parametrize("tdx", [True, False], ids=["tdx", "sgx"])
def test_dcap_quoting_enclave_must_be_intels_and_not_debug(tdx: bool) -> None:
    pki = PckPki.make()
    foreign = dcap_quote(pki, tdx=tdx, qe_signer=b"\x66" * 32)
    assert check_of(dcap_verify, pki, foreign) == "qe identity"
    assert check_of(dcap_verify, pki, dcap_quote(pki, tdx=tdx, qe_debug=True)) == "qe identity"
    # The other platform's QE does not do either: an SGX QE does not vouch for a TD.
    swapped = dcap_quote(pki, tdx=tdx, qe_signer=dcap._INTEL_QES["sgx" if tdx else "tdx"][0])
    assert check_of(dcap_verify, pki, swapped) == "qe identity"


def test_dcap_pck_from_another_ca_is_a_qe_report_failure() -> None:
    pki, other = PckPki.make(), PckPki.make()
    quote = dcap_quote(pki, tdx=True)
    other_signed = dcap_quote(other, tdx=True)
    # other's QE report signed by other's PCK, chain to pki's root: the chain walk refuses it.
    assert check_of(dcap_verify, pki, other_signed) == "root"
    assert dcap_verify(pki, quote).format == "tdx"  # type: ignore[attr-defined]
