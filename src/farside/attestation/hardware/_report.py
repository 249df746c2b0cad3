"""What a verified piece of hardware evidence says, and the one error its verifiers raise.

A verifier returns a ``HardwareReport`` only after every cryptographic check passed
(chain to a pinned root, signatures, validity); what the claims must *be* is the
policy's business (``expectations.check_expectations``). Every failure is an
``AttestationError`` whose ``check`` names the failed check, from this closed set:

    "format"             the bytes are not evidence of the claimed kind (truncated, malformed)
    "collateral"         collateral missing or unusable (SEV-SNP: no VCEK; DCAP: TCB collateral)
    "certificate chain"  a certificate is malformed, not a CA, or not signed by the next one
    "root"               the chain does not end at the pinned vendor root, whatever its names say
    "expired"            a certificate is not valid at the verification time
    "signature"          the evidence's own signature (COSE, report, quote) does not verify
    "timestamp"          (Nitro) the document's time lies outside its signing certificate's validity
    "qe report"          (DCAP) the quoting enclave's report is not signed by the PCK key
    "qe identity"        (DCAP) the quoting enclave is not Intel's, or is a debug enclave
    "attestation key"    (DCAP) the QE report does not vouch for the quote's attestation key
    "tcb"                (DCAP, optional) Intel's collateral rates the platform's TCB unacceptable

The message is one line, written to follow ``evidence rejected: CHECK: `` on the CLI.
This module owns only the types; it does no I/O and no cryptography.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from ..._errors import AttestationError

__all__ = [
    "FORMATS",
    "HardwareFormat",
    "HardwareReport",
    "NitroClaims",
    "SevSnpClaims",
    "SgxClaims",
    "TdxClaims",
    "rejected",
]

HardwareFormat = Literal["nitro", "sev-snp", "tdx", "sgx"]
#: The names of the evidence formats, as ``verify_hardware_evidence(format=...)`` takes them.
FORMATS: tuple[HardwareFormat, ...] = ("nitro", "sev-snp", "tdx", "sgx")


def rejected(check: str, message: str) -> AttestationError:
    """The one error of hardware verification: ``AttestationError`` naming ``check``."""
    return AttestationError(message, check=check)


def _frozen_mapping(value: Mapping[int, bytes]) -> Mapping[int, bytes]:
    return types.MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True, kw_only=True)
class NitroClaims:
    """An AWS Nitro Enclaves attestation document's signed fields, beyond the common ones.

    ``pcrs`` maps PCR index to value (PCR0 enclave image, PCR1 kernel and boot
    ramfs, PCR2 application, PCR3 parent's IAM role, PCR4 parent instance id,
    PCR8 signing certificate). ``timestamp`` is when the NSM signed the document.
    """

    module_id: str
    digest: str
    timestamp: datetime
    pcrs: Mapping[int, bytes]

    def __post_init__(self) -> None:
        object.__setattr__(self, "pcrs", _frozen_mapping(self.pcrs))


@dataclass(frozen=True, slots=True, kw_only=True)
class SevSnpClaims:
    """An AMD SEV-SNP attestation report's fields, beyond the common ones.

    ``policy`` is the guest policy (bit 19: debug allowed); ``product`` is the
    product line whose ARK anchored the VCEK/VLEK chain; ``signing_key`` is
    "vcek" or "vlek"; the TCB values are the raw 64-bit fields of the report.
    """

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    chip_id: bytes
    current_tcb: int
    reported_tcb: int
    committed_tcb: int
    launch_tcb: int
    platform_info: int
    signing_key: str
    product: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TdxClaims:
    """An Intel TDX quote's TD report fields, beyond the common ones (MRTD is ``measurement``).

    ``rtmrs`` are RTMR0..RTMR3; ``td_attributes`` bit 0 is DEBUG. ``mr_servicetd``
    and ``tee_tcb_svn2`` are present in TDX 1.5 reports (quote v5, body type 3), else empty.
    """

    quote_version: int
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    tee_tcb_svn2: bytes = b""
    mr_servicetd: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class SgxClaims:
    """An Intel SGX quote's enclave report fields, beyond the common ones (MRENCLAVE is
    ``measurement``); ``attributes`` bit 1 of its first byte is DEBUG."""

    quote_version: int
    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mrsigner: bytes
    isv_prod_id: int
    isv_svn: int


Claims = NitroClaims | SevSnpClaims | TdxClaims | SgxClaims


@dataclass(frozen=True, slots=True, kw_only=True)
class HardwareReport:
    """What verified hardware evidence says, once its chain and signatures checked out.

    ``measurement``: Nitro PCR0, SEV-SNP MEASUREMENT, TDX MRTD, SGX MRENCLAVE.
    ``report_data``: the bytes the attester bound into the evidence (SNP/TDX/SGX:
    the 64-byte REPORTDATA; Nitro: ``user_data``, ``b""`` if absent). ``debug``: the
    platform's own debug marker (Nitro: PCR0-2 all zero; SNP: policy bit 19;
    TDX: TD attribute DEBUG; SGX: attribute DEBUG). ``public_key``/``nonce``: Nitro's
    optional fields (``None`` elsewhere). ``claims``: the platform's other fields.
    ``tcb_status``: Intel's TCB status when TCB collateral was checked, else ``None``.
    """

    format: HardwareFormat
    measurement: bytes
    report_data: bytes
    debug: bool
    claims: Claims
    public_key: bytes | None = None
    nonce: bytes | None = None
    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = field(default=())
