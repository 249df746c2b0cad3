"""AWS Nitro Enclaves attestation documents, verified offline against the pinned AWS root.

A document is a COSE_Sign1 (RFC 9052) whose payload is a CBOR map made and signed
by the Nitro Secure Module: ``module_id``, ``digest``, ``timestamp`` (ms since the
epoch), ``pcrs``, the signing ``certificate``, its ``cabundle`` (root first), and
the optional ``public_key``, ``user_data`` and ``nonce`` the enclave asked for.

Verification, in order: the COSE structure and payload parse strictly (a
verifier that does not understand evidence must not accept it); the signing
certificate chains through ``cabundle`` to the pinned AWS Nitro root; the
COSE signature (ES384 over the RFC 9052 Sig_structure) verifies under the
certificate's P-384 key; every certificate is valid at ``at`` (default: now, so
an old document is refused as expired); and the document's timestamp lies in its
certificate's validity.

farside's attester puts its 64-byte session binding in ``user_data``
(``HardwareReport.report_data``); the NSM's ``nonce`` field is left to the caller.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from . import _chain
from ._report import HardwareReport, NitroClaims, rejected

__all__ = ["MAX_DOCUMENT_SIZE", "looks_like_nitro", "verify_nitro"]

#: The NSM answers in at most 0x3000 bytes; anything much larger is not a document.
MAX_DOCUMENT_SIZE = 64 * 1024
_COSE_SIGN1_TAG = 18
_ES384 = -35
_ALG = 1
_PCR_SIZES = {"SHA256": 32, "SHA384": 48, "SHA512": 64}
# The NSM API's limits (aws-nitro-enclaves-nsm-api): up to 32 PCRs, 512 bytes of
# user_data and nonce, 1024 of public_key.
_OPTIONAL_LIMITS = {"public_key": 1024, "user_data": 512, "nonce": 512}


def looks_like_nitro(data: bytes) -> bool:
    """Whether ``data`` starts like a COSE_Sign1 (tagged or not): a CBOR array of four."""
    return data[:2] == b"\xd2\x84" or data[:1] == b"\x84"


def _decode_cbor(data: bytes, what: str) -> Any:
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError, MemoryError):
        raise rejected("format", f"{what} is not valid CBOR") from None
    if stream.tell() != len(data):
        raise rejected("format", f"{what} has trailing bytes after its CBOR")
    return value


def _bytes_field(doc: Mapping[Any, Any], name: str, *, limit: int) -> bytes | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, bytes) or len(value) > limit:
        raise rejected(
            "format", f"the document's {name} is not a byte string of at most {limit} bytes"
        )
    return value


def _parse_payload(payload: bytes) -> Mapping[Any, Any]:
    doc = _decode_cbor(payload, "the document's payload")
    if not isinstance(doc, Mapping):
        raise rejected("format", "the document's payload is not a CBOR map")
    module_id = doc.get("module_id")
    if not isinstance(module_id, str) or not module_id:
        raise rejected("format", "the document has no module_id")
    if doc.get("digest") not in _PCR_SIZES:
        raise rejected("format", "the document's digest is not SHA256, SHA384 or SHA512")
    timestamp = doc.get("timestamp")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp <= 0:
        raise rejected("format", "the document's timestamp is not a positive integer")
    pcrs = doc.get("pcrs")
    size = _PCR_SIZES[doc["digest"]]
    if not isinstance(pcrs, Mapping) or not 1 <= len(pcrs) <= 32:
        raise rejected("format", "the document's pcrs is not a map of 1 to 32 PCRs")
    for index, value in pcrs.items():
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 32:
            raise rejected("format", "a PCR index is not an integer in [0, 32)")
        if not isinstance(value, bytes) or len(value) != size:
            raise rejected("format", f"PCR{index} is not {size} bytes")
    if not isinstance(doc.get("certificate"), bytes):
        raise rejected("format", "the document has no signing certificate")
    cabundle = doc.get("cabundle")
    if (
        not isinstance(cabundle, list | tuple)
        or not 1 <= len(cabundle) <= 8
        or not all(isinstance(c, bytes) for c in cabundle)
    ):
        raise rejected("format", "the document's cabundle is not a list of 1 to 8 certificates")
    for name, limit in _OPTIONAL_LIMITS.items():
        _bytes_field(doc, name, limit=limit)
    return doc


def _split_cose(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(protected header, payload, signature) of a COSE_Sign1 using ES384."""
    if len(data) > MAX_DOCUMENT_SIZE:
        raise rejected("format", f"the document is larger than {MAX_DOCUMENT_SIZE} bytes")
    cose = _decode_cbor(data, "the document")
    if isinstance(cose, cbor2.CBORTag):
        if cose.tag != _COSE_SIGN1_TAG:
            raise rejected("format", f"the document is CBOR tag {cose.tag}, not COSE_Sign1 (18)")
        cose = cose.value  # inside a tag cbor2 gives tuples and frozendicts: read-only views
    if not isinstance(cose, list | tuple) or len(cose) != 4:
        raise rejected("format", "the document is not a COSE_Sign1 (an array of four)")
    protected, unprotected, payload, signature = cose
    if not (
        isinstance(protected, bytes)
        and isinstance(unprotected, Mapping)
        and isinstance(payload, bytes)
        and isinstance(signature, bytes)
    ):
        raise rejected("format", "the document is not a COSE_Sign1 with an attached payload")
    header = _decode_cbor(protected, "the COSE protected header")
    if not isinstance(header, dict) or header.get(_ALG) != _ES384:
        raise rejected("format", "the COSE protected header does not name ES384")
    if len(signature) != 96:
        raise rejected("format", "an ES384 signature is 96 bytes")
    return protected, payload, signature


def _check_signature(
    certificate: x509.Certificate, protected: bytes, payload: bytes, signature: bytes
) -> None:
    key = certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise rejected("signature", "the signing certificate's key is not ECDSA P-384")
    # RFC 9052 section 4.4: Sig_structure = ["Signature1", protected, external_aad, payload].
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    r = int.from_bytes(signature[:48], "big")
    s = int.from_bytes(signature[48:], "big")
    try:
        key.verify(encode_dss_signature(r, s), to_be_signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise rejected("signature", "the document's COSE signature does not verify") from None


def _verify(
    data: bytes, *, at: datetime | None, roots: Sequence[x509.Certificate]
) -> HardwareReport:
    protected, payload, signature = _split_cose(data)
    doc = _parse_payload(payload)
    certificates = [
        _chain.load_certificates(raw, check="certificate chain", what="a cabundle entry")
        for raw in doc["cabundle"]
    ]
    leaf = _chain.load_certificates(
        doc["certificate"], check="certificate chain", what="the signing certificate"
    )
    if len(leaf) != 1 or any(len(c) != 1 for c in certificates):
        raise rejected("certificate chain", "a certificate field holds more than one certificate")
    path = _chain.verify_chain(
        leaf[0], [c[0] for c in certificates], roots, vendor="AWS Nitro Enclaves"
    )
    _check_signature(leaf[0], protected, payload, signature)
    _chain.check_validity(path, datetime.now(UTC) if at is None else at)
    signed_at = datetime.fromtimestamp(doc["timestamp"] / 1000, UTC)
    if not leaf[0].not_valid_before_utc <= signed_at <= leaf[0].not_valid_after_utc:
        raise rejected(
            "timestamp",
            f"the document's timestamp {signed_at.isoformat()} is outside its "
            "certificate's validity",
        )
    pcrs: Mapping[int, bytes] = doc["pcrs"]
    size = _PCR_SIZES[doc["digest"]]
    zero = bytes(size)
    # AWS: an enclave started in debug mode reports PCR0, PCR1 and PCR2 as all zeros.
    debug = all(pcrs.get(index, zero) == zero for index in (0, 1, 2))
    return HardwareReport(
        format="nitro",
        measurement=pcrs.get(0, zero),
        report_data=doc.get("user_data") or b"",
        debug=debug,
        public_key=doc.get("public_key"),
        nonce=doc.get("nonce"),
        claims=NitroClaims(
            module_id=doc["module_id"], digest=doc["digest"], timestamp=signed_at, pcrs=pcrs
        ),
    )


def verify_nitro(data: bytes, *, at: datetime | None = None) -> HardwareReport:
    """Verify a Nitro attestation document (raw COSE_Sign1 bytes) against the pinned AWS root.

    ``at`` is the time at which the certificates must be valid (default: now).
    Raises ``AttestationError`` naming the failed check; returns the report.
    """
    from ._roots import NITRO_ROOT

    return _verify(data, at=at, roots=(NITRO_ROOT,))
