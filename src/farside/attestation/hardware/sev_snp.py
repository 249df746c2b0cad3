"""AMD SEV-SNP attestation reports, verified offline against the pinned AMD Root Keys.

A report (SEV-SNP firmware ABI, ATTESTATION_REPORT, 0x4A0 bytes) is signed by the
chip's VCEK (or, in clouds, a VLEK) with ECDSA P-384/SHA-384 over bytes
[0, 0x2A0); R and S sit at 0x2A0 as 72-byte little-endian fields. The VCEK is not
in the report: it is collateral the caller supplies (from AMD's KDS, from the
host's extended report — configfs-tsm ``auxblob`` — or from a cache), as PEM,
DER, or the GUID-keyed certificate table of an extended report.

Verification: the VCEK/VLEK chains through AMD's ASK/ASVK (taken from the
collateral or from ``_amd_certs``) to a pinned ARK (RSA-PSS signatures); the
report's signature verifies under it; a VCEK is the one for this chip and TCB
(its hwID extension is the report's CHIP_ID unless the guest masked it, its SPL
extensions the report's REPORTED_TCB); every certificate is valid at ``at``.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from . import _chain
from ._report import HardwareReport, SevSnpClaims, rejected

__all__ = ["REPORT_SIZE", "looks_like_sev_snp", "parse_certificate_table", "verify_sev_snp"]

REPORT_SIZE = 0x4A0
_SIGNED_END = 0x2A0
_SIGNATURE_END = _SIGNED_END + 144
_ECDSA_P384_SHA384 = 1
_POLICY_DEBUG = 1 << 19
_FLAG_MASK_CHIP_ID = 1 << 1
_SIGNING_KEYS = {0: "vcek", 1: "vlek"}
_LEAF_NAMES = {"vcek": "SEV-VCEK", "vlek": "SEV-VLEK"}

# VCEK extensions (AMD, "Versioned Chip Endorsement Key (VCEK) Certificate and KDS
# Interface Specification"): SPLs as DER INTEGERs, hwID as the raw chip id.
_AMD_OID = "1.3.6.1.4.1.3704.1."
_OID_HWID = x509.ObjectIdentifier(_AMD_OID + "4")
_SPL_OIDS = {
    "fmc": x509.ObjectIdentifier(_AMD_OID + "3.9"),
    "bootloader": x509.ObjectIdentifier(_AMD_OID + "3.1"),
    "tee": x509.ObjectIdentifier(_AMD_OID + "3.2"),
    "snp": x509.ObjectIdentifier(_AMD_OID + "3.3"),
    "microcode": x509.ObjectIdentifier(_AMD_OID + "3.8"),
}
# Byte offsets of each SPL inside a 64-bit TCB_VERSION, per product line.
_TCB_LAYOUTS = {
    "Milan": {"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7},
    "Genoa": {"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7},
    "Turin": {"fmc": 0, "bootloader": 1, "tee": 2, "snp": 3, "microcode": 7},
}


def looks_like_sev_snp(data: bytes) -> bool:
    """Whether ``data`` is report-sized with a report version and ECDSA P-384 as its algorithm."""
    if len(data) != REPORT_SIZE:
        return False
    (version,) = struct.unpack_from("<I", data, 0)
    (algorithm,) = struct.unpack_from("<I", data, 0x34)
    return bool(2 <= version <= 5 and algorithm == _ECDSA_P384_SHA384)


def parse_certificate_table(table: bytes) -> list[bytes]:
    """The DER certificates of an extended report's certificate table (configfs ``auxblob``).

    Entries are (GUID, offset, length) triples, offsets from the table's start,
    ending with an all-zero entry; which GUID says which key does not matter here,
    since each certificate's place is decided by the chain walk.
    """
    found: list[bytes] = []
    for start in range(0, len(table) - 23, 24):
        guid = table[start : start + 16]
        offset, length = struct.unpack_from("<II", table, start + 16)
        if guid == bytes(16):
            return found
        if length == 0 or offset + length > len(table) or len(found) >= 8:
            raise rejected("collateral", "the certificate table has an entry outside the table")
        found.append(table[offset : offset + length])
    raise rejected("collateral", "the certificate table has no terminating entry")


def _load_collateral(items: Sequence[bytes]) -> list[x509.Certificate]:
    certificates: list[x509.Certificate] = []
    for item in items:
        looks_like_certificate = item[:1] == b"\x30" or b"-----BEGIN" in item
        blobs = [item] if looks_like_certificate else parse_certificate_table(item)
        for blob in blobs:
            # AMD's KDS has issued VCEKs with serial number 0, which RFC 5280 forbids and
            # cryptography warns about (CryptographyDeprecationWarning) at load. The serial
            # plays no part in this verification, so that one warning, and only around this
            # load, is expected rather than a sign of trouble.
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore",
                    message="Parsed a serial number which wasn't positive",
                    category=CryptographyDeprecationWarning,
                )
                certificates.extend(
                    _chain.load_certificates(blob, check="collateral", what="a collateral item")
                )
    return certificates


def _common_name(certificate: x509.Certificate) -> str:
    try:
        names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    except ValueError:
        return ""
    return str(names[0].value) if names else ""


def _der_small_int(raw: bytes) -> int | None:
    if len(raw) < 3 or raw[0] != 0x02 or raw[1] != len(raw) - 2 or raw[1] > 2:
        return None
    return int.from_bytes(raw[2:], "big", signed=True)


def _extension(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        value = certificate.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:
        raise rejected("collateral", "the VCEK has malformed extensions") from None
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def _issued_for_chip(certificate: x509.Certificate, chip_id: bytes) -> bool:
    hwid = _extension(certificate, _OID_HWID)
    return bool(hwid) and chip_id.startswith(hwid or b"")


def _check_vcek_binding(vcek: x509.Certificate, report: bytes, product: str) -> None:
    """A VCEK is per chip and per TCB: it must be this chip's, at the TCB the report claims."""
    flags = struct.unpack_from("<I", report, 0x48)[0]
    if not flags & _FLAG_MASK_CHIP_ID and not _issued_for_chip(vcek, report[0x1A0:0x1E0]):
        raise rejected("collateral", "the VCEK was issued for another chip (hwID != CHIP_ID)")
    reported_tcb = report[0x180:0x188]
    for name, position in _TCB_LAYOUTS[product].items():
        raw = _extension(vcek, _SPL_OIDS[name])
        spl = None if raw is None else _der_small_int(raw)
        if spl != reported_tcb[position]:
            raise rejected(
                "collateral",
                f"the VCEK is for another TCB ({name} SPL {spl}, the report has "
                f"{reported_tcb[position]}); fetch the VCEK for the reported TCB",
            )


def _parse(report: bytes) -> tuple[int, int, str]:
    if len(report) != REPORT_SIZE:
        raise rejected("format", f"an SEV-SNP report is {REPORT_SIZE} bytes, not {len(report)}")
    version, _guest_svn, policy = struct.unpack_from("<IIQ", report, 0)
    if not 2 <= version <= 5:
        raise rejected("format", f"unsupported SEV-SNP report version {version}")
    if struct.unpack_from("<I", report, 0x34)[0] != _ECDSA_P384_SHA384:
        raise rejected("format", "the report's signature algorithm is not ECDSA P-384 with SHA-384")
    if any(report[_SIGNATURE_END:]):
        raise rejected("format", "the report's reserved bytes after the signature are not zero")
    signing_key = _SIGNING_KEYS.get((struct.unpack_from("<I", report, 0x48)[0] >> 2) & 0b111)
    if signing_key is None:
        raise rejected("format", "the report is not signed by a VCEK or a VLEK")
    return version, policy, signing_key


def _verify(
    report: bytes,
    *,
    at: datetime | None,
    collateral: Sequence[bytes],
    arks: dict[str, x509.Certificate],
    intermediates: Sequence[x509.Certificate],
) -> HardwareReport:
    version, policy, signing_key = _parse(report)
    supplied = _load_collateral(collateral)
    leaves = [c for c in supplied if _common_name(c) == _LEAF_NAMES[signing_key]]
    if not leaves:
        raise rejected(
            "collateral",
            f"the report is signed by a {signing_key.upper()}: supply that certificate as "
            "collateral (AMD KDS, or the host's extended report / configfs auxblob)",
        )
    chip_id = report[0x1A0:0x1E0]
    leaves.sort(key=lambda c: not _issued_for_chip(c, chip_id))  # stable: this chip's first
    leaf = leaves[0]
    others = [c for c in supplied if c is not leaf]
    path = _chain.verify_chain(
        leaf, [*others, *intermediates], list(arks.values()), vendor="AMD ARK"
    )
    product = next(name for name, ark in arks.items() if _chain.der(ark) == _chain.der(path[-1]))
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise rejected("signature", f"the {signing_key.upper()}'s key is not ECDSA P-384")
    r = int.from_bytes(report[_SIGNED_END : _SIGNED_END + 72], "little")
    s = int.from_bytes(report[_SIGNED_END + 72 : _SIGNATURE_END], "little")
    try:
        key.verify(encode_dss_signature(r, s), report[:_SIGNED_END], ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise rejected(
            "signature", f"the report's signature does not verify under the {signing_key}"
        ) from None
    if signing_key == "vcek":
        _check_vcek_binding(leaf, report, product)
    _chain.check_validity(path, datetime.now(UTC) if at is None else at)
    (guest_svn,) = struct.unpack_from("<I", report, 0x04)
    (vmpl,) = struct.unpack_from("<I", report, 0x30)
    current_tcb, platform_info = struct.unpack_from("<QQ", report, 0x38)
    return HardwareReport(
        format="sev-snp",
        measurement=report[0x90:0xC0],
        report_data=report[0x50:0x90],
        debug=bool(policy & _POLICY_DEBUG),
        claims=SevSnpClaims(
            version=version,
            guest_svn=guest_svn,
            policy=policy,
            family_id=report[0x10:0x20],
            image_id=report[0x20:0x30],
            vmpl=vmpl,
            host_data=report[0xC0:0xE0],
            id_key_digest=report[0xE0:0x110],
            author_key_digest=report[0x110:0x140],
            report_id=report[0x140:0x160],
            chip_id=chip_id,
            current_tcb=current_tcb,
            reported_tcb=struct.unpack_from("<Q", report, 0x180)[0],
            committed_tcb=struct.unpack_from("<Q", report, 0x1E0)[0],
            launch_tcb=struct.unpack_from("<Q", report, 0x1F8)[0],
            platform_info=platform_info,
            signing_key=signing_key,
            product=product,
        ),
    )


def verify_sev_snp(
    report: bytes, *, at: datetime | None = None, collateral: Sequence[bytes] = ()
) -> HardwareReport:
    """Verify an SEV-SNP attestation report against the pinned AMD ARKs.

    ``collateral``: the VCEK (or VLEK) certificate, optionally its ASK and ARK, each
    as PEM, DER or an extended report's certificate table. ``at``: when the
    certificates must be valid (default: now). Raises ``AttestationError``.
    """
    from ._amd_certs import AMD_INTERMEDIATE_PEMS
    from ._roots import AMD_ARKS

    intermediates = [
        _chain.load_certificates(pem, check="collateral", what="an AMD intermediate")[0]
        for pem in AMD_INTERMEDIATE_PEMS
    ]
    return _verify(report, at=at, collateral=collateral, arks=AMD_ARKS, intermediates=intermediates)
