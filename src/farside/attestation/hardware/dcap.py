"""Intel DCAP quotes (TDX v4/v5, SGX v3/v4/v5), verified offline against the pinned Intel root.

The chain of trust, checked in this order (``_dcap_format`` has the byte layout):

1. the PCK certificate chain embedded in the quote (certification data type 5)
   leads to the pinned Intel SGX Root CA;
2. the PCK key signs the quoting enclave's (QE) report;
3. the QE is Intel's: its MRSIGNER and product id are those of Intel's SGX QE3 or
   TDX QE, and it is not a debug enclave (what Intel's QE identity collateral says
   of MRSIGNER and product id, without needing the collateral; its TCB levels
   are left to the optional TCB check);
4. the QE report binds the attestation key: REPORTDATA = SHA-256(attestation key ||
   QE auth data) || 32 zero bytes;
5. the attestation key signs the quote's header and body;
6. every certificate is valid at ``at``.

What a quote cannot prove by itself is whether its platform's TCB is up to date:
that is Intel's signed TCB info and QE identity (collateral from Intel's PCS or a
PCCS). Given that collateral, and the optional ``dcap-qvl`` package
(``pip install 'farside[tcb]'``), ``verify_dcap`` also records Intel's TCB status
and advisories in the report, and refuses a revoked platform.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from . import _chain
from ._dcap_format import TEE_SGX, Quote, parse_quote
from ._report import HardwareReport, SgxClaims, TdxClaims, rejected

__all__ = ["verify_dcap"]

# Intel's quoting enclaves, as Intel's QE identity collateral names them
# (api.trustedservices.intel.com/{sgx,tdx}/certification/v4/qe/identity).
_INTEL_QES = {
    "sgx": (bytes.fromhex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff"), 1),
    "tdx": (bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"), 2),
}
_SGX_DEBUG = 0x02  # ATTRIBUTES.DEBUG: bit 1 of the first byte
_TD_DEBUG = 0x01  # TDATTRIBUTES.DEBUG: bit 0


def _p256_verify(key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _check_qe(quote: Quote, pck: x509.Certificate, platform: str) -> None:
    key = pck.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise rejected("qe report", "the PCK certificate's key is not ECDSA P-256")
    if not _p256_verify(key, quote.qe_report_signature, quote.qe_report):
        raise rejected("qe report", "the QE report is not signed by the PCK key")
    qe = quote.qe_report
    signer, product_id = _INTEL_QES[platform]
    if qe[128:160] != signer or struct.unpack_from("<H", qe, 256)[0] != product_id:
        raise rejected("qe identity", f"the quoting enclave is not Intel's {platform.upper()} QE")
    if qe[48] & _SGX_DEBUG:
        raise rejected("qe identity", "the quoting enclave is a debug enclave")
    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    if qe[320:384] != expected:
        raise rejected(
            "attestation key", "the QE report does not vouch for the quote's attestation key"
        )


def _check_quote_signature(quote: Quote) -> None:
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b"\x04" + quote.attestation_key
        )
    except ValueError:
        raise rejected(
            "attestation key", "the quote's attestation key is not a P-256 point"
        ) from None
    if not _p256_verify(key, quote.signature, quote.signed):
        raise rejected(
            "signature", "the quote's signature does not verify under its attestation key"
        )


def _sgx_report(quote: Quote) -> HardwareReport:
    body = quote.body
    return HardwareReport(
        format="sgx",
        measurement=body[64:96],
        report_data=body[320:384],
        debug=bool(body[48] & _SGX_DEBUG),
        claims=SgxClaims(
            quote_version=quote.version,
            cpu_svn=body[0:16],
            misc_select=struct.unpack_from("<I", body, 16)[0],
            attributes=body[48:64],
            mrsigner=body[128:160],
            isv_prod_id=struct.unpack_from("<H", body, 256)[0],
            isv_svn=struct.unpack_from("<H", body, 258)[0],
        ),
    )


def _tdx_report(quote: Quote) -> HardwareReport:
    body = quote.body
    rtmrs = tuple(body[328 + 48 * i : 376 + 48 * i] for i in range(4))
    return HardwareReport(
        format="tdx",
        measurement=body[136:184],
        report_data=body[520:584],
        debug=bool(body[120] & _TD_DEBUG),
        claims=TdxClaims(
            quote_version=quote.version,
            tee_tcb_svn=body[0:16],
            mr_seam=body[16:64],
            mr_signer_seam=body[64:112],
            seam_attributes=body[112:120],
            td_attributes=body[120:128],
            xfam=body[128:136],
            mr_config_id=body[184:232],
            mr_owner=body[232:280],
            mr_owner_config=body[280:328],
            rtmrs=(rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]),
            tee_tcb_svn2=body[584:600],
            mr_servicetd=body[600:648],
        ),
    )


def _tcb_status(
    data: bytes, collateral: Sequence[bytes], at: datetime
) -> tuple[str, tuple[str, ...]]:
    """Intel's TCB status of the quote's platform, by dcap-qvl from the given collateral."""
    try:
        import dcap_qvl
    except ImportError:
        raise rejected(
            "collateral",
            "TCB collateral was given but checking it needs dcap-qvl: pip install 'farside[tcb]'",
        ) from None
    if len(collateral) != 1:
        raise rejected(
            "collateral", "give one TCB collateral file (dcap-qvl's JSON) for a DCAP quote"
        )
    try:
        text = collateral[0].decode("utf-8")
        json.loads(text)
        verified = dcap_qvl.verify(
            data, dcap_qvl.QuoteCollateralV3.from_json(text), int(at.timestamp())
        )
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise rejected("collateral", "the TCB collateral is not dcap-qvl's JSON") from None
    except Exception as exc:  # dcap-qvl raises ValueError and RuntimeError of its own
        raise rejected("tcb", f"Intel's collateral does not accept this quote: {exc}") from exc
    status = str(verified.status)
    if status == "Revoked":
        raise rejected("tcb", "Intel's collateral says this platform's TCB is revoked")
    return status, tuple(str(a) for a in verified.advisory_ids)


def _verify(
    data: bytes,
    *,
    at: datetime | None,
    roots: Sequence[x509.Certificate],
    collateral: Sequence[bytes] = (),
) -> HardwareReport:
    quote = parse_quote(data)
    platform = "sgx" if quote.tee_type == TEE_SGX else "tdx"
    certificates = _chain.load_certificates(
        quote.pck_chain.rstrip(b"\0"), check="certificate chain", what="the PCK chain"
    )
    path = _chain.verify_chain(certificates[0], certificates[1:], roots, vendor="Intel SGX Root CA")
    _check_qe(quote, certificates[0], platform)
    _check_quote_signature(quote)
    when = datetime.now(UTC) if at is None else at
    _chain.check_validity(path, when)
    report = _sgx_report(quote) if platform == "sgx" else _tdx_report(quote)
    if not collateral:
        return report
    status, advisories = _tcb_status(data, collateral, when)
    return HardwareReport(
        format=report.format,
        measurement=report.measurement,
        report_data=report.report_data,
        debug=report.debug,
        claims=report.claims,
        tcb_status=status,
        advisory_ids=advisories,
    )


def verify_dcap(
    data: bytes, *, at: datetime | None = None, collateral: Sequence[bytes] = ()
) -> HardwareReport:
    """Verify a TDX or SGX DCAP quote against the pinned Intel SGX Root CA.

    The PCK chain comes from the quote itself. ``collateral`` is optional: Intel's
    TCB collateral as dcap-qvl's JSON, to record the TCB status (needs
    ``farside[tcb]``). ``at``: when the certificates must be valid (default: now).
    Returns a report whose ``format`` is "tdx" or "sgx"; raises ``AttestationError``.
    """
    from ._roots import INTEL_SGX_ROOT

    return _verify(data, at=at, roots=(INTEL_SGX_ROOT,), collateral=collateral)
