"""``check_expectations``: what a policy requires of verified hardware evidence.

Reports are built directly (the verifiers are tested elsewhere): each refusal
names its check, a platform the policy does not name is refused, the session
binding is checked half by half, and debug needs explicit permission.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

import farside
from farside.attestation.evidence import channel_binding, report_data
from farside.attestation.hardware import (
    HardwareExpectations,
    HardwareReport,
    NitroClaims,
    NitroExpectations,
    SevSnpClaims,
    SevSnpExpectations,
    SgxClaims,
    SgxExpectations,
    TdxClaims,
    TdxExpectations,
    check_expectations,
)

BINDING = channel_binding(client_nonce=b"c" * 32, proxy_nonce=b"p" * 32)
SESSION = report_data(b"nonce", BINDING)


def nitro(**overrides: Any) -> HardwareReport:
    pcrs = {0: b"\x00" * 48, 1: b"\x01" * 48, 2: b"\x02" * 48}
    fields: dict[str, Any] = {
        "format": "nitro",
        "measurement": pcrs[0],
        "report_data": SESSION,
        "debug": False,
        "claims": NitroClaims(
            module_id="i-1", digest="SHA384", timestamp=datetime(2025, 1, 1, tzinfo=UTC), pcrs=pcrs
        ),
    }
    fields.update(overrides)
    return HardwareReport(**fields)


def snp(**overrides: Any) -> HardwareReport:
    claims = SevSnpClaims(
        version=2,
        guest_svn=3,
        policy=0x30000,
        family_id=bytes(16),
        image_id=bytes(16),
        vmpl=0,
        host_data=b"\x22" * 32,
        id_key_digest=bytes(48),
        author_key_digest=bytes(48),
        report_id=bytes(32),
        chip_id=bytes(64),
        current_tcb=0,
        reported_tcb=0,
        committed_tcb=0,
        launch_tcb=0,
        platform_info=0,
        signing_key="vcek",
        product="Milan",
    )
    fields: dict[str, Any] = {
        "format": "sev-snp",
        "measurement": b"\x11" * 48,
        "report_data": SESSION,
        "debug": False,
        "claims": claims,
    }
    fields.update(overrides)
    return HardwareReport(**fields)


def tdx(**overrides: Any) -> HardwareReport:
    claims = TdxClaims(
        quote_version=4,
        tee_tcb_svn=bytes(16),
        mr_seam=b"\x05" * 48,
        mr_signer_seam=bytes(48),
        seam_attributes=bytes(8),
        td_attributes=bytes(8),
        xfam=bytes(8),
        mr_config_id=bytes(48),
        mr_owner=bytes(48),
        mr_owner_config=bytes(48),
        rtmrs=(b"\x30" * 48, b"\x31" * 48, b"\x32" * 48, b"\x33" * 48),
    )
    fields: dict[str, Any] = {
        "format": "tdx",
        "measurement": b"\x44" * 48,
        "report_data": SESSION,
        "debug": False,
        "claims": claims,
    }
    fields.update(overrides)
    return HardwareReport(**fields)


def sgx(**overrides: Any) -> HardwareReport:
    claims = SgxClaims(
        quote_version=3,
        cpu_svn=bytes(16),
        misc_select=0,
        attributes=bytes(16),
        mrsigner=b"\x66" * 32,
        isv_prod_id=7,
        isv_svn=4,
    )
    fields: dict[str, Any] = {
        "format": "sgx",
        "measurement": b"\x77" * 32,
        "report_data": SESSION,
        "debug": False,
        "claims": claims,
    }
    fields.update(overrides)
    return HardwareReport(**fields)


STRICT = HardwareExpectations(
    nitro=NitroExpectations(pcrs={0: "00" * 48, 1: b"\x01" * 48}),
    sev_snp=SevSnpExpectations(measurements=("11" * 48,), host_data=b"\x22" * 32, min_guest_svn=3),
    tdx=TdxExpectations(mrtds=(b"\x44" * 48,), rtmrs={3: b"\x33" * 48}, mr_seams=("05" * 48,)),
    sgx=SgxExpectations(
        mrenclaves=(b"\x77" * 32,), mrsigners=("66" * 32,), product_id=7, min_isv_svn=4
    ),
)


def refused(report: HardwareReport, expectations: HardwareExpectations = STRICT) -> str:
    with pytest.raises(farside.AttestationError) as caught:
        check_expectations(report, expectations, report_data=SESSION)
    return caught.value.check


@pytest.mark.parametrize("make", [nitro, snp, tdx, sgx])
def test_evidence_meeting_every_expectation_passes(make: Any) -> None:
    check_expectations(make(), STRICT, report_data=SESSION)


@pytest.mark.parametrize("make", [nitro, snp, tdx, sgx])
def test_a_platform_the_policy_does_not_name_is_refused(make: Any) -> None:
    assert refused(make(), HardwareExpectations()) == "platform"


@pytest.mark.parametrize("make", [nitro, snp, tdx, sgx])
def test_the_session_binding_is_checked_half_by_half(make: Any) -> None:
    assert refused(make(report_data=report_data(b"old nonce", BINDING))) == "nonce"
    other = channel_binding(client_nonce=b"x" * 32, proxy_nonce=b"p" * 32)
    assert refused(make(report_data=report_data(b"nonce", other))) == "channel binding"
    assert refused(make(report_data=b"")) == "nonce"  # e.g. a Nitro document without user_data


@pytest.mark.parametrize("make", [nitro, snp, tdx, sgx])
def test_debug_needs_the_policys_permission(make: Any) -> None:
    assert refused(make(debug=True)) == "debug"
    allowing = HardwareExpectations(
        nitro=STRICT.nitro, sev_snp=STRICT.sev_snp, tdx=STRICT.tdx, sgx=STRICT.sgx, allow_debug=True
    )
    check_expectations(make(debug=True), allowing, report_data=SESSION)


def test_each_claim_is_checked_by_name() -> None:
    other_pcrs = {0: b"\x00" * 48, 1: b"\x09" * 48}
    assert (
        refused(
            nitro(
                claims=NitroClaims(
                    module_id="i",
                    digest="SHA384",
                    timestamp=datetime(2025, 1, 1, tzinfo=UTC),
                    pcrs=other_pcrs,
                )
            )
        )
        == "pcr"
    )
    assert refused(snp(measurement=b"\x12" * 48)) == "measurement"
    snp_claims = snp().claims
    assert isinstance(snp_claims, SevSnpClaims)
    from dataclasses import replace

    assert refused(snp(claims=replace(snp_claims, host_data=bytes(32)))) == "host data"
    assert refused(snp(claims=replace(snp_claims, guest_svn=2))) == "security version"
    assert refused(tdx(measurement=b"\x45" * 48)) == "measurement"
    tdx_claims = tdx().claims
    assert isinstance(tdx_claims, TdxClaims)
    rtmrs = (*tdx_claims.rtmrs[:3], bytes(48))
    assert refused(tdx(claims=replace(tdx_claims, rtmrs=rtmrs))) == "rtmr"
    assert refused(tdx(claims=replace(tdx_claims, mr_seam=bytes(48)))) == "mr seam"
    assert refused(sgx(measurement=bytes(32))) == "measurement"
    sgx_claims = sgx().claims
    assert isinstance(sgx_claims, SgxClaims)
    assert refused(sgx(claims=replace(sgx_claims, mrsigner=bytes(32)))) == "signer"
    assert refused(sgx(claims=replace(sgx_claims, isv_prod_id=8))) == "product id"
    assert refused(sgx(claims=replace(sgx_claims, isv_svn=3))) == "security version"


def test_tcb_status_is_required_only_when_the_policy_names_statuses() -> None:
    wanting = HardwareExpectations(tdx=TdxExpectations(tcb_statuses=("UpToDate",)))
    assert refused(tdx(), wanting) == "tcb"  # not checked: no collateral
    assert refused(tdx(tcb_status="OutOfDate"), wanting) == "tcb"
    check_expectations(tdx(tcb_status="UpToDate"), wanting, report_data=SESSION)
    check_expectations(tdx(), HardwareExpectations(tdx=TdxExpectations()), report_data=SESSION)


def test_binding_can_be_skipped_only_explicitly() -> None:
    check_expectations(nitro(report_data=b""), STRICT, report_data=None)
    with pytest.raises(ValueError, match="64"):
        check_expectations(nitro(), STRICT, report_data=b"short")


def test_expectations_validate_their_values_when_made() -> None:
    with pytest.raises(ValueError, match="48 bytes"):
        SevSnpExpectations(measurements=("11" * 32,))
    with pytest.raises(TypeError, match="tuple"):
        TdxExpectations(mrtds="44" * 48)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="RTMR index"):
        TdxExpectations(rtmrs={4: b"\x00" * 48})
    with pytest.raises(ValueError, match="PCR"):
        NitroExpectations(pcrs={0: b"\x00" * 47})
    with pytest.raises(ValueError, match="32 bytes"):
        SgxExpectations(mrsigners=(b"\x00" * 31,))
