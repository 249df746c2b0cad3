"""What a client's policy requires of verified hardware evidence, and the check of it.

``HardwareExpectations`` names, per platform, the values the evidence must carry;
a platform with no expectations object is not accepted at all, so a policy that
pins a TDX MRTD cannot be satisfied by a Nitro document. ``check_expectations``
compares a ``HardwareReport`` (already cryptographically verified) against them
and against the 64 bytes of report data the TEE was asked to sign: in a session,
``farside.attestation.evidence.hardware_report_data`` (SHA-256 of the client's nonce,
then a hash binding the channel and the evidence body), which ``verify_evidence``
passes. For Nitro those 64 bytes are the document's ``user_data``, where
``NsmAttester`` puts them.

Every refusal raises ``AttestationError`` naming the check, as ``verify_evidence``
does: "platform", "nonce", "channel binding", "measurement", "pcr", "rtmr",
"mr seam", "host data", "signer", "product id", "security version", "tcb", "debug".
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ._report import HardwareReport, NitroClaims, SevSnpClaims, SgxClaims, TdxClaims, rejected

__all__ = [
    "HardwareExpectations",
    "NitroExpectations",
    "SevSnpExpectations",
    "SgxExpectations",
    "TdxExpectations",
    "check_expectations",
]


def _value(value: str | bytes, size: int, what: str) -> bytes:
    if not isinstance(value, str | bytes):
        raise TypeError(f"an expected {what} is hex or bytes, not {type(value).__name__}")
    raw = bytes.fromhex(value) if isinstance(value, str) else value
    if len(raw) != size:
        raise ValueError(f"an expected {what} is {size} bytes ({2 * size} hex digits)")
    return raw


def _values(values: Iterable[str | bytes], size: int, what: str) -> frozenset[bytes]:
    if isinstance(values, str | bytes):
        raise TypeError(f"expected {what}s are a tuple of values, not one value")
    return frozenset(_value(v, size, what) for v in values)


def _indexed(
    values: Mapping[int, str | bytes], sizes: Iterable[int], count: int, what: str
) -> dict[int, bytes]:
    result = {}
    for index, value in values.items():
        if not isinstance(index, int) or not 0 <= index < count:
            raise ValueError(f"a {what} index is an integer in [0, {count})")
        raw = bytes.fromhex(value) if isinstance(value, str) else value
        if not isinstance(raw, bytes) or len(raw) not in tuple(sizes):
            raise ValueError(f"the expected {what}{index} has the wrong size")
        result[index] = raw
    return result


def _match(actual: bytes, accepted: frozenset[bytes]) -> bool:
    return any(hmac.compare_digest(actual, value) for value in accepted)


@dataclass(frozen=True, slots=True, kw_only=True)
class NitroExpectations:
    """PCR values a Nitro enclave must report, by index (e.g. {0: image, 1: kernel, 2: app})."""

    pcrs: Mapping[int, str | bytes] = field(default_factory=dict)
    _pcrs: dict[int, bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pcrs", _indexed(self.pcrs, (32, 48, 64), 32, "PCR"))


@dataclass(frozen=True, slots=True, kw_only=True)
class SevSnpExpectations:
    """Accepted launch measurements (48 bytes), HOST_DATA (32) and a minimum guest SVN.

    ``collateral``: certificates the client holds for verifying reports in a session
    (the VCEK or VLEK from AMD's KDS, as PEM or DER), used with whatever the evidence
    carries (the host's certificate table): a report whose host provides no VCEK
    verifies only with one given here. Certificates are not trust anchors: each must
    still chain to a pinned AMD root.
    """

    measurements: tuple[str | bytes, ...] = ()
    host_data: str | bytes | None = None
    min_guest_svn: int = 0
    collateral: tuple[bytes, ...] = ()
    _measurements: frozenset[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_measurements", _values(self.measurements, 48, "measurement"))
        if self.host_data is not None:
            _value(self.host_data, 32, "host data")
        if isinstance(self.collateral, bytes | str) or not all(
            isinstance(item, bytes) for item in self.collateral
        ):
            raise TypeError("SevSnpExpectations.collateral is a tuple of certificates as bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class TdxExpectations:
    """Accepted MRTDs, RTMR values by index (0-3), TDX module MRSEAMs (all 48 bytes).

    ``tcb_statuses``: if given, Intel's TCB status must have been checked (TCB
    collateral, ``farside[tcb]``) and be one of these (e.g. "UpToDate").
    """

    mrtds: tuple[str | bytes, ...] = ()
    rtmrs: Mapping[int, str | bytes] = field(default_factory=dict)
    mr_seams: tuple[str | bytes, ...] = ()
    tcb_statuses: tuple[str, ...] = ()
    _mrtds: frozenset[bytes] = field(init=False, repr=False, compare=False)
    _rtmrs: dict[int, bytes] = field(init=False, repr=False, compare=False)
    _mr_seams: frozenset[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_mrtds", _values(self.mrtds, 48, "MRTD"))
        object.__setattr__(self, "_rtmrs", _indexed(self.rtmrs, (48,), 4, "RTMR"))
        object.__setattr__(self, "_mr_seams", _values(self.mr_seams, 48, "MRSEAM"))


@dataclass(frozen=True, slots=True, kw_only=True)
class SgxExpectations:
    """Accepted MRENCLAVEs and MRSIGNERs (32 bytes), ISV product id, minimum ISV SVN.

    ``tcb_statuses``: as for ``TdxExpectations``.
    """

    mrenclaves: tuple[str | bytes, ...] = ()
    mrsigners: tuple[str | bytes, ...] = ()
    product_id: int | None = None
    min_isv_svn: int = 0
    tcb_statuses: tuple[str, ...] = ()
    _mrenclaves: frozenset[bytes] = field(init=False, repr=False, compare=False)
    _mrsigners: frozenset[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_mrenclaves", _values(self.mrenclaves, 32, "MRENCLAVE"))
        object.__setattr__(self, "_mrsigners", _values(self.mrsigners, 32, "MRSIGNER"))


@dataclass(frozen=True, slots=True, kw_only=True)
class HardwareExpectations:
    """Per platform, what evidence of that platform must show; ``None`` refuses the platform.

    An empty expectations object (e.g. ``TdxExpectations()``) accepts any enclave of
    that platform whose evidence verifies to the vendor's root: development only.
    ``allow_debug``: accept enclaves the platform marks as debug (readable by the host).
    """

    nitro: NitroExpectations | None = None
    sev_snp: SevSnpExpectations | None = None
    tdx: TdxExpectations | None = None
    sgx: SgxExpectations | None = None
    allow_debug: bool = False


def _check_binding(actual: bytes, expected: bytes) -> None:
    if len(actual) != 64 or not hmac.compare_digest(actual[:32], expected[:32]):
        raise rejected("nonce", "the evidence was not made for this session's nonce (a replay?)")
    if not hmac.compare_digest(actual[32:], expected[32:]):
        raise rejected("channel binding", "the evidence was made for another session's channel")


def _check_tcb(status: str | None, accepted: tuple[str, ...]) -> None:
    if accepted and status not in accepted:
        found = "was not checked (no TCB collateral)" if status is None else f"is {status}"
        raise rejected(
            "tcb", f"the platform's TCB status {found}; the policy accepts {', '.join(accepted)}"
        )


def _check_nitro(claims: NitroClaims, wanted: NitroExpectations) -> None:
    for index, value in sorted(wanted._pcrs.items()):
        if not hmac.compare_digest(claims.pcrs.get(index, b""), value):
            raise rejected("pcr", f"PCR{index} is not the value the policy expects")


def _check_sev_snp(
    report: HardwareReport, claims: SevSnpClaims, wanted: SevSnpExpectations
) -> None:
    if wanted._measurements and not _match(report.measurement, wanted._measurements):
        raise rejected(
            "measurement", f"the launch measurement {report.measurement.hex()} is not accepted"
        )
    if wanted.host_data is not None and not hmac.compare_digest(
        claims.host_data, _value(wanted.host_data, 32, "host data")
    ):
        raise rejected("host data", "HOST_DATA is not the value the policy expects")
    if claims.guest_svn < wanted.min_guest_svn:
        raise rejected("security version", f"guest SVN {claims.guest_svn} < {wanted.min_guest_svn}")


def _check_tdx(report: HardwareReport, claims: TdxClaims, wanted: TdxExpectations) -> None:
    if wanted._mrtds and not _match(report.measurement, wanted._mrtds):
        raise rejected("measurement", f"the MRTD {report.measurement.hex()} is not accepted")
    for index, value in sorted(wanted._rtmrs.items()):
        if not hmac.compare_digest(claims.rtmrs[index], value):
            raise rejected("rtmr", f"RTMR{index} is not the value the policy expects")
    if wanted._mr_seams and not _match(claims.mr_seam, wanted._mr_seams):
        raise rejected("mr seam", "the TDX module's MRSEAM is not accepted")
    _check_tcb(report.tcb_status, wanted.tcb_statuses)


def _check_sgx(report: HardwareReport, claims: SgxClaims, wanted: SgxExpectations) -> None:
    if wanted._mrenclaves and not _match(report.measurement, wanted._mrenclaves):
        raise rejected("measurement", f"the MRENCLAVE {report.measurement.hex()} is not accepted")
    if wanted._mrsigners and not _match(claims.mrsigner, wanted._mrsigners):
        raise rejected("signer", f"the MRSIGNER {claims.mrsigner.hex()} is not accepted")
    if wanted.product_id is not None and claims.isv_prod_id != wanted.product_id:
        raise rejected(
            "product id", f"ISV product id {claims.isv_prod_id} is not {wanted.product_id}"
        )
    if claims.isv_svn < wanted.min_isv_svn:
        raise rejected("security version", f"ISV SVN {claims.isv_svn} < {wanted.min_isv_svn}")
    _check_tcb(report.tcb_status, wanted.tcb_statuses)


def check_expectations(
    report: HardwareReport,
    expectations: HardwareExpectations,
    *,
    report_data: bytes | None,
) -> None:
    """Raise ``AttestationError`` naming the first check ``report`` fails; return if it passes.

    ``report_data``: the 64 bytes the TEE was asked to sign (in a session,
    ``evidence.hardware_report_data``); ``None`` skips the binding, for offline
    inspection only (``farside evidence verify``), never for a session.
    """
    if report_data is not None and len(report_data) != 64:
        raise ValueError("report_data is the session's 64 bytes")
    wanted = {
        "nitro": expectations.nitro,
        "sev-snp": expectations.sev_snp,
        "tdx": expectations.tdx,
        "sgx": expectations.sgx,
    }.get(report.format)
    if wanted is None:
        raise rejected("platform", f"the policy does not accept {report.format} evidence")
    if report_data is not None:
        _check_binding(report.report_data, report_data)
    claims = report.claims
    if isinstance(claims, NitroClaims) and isinstance(wanted, NitroExpectations):
        _check_nitro(claims, wanted)
    elif isinstance(claims, SevSnpClaims) and isinstance(wanted, SevSnpExpectations):
        _check_sev_snp(report, claims, wanted)
    elif isinstance(claims, TdxClaims) and isinstance(wanted, TdxExpectations):
        _check_tdx(report, claims, wanted)
    elif isinstance(claims, SgxClaims) and isinstance(wanted, SgxExpectations):
        _check_sgx(report, claims, wanted)
    else:
        raise rejected("platform", f"the report's claims are not {report.format} claims")
    if report.debug and not expectations.allow_debug:
        raise rejected(
            "debug", f"the {report.format} enclave runs in debug mode and the policy forbids it"
        )
