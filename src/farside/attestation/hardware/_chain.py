"""Certificate chains of vendor PKIs, checked up to a pinned root.

Why not ``cryptography.x509.verification``: its policy is the web PKI's. It
refuses AMD's RSA-PSS (SHA-384, explicit trailer field) signatures outright, and
accepts the Nitro leaf (no AuthorityKeyIdentifier) and Intel's PCK certificate
(no SubjectAltName) only with the end-entity policy relaxed; and it reports one
opaque "validation failed", where farside names the check. These PKIs are small
and fixed (leaf, one to three CAs, a root we pin by its bytes), so the walk is
short and explicit: each certificate must be signed by the next
(``verify_directly_issued_by``), every issuer must be a CA allowed to sign
certificates at that depth, the last must be byte-identical to a pinned root, and
every certificate must be valid at the verification time. Revocation (CRLs) is
not checked: that needs the vendor's online collateral (docs/hardware.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from ._report import rejected

__all__ = ["check_validity", "der", "describe", "load_certificates", "verify_chain"]

# Longer than any vendor chain here (Nitro: leaf + 3 CAs + root), short enough that a
# crafted bundle cannot make the walk expensive.
_MAX_DEPTH = 8
_PEM_MARKER = b"-----BEGIN CERTIFICATE-----"


def der(certificate: x509.Certificate) -> bytes:
    """The certificate's DER bytes."""
    return certificate.public_bytes(serialization.Encoding.DER)


def describe(certificate: x509.Certificate) -> str:
    """A short, printable name for a certificate in a one-line message."""
    try:
        names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        name = str(names[0].value) if names else certificate.subject.rfc4514_string()
    except ValueError:
        name = "?"
    return repr(name[:80])


def load_certificates(data: bytes, *, check: str, what: str) -> list[x509.Certificate]:
    """Every certificate in ``data`` (concatenated PEM, or one DER); rejects with ``check``."""
    try:
        if _PEM_MARKER in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise rejected(check, f"{what} is not a certificate (PEM or DER)") from None


def _signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _check_ca(issuer: x509.Certificate, depth: int) -> None:
    """``issuer`` signs a certificate ``depth`` CAs below it: it must be a CA allowed that."""
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise rejected(
            "certificate chain", f"issuer {describe(issuer)} is not marked as a CA"
        ) from None
    except ValueError:
        raise rejected(
            "certificate chain", f"issuer {describe(issuer)} has malformed extensions"
        ) from None
    if not constraints.ca:
        raise rejected("certificate chain", f"issuer {describe(issuer)} is not a CA")
    if constraints.path_length is not None and depth > constraints.path_length:
        raise rejected("certificate chain", f"issuer {describe(issuer)} exceeds its path length")
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise rejected("certificate chain", f"issuer {describe(issuer)} may not sign certificates")


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    *,
    vendor: str,
) -> list[x509.Certificate]:
    """The path from ``leaf`` to one of ``roots`` through ``intermediates``; raises if none.

    Signatures and CA constraints only; validity in time is ``check_validity``'s.
    Rejects with "root" when the chain ends at, or claims to be issued by, anything
    but a pinned root (a root named like the pinned one included), and with
    "certificate chain" when a link inside the supplied certificates is broken.
    """
    root_ders = {der(root) for root in roots}
    fingerprint = ", ".join(root.fingerprint(hashes.SHA256()).hex()[:16] for root in roots)
    not_pinned = f"the chain does not end at the pinned {vendor} root (SHA-256 {fingerprint}...)"
    candidates: list[x509.Certificate] = []
    for certificate in (leaf, *intermediates):
        try:  # cryptography parses names lazily: a malformed one surfaces here, once
            certificate.subject.rfc4514_string()
            certificate.issuer.rfc4514_string()
        except ValueError:
            raise rejected("certificate chain", "a certificate has a malformed name") from None
        if der(certificate) in root_ders:
            continue  # bundles often carry the root itself; the pinned copy is what counts
        if certificate.issuer == certificate.subject:
            raise rejected("root", not_pinned)
        if certificate is not leaf:
            candidates.append(certificate)
    path = [leaf]
    current = leaf
    for _ in range(_MAX_DEPTH):
        for root in roots:
            if root.subject == current.issuer and _signed_by(current, root):
                path.append(root)
                for depth, issuer in enumerate(path[1:]):
                    _check_ca(issuer, depth)
                return path
        found = next(
            (c for c in candidates if c.subject == current.issuer and _signed_by(current, c)),
            None,
        )
        if found is None:
            if any(c.subject == current.issuer for c in candidates):
                raise rejected(
                    "certificate chain",
                    f"certificate {describe(current)} is not signed by its issuer's key",
                )
            raise rejected("root", not_pinned)
        candidates.remove(found)
        path.append(found)
        current = found
    raise rejected("certificate chain", "the certificate chain is too long")


def check_validity(path: Sequence[x509.Certificate], at: datetime) -> None:
    """Every certificate in ``path`` is valid at ``at``; else reject with "expired"."""
    for certificate in path:
        if at < certificate.not_valid_before_utc:
            raise rejected(
                "expired",
                f"certificate {describe(certificate)} is not valid before "
                f"{certificate.not_valid_before_utc.isoformat()} (checked at {at.isoformat()})",
            )
        if at > certificate.not_valid_after_utc:
            raise rejected(
                "expired",
                f"certificate {describe(certificate)} expired at "
                f"{certificate.not_valid_after_utc.isoformat()} (checked at {at.isoformat()})",
            )
