"""One entry point for hardware evidence: find out what it is, and verify it as that.

``verify_hardware_evidence`` takes the raw evidence an attester produced (a Nitro
document, an SEV-SNP report, a TDX or SGX quote), or the same bytes as base64 or
hex text, and returns a ``HardwareReport`` once everything cryptographic checked
out against the pinned vendor roots. What the claims must be is
``check_expectations``'s business. Offline: nothing here touches the network.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Sequence
from datetime import datetime

from ..._errors import AttestationError
from . import _dcap_format, nitro, sev_snp
from ._report import FORMATS, HardwareReport, rejected

__all__ = ["decode_evidence_text", "detect_format", "verify_hardware_evidence"]

_HEX = re.compile(rb"(?:0x)?[0-9a-fA-F]+")
_BASE64 = re.compile(rb"[A-Za-z0-9+/_-]+={0,2}")
_WHITESPACE = re.compile(rb"\s+")


def decode_evidence_text(data: bytes) -> bytes:
    """``data`` itself if it is binary; decoded if it is hex (optionally 0x) or base64 text.

    Raw evidence of every supported kind starts with a non-printable byte, so text
    is never mistaken for it.
    """
    if not data or not all(32 <= b < 127 or b in b"\t\n\r" for b in data):
        return data
    text = _WHITESPACE.sub(b"", data)
    if _HEX.fullmatch(text) and len(text.removeprefix(b"0x")) % 2 == 0:
        return bytes.fromhex(text.removeprefix(b"0x").decode("ascii"))
    if _BASE64.fullmatch(text):
        alphabet = b"-_" if b"-" in text or b"_" in text else b"+/"
        try:
            return base64.b64decode(
                text + b"=" * (-len(text) % 4), altchars=alphabet, validate=True
            )
        except binascii.Error:
            pass
    raise rejected("format", "the evidence is text, but neither hex nor base64")


def detect_format(data: bytes) -> str:
    """ "nitro", "sev-snp", "tdx" or "sgx" for binary evidence; rejects with "format" otherwise."""
    if nitro.looks_like_nitro(data):
        return "nitro"
    if sev_snp.looks_like_sev_snp(data):
        return "sev-snp"
    if _dcap_format.looks_like_dcap(data):
        version, _key, tee_type = struct.unpack_from("<HHI", data, 0)
        if version == 5 and len(data) >= 50:
            return "sgx" if struct.unpack_from("<H", data, 48)[0] == 1 else "tdx"
        return "tdx" if version != 3 and tee_type == _dcap_format.TEE_TDX else "sgx"
    raise rejected("format", "not a Nitro document, SEV-SNP report, or TDX/SGX quote")


def _verify(
    data: bytes, kind: str, at: datetime | None, collateral: Sequence[bytes]
) -> HardwareReport:
    if kind == "nitro":
        if collateral:
            raise rejected("collateral", "a Nitro document carries its own certificates; give none")
        return nitro.verify_nitro(data, at=at)
    if kind == "sev-snp":
        return sev_snp.verify_sev_snp(data, at=at, collateral=collateral)
    from .dcap import verify_dcap

    report = verify_dcap(data, at=at, collateral=collateral)
    if report.format != kind:
        raise rejected(
            "format", f"the quote is a {report.format.upper()} quote, not {kind.upper()}"
        )
    return report


def verify_hardware_evidence(
    data: bytes,
    *,
    format: str = "auto",
    at: datetime | None = None,
    collateral: Sequence[bytes] = (),
) -> HardwareReport:
    """Verify TEE evidence offline against the pinned vendor roots; return what it says.

    ``data``: a Nitro attestation document (COSE_Sign1), an SEV-SNP report, or a
    TDX/SGX DCAP quote; raw, or as base64/hex text. ``format``: "auto" (detect) or
    one of ``FORMATS``. ``at``: the time at which every certificate must be valid
    (timezone-aware; default now). ``collateral``: SEV-SNP: the VCEK/VLEK (PEM, DER
    or an extended report's certificate table), optionally ASK/ARK; DCAP: optional
    TCB collateral (dcap-qvl JSON, needs ``farside[tcb]``); Nitro: none.

    Raises ``AttestationError`` whose ``check`` names the failed check; never
    returns an unverified report.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"evidence is bytes, not {type(data).__name__}")
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format is 'auto' or one of {', '.join(FORMATS)}, not {format!r}")
    if at is not None and (not isinstance(at, datetime) or at.utcoffset() is None):
        raise ValueError("at is a timezone-aware datetime")
    if isinstance(collateral, bytes | str) or not all(
        isinstance(item, bytes | bytearray | memoryview) for item in collateral
    ):
        raise TypeError("collateral is a sequence of bytes objects")
    items = [bytes(item) for item in collateral]
    try:
        raw = decode_evidence_text(bytes(data))
        kind = detect_format(raw) if format == "auto" else format
        return _verify(raw, kind, at, items)
    except AttestationError:
        raise
    except (ValueError, IndexError, struct.error, OverflowError) as exc:
        # Fail closed: a parser slip on hostile bytes is a malformed-evidence rejection.
        raise AttestationError("malformed evidence", check="format") from exc
