"""The byte layout of Intel DCAP ECDSA quotes: SGX v3, TDX (and SGX) v4, v5. Parsing only.

Layout (Intel SGX ECDSA Quote Library API; Intel TDX DCAP Quoting Library API)::

    header (48)        version u16, attestation key type u16 (2: ECDSA P-256),
                       TEE type u32 (v4/v5: 0 SGX, 0x81 TDX), QE/PCE SVNs or
                       reserved, QE vendor id (16), user data (20)
    v5 only            body type u16 (1 SGX report, 2 TD report 1.0, 3 TD report 1.5),
                       body size u32
    body               SGX report body (384) | TD report 1.0 (584) | TD report 1.5 (648)
    signature data     length u32, then:
                       quote signature (64: r||s) under the attestation key,
                       attestation key (64: x||y, P-256),
                       v3: QE report (384), QE report signature (64), QE auth data
                           (u16 length + bytes), certification data (type 5: PCK chain)
                       v4/v5: certification data of type 6 wrapping exactly that
                           QE report / signature / auth data / type-5 certification data

The attestation key signs header + (v5 type and size) + body; the PCK key signs
the QE report; the QE report's data is SHA-256(attestation key || auth data)
followed by 32 zero bytes. Bytes after the signature data are tolerated only if
they are zero (quote buffers are often padded), since nothing signs them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._report import rejected

__all__ = ["Quote", "looks_like_dcap", "parse_quote"]

TEE_SGX = 0x00000000
TEE_TDX = 0x00000081
_HEADER = 48
_SGX_REPORT = 384
_TD_REPORT_10 = 584
_TD_REPORT_15 = 648
_V5_BODIES = {1: (TEE_SGX, _SGX_REPORT), 2: (TEE_TDX, _TD_REPORT_10), 3: (TEE_TDX, _TD_REPORT_15)}
_ECDSA_P256 = 2
_CERT_PCK_CHAIN = 5
_CERT_QE_REPORT = 6
_MAX_CERT_DATA = 16 * 1024
#: Quotes are a few kilobytes; a PCK chain is three certificates.
MAX_QUOTE_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Quote:
    """A DCAP quote's parts, unverified."""

    version: int
    tee_type: int
    body_type: int
    signed: bytes
    body: bytes
    signature: bytes
    attestation_key: bytes
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain: bytes


def looks_like_dcap(data: bytes) -> bool:
    """Whether ``data`` starts like a DCAP quote header (version 3-5, ECDSA P-256 key)."""
    if len(data) < _HEADER:
        return False
    version, key_type = struct.unpack_from("<HH", data, 0)
    return version in (3, 4, 5) and key_type == _ECDSA_P256


class _Reader:
    """Bounds-checked little-endian reads; running off the end is a "format" rejection."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.offset = 0
        self.what = what

    def take(self, size: int) -> bytes:
        if size < 0 or self.offset + size > len(self.data):
            raise rejected("format", f"the {self.what} is truncated")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def certification_data(self, expected_type: int) -> bytes:
        kind, size = self.u16(), self.u32()
        if kind != expected_type:
            raise rejected(
                "format", f"the quote's certification data is type {kind}, not {expected_type}"
            )
        if size > _MAX_CERT_DATA:
            raise rejected("format", "the quote's certification data is too large")
        return self.take(size)


def _body(reader: _Reader, version: int, tee_type: int) -> tuple[int, bytes]:
    if version == 5:
        body_type, size = reader.u16(), reader.u32()
        if _V5_BODIES.get(body_type, (None, None))[1] != size:
            raise rejected("format", f"unknown v5 quote body (type {body_type}, {size} bytes)")
        return body_type, reader.take(size)
    if tee_type == TEE_SGX:
        return 1, reader.take(_SGX_REPORT)
    return 2, reader.take(_TD_REPORT_10)


def parse_quote(data: bytes) -> Quote:
    """Split a DCAP quote into its parts, strictly; raises ``AttestationError("format")``."""
    if len(data) > MAX_QUOTE_SIZE:
        raise rejected("format", f"the quote is larger than {MAX_QUOTE_SIZE} bytes")
    if not looks_like_dcap(data):
        raise rejected("format", "not a DCAP ECDSA-P256 quote of version 3, 4 or 5")
    reader = _Reader(data, "quote")
    version, _key_type, tee_type = struct.unpack("<HHI", reader.take(8))
    reader.take(_HEADER - 8)
    if version == 3:
        tee_type = TEE_SGX  # v3 is SGX only; these four bytes are reserved there
    elif tee_type not in (TEE_SGX, TEE_TDX):
        raise rejected("format", f"unknown TEE type {tee_type:#x}")
    body_type, body = _body(reader, version, tee_type)
    if version == 5 and _V5_BODIES[body_type][0] != tee_type:
        raise rejected("format", "the quote's body type does not match its TEE type")
    signed = data[: reader.offset]
    signature_data = reader.take(reader.u32())
    if any(data[reader.offset :]):
        raise rejected("format", "the quote has non-zero bytes after its signature data")
    sig = _Reader(signature_data, "quote's signature data")
    signature, attestation_key = sig.take(64), sig.take(64)
    qe = _Reader(
        signature_data[sig.offset :] if version == 3 else sig.certification_data(_CERT_QE_REPORT),
        "quote's QE certification data",
    )
    qe_report, qe_report_signature = qe.take(_SGX_REPORT), qe.take(64)
    qe_auth_data = qe.take(qe.u16())
    pck_chain = qe.certification_data(_CERT_PCK_CHAIN)
    if qe.offset != len(qe.data) or (version != 3 and sig.offset != len(sig.data)):
        raise rejected("format", "the quote's signature data has unexpected trailing bytes")
    return Quote(
        version=version,
        tee_type=tee_type,
        body_type=body_type,
        signed=signed,
        body=body,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain=pck_chain,
    )
