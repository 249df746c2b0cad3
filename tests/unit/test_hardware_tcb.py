"""Intel TCB status through the optional dcap-qvl package (``farside[tcb]``), offline.

The quotes' own chain and signatures are farside's checks; with Intel's collateral
(here: dcap-qvl's samples, valid in July 2025) dcap-qvl adds the TCB status and
advisories. Skipped where dcap-qvl is not installed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

import farside
from farside.attestation.hardware import verify_hardware_evidence

pytest.importorskip("dcap_qvl")

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "hardware"
WHEN = datetime(2025, 7, 1, tzinfo=UTC)  # inside the samples' TCB info and CRL validity


@pytest.mark.parametrize(
    ("quote", "collateral", "status", "advisories"),
    [
        ("tdx/tdx_quote", "tdx/tdx_quote_collateral.json", "UpToDate", ()),
        (
            "sgx/sgx_quote",
            "sgx/sgx_quote_collateral.json",
            "ConfigurationAndSWHardeningNeeded",
            ("INTEL-SA-00289", "INTEL-SA-00615"),
        ),
    ],
)
def test_tcb_status_from_intels_collateral(
    quote: str, collateral: str, status: str, advisories: tuple[str, ...]
) -> None:
    report = verify_hardware_evidence(
        (VECTORS / quote).read_bytes(),
        at=WHEN,
        collateral=[(VECTORS / collateral).read_bytes()],
    )
    assert report.tcb_status == status
    assert report.advisory_ids == advisories


def test_stale_or_foreign_collateral_is_refused() -> None:
    quote = (VECTORS / "tdx" / "tdx_quote").read_bytes()
    collateral = (VECTORS / "tdx" / "tdx_quote_collateral.json").read_bytes()
    with pytest.raises(farside.AttestationError) as caught:
        verify_hardware_evidence(
            quote, at=datetime(2026, 6, 1, tzinfo=UTC), collateral=[collateral]
        )
    assert caught.value.check == "tcb"  # the CRLs had expired by then
    with pytest.raises(farside.AttestationError) as caught:
        verify_hardware_evidence(quote, at=WHEN, collateral=[b"not json"])
    assert caught.value.check == "collateral"
