"""Evidence, and the client's side of attestation: what it requires and how it checks.

The proxy's attester (``farside.attestation.attester``) signs, with the platform
key, an ``EvidenceBody`` naming the enclave it loaded (measurement, signer, product
id, security version, debug, sandbox layers) and 64 bytes of report data that bind
the client's fresh nonce and the session's channel (the proxy's TLS key, and a
fresh nonce from each end). The client verifies the signature against the
platform keys it trusts, then every claim against its ``AttestationPolicy``,
before it sends any configuration or input: ``verify_session_evidence`` is that
recipe. Verification raises ``AttestationError`` naming the failed check; it never
returns a bool. A hardware backend supplies its own ``format`` and verifier
behind the same entry point.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from .._errors import AttestationError
from .._proto.v1 import attestation_pb2 as pb
from .identity import EnclaveIdentity

__all__ = [
    "EVIDENCE_FORMAT",
    "AttestationPolicy",
    "channel_binding",
    "make_evidence",
    "public_key_bytes",
    "report_data",
    "verify_evidence",
    "verify_session_evidence",
]

log = logging.getLogger("farside")

EVIDENCE_FORMAT = "farside-sim-v1"
EVIDENCE_VERSION = 1


def public_key_bytes(
    key: Ed25519PublicKey | Ed25519PrivateKey | bytes | str | os.PathLike[str],
) -> bytes:
    """The raw 32 bytes of an Ed25519 public key given as a key, raw bytes, hex, or PEM file."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if isinstance(key, Ed25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, bytes) and len(key) == 32:
        return key
    if isinstance(key, str) and len(key) == 64:
        try:
            return bytes.fromhex(key)
        except ValueError:
            pass
    from .platform import load_platform_public_key

    if isinstance(key, bytes):
        raise ValueError("a platform key as bytes must be the raw 32-byte Ed25519 key")
    return public_key_bytes(load_platform_public_key(key))


def channel_binding(
    *, tls_public_key: bytes = b"", client_nonce: bytes, proxy_nonce: bytes
) -> bytes:
    """What ties evidence to one session: the TLS key's DER SPKI (if any) and both nonces.

    The TLS key binds the evidence to the channel (a TLS session to another proxy
    cannot carry it); the nonces, one fresh from each end, make every session's
    binding unique even on a Unix socket, where there is no TLS key.
    """
    digest = hashlib.sha256(b"farside.channel-binding.v1\0")
    for part in (tls_public_key, client_nonce, proxy_nonce):
        digest.update(len(part).to_bytes(4, "big") + part)
    return digest.digest()


def report_data(nonce: bytes, binding: bytes) -> bytes:
    """The 64 bytes of report data: SHA-256 of the client's nonce, then the channel binding.

    Two halves, so that a verifier can say which of the two did not match.
    """
    if len(binding) != 32:
        raise ValueError("the channel binding is 32 bytes")
    return hashlib.sha256(b"farside.nonce.v1\0" + nonce).digest() + binding


def make_evidence(
    platform_key: Ed25519PrivateKey,
    identity: EnclaveIdentity,
    *,
    report_data: bytes,
    sandbox: Iterable[str] = (),
) -> pb.Evidence:
    """(attester) Sign sim-mode evidence for ``identity`` carrying ``report_data`` (64 bytes)."""
    if len(report_data) != 64:
        raise ValueError("report data is 64 bytes")
    body = pb.EvidenceBody(
        version=EVIDENCE_VERSION,
        measurement=identity.measurement,
        signer=identity.signer,
        product_id=identity.product_id,
        security_version=identity.security_version,
        debug=identity.debug,
        report_data=report_data,
        sandbox=list(sandbox),
    ).SerializeToString()
    return pb.Evidence(
        format=EVIDENCE_FORMAT,
        body=body,
        signature=platform_key.sign(body),
        platform_key=public_key_bytes(platform_key),
    )


def _hex_set(values: Iterable[str | bytes], what: str) -> frozenset[bytes]:
    result = set()
    for value in values:
        if not isinstance(value, str | bytes | bytearray | memoryview):
            raise TypeError(f"an expected {what} is hex or bytes, not {type(value).__name__}")
        raw = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
        if len(raw) != 32:
            raise ValueError(f"an expected {what} is 32 bytes (64 hex digits), got {value!r}")
        result.add(raw)
    return frozenset(result)


@dataclass(frozen=True, slots=True, kw_only=True)
class AttestationPolicy:
    """What the client requires of an enclave before it sends it anything.

    ``measurements``/``signers``: accepted values (hex or bytes); empty accepts any.
    ``platform_keys``: the trusted machines' platform public keys (raw bytes, hex,
    ``Ed25519PublicKey`` or a ``platform.pub`` path). ``trust_any_platform`` skips
    the platform check: for development only, and logged loudly at every load.
    ``require_sandbox``: sandbox layers the evidence must list as applied to the
    enclave's process (names as ``farside doctor`` prints them, e.g. ``"seccomp"``,
    ``"landlock-fs"``); refused with ``AttestationError(check="sandbox")``.
    """

    measurements: tuple[str | bytes, ...] = ()
    signers: tuple[str | bytes, ...] = ()
    product_id: int | None = None
    min_security_version: int = 0
    allow_debug: bool = False
    platform_keys: tuple[object, ...] = ()
    trust_any_platform: bool = False
    require_sandbox: tuple[str, ...] = ()
    _measurements: frozenset[bytes] = field(init=False, repr=False, compare=False)
    _signers: frozenset[bytes] = field(init=False, repr=False, compare=False)
    _platform_keys: frozenset[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("measurements", "signers", "platform_keys", "require_sandbox"):
            if isinstance(getattr(self, name), str | bytes):
                raise TypeError(f"AttestationPolicy.{name} is a tuple of values, not one value")
        object.__setattr__(self, "_measurements", _hex_set(self.measurements, "measurement"))
        object.__setattr__(self, "_signers", _hex_set(self.signers, "signer"))
        keys = frozenset(public_key_bytes(k) for k in self.platform_keys)  # type: ignore[arg-type]
        object.__setattr__(self, "_platform_keys", keys)
        if self.min_security_version < 0:
            raise ValueError("min_security_version must not be negative")

    def with_platform_keys(self, keys: Iterable[bytes]) -> AttestationPolicy:
        """This policy, also trusting ``keys`` (raw 32-byte public keys)."""
        return AttestationPolicy(
            measurements=self.measurements,
            signers=self.signers,
            product_id=self.product_id,
            min_security_version=self.min_security_version,
            allow_debug=self.allow_debug,
            platform_keys=(*self.platform_keys, *keys),
            trust_any_platform=self.trust_any_platform,
            require_sandbox=self.require_sandbox,
        )


def _failure(
    check: str, message: str, *, hint: str | None = None, setting: str | None = None
) -> AttestationError:
    return AttestationError(
        f"attestation failed ({check}): {message}", check=check, hint=hint, setting=setting
    )


def _check_claims(identity: EnclaveIdentity, policy: AttestationPolicy) -> None:
    if policy._measurements and identity.measurement not in policy._measurements:
        raise _failure(
            "measurement",
            f"the enclave's measurement {identity.measurement.hex()} is not one the policy accepts",
        )
    if policy._signers and identity.signer not in policy._signers:
        raise _failure(
            "signer", f"the enclave's signer {identity.signer.hex()} is not one the policy accepts"
        )
    if policy.product_id is not None and identity.product_id != policy.product_id:
        raise _failure(
            "product id",
            f"the enclave's product id is {identity.product_id}, not {policy.product_id}",
        )
    if identity.security_version < policy.min_security_version:
        raise _failure(
            "security version",
            f"the enclave's security version "
            f"{identity.security_version} is below {policy.min_security_version}",
        )
    if identity.debug and not policy.allow_debug:
        raise _failure("debug", "the enclave is a debug enclave and the policy forbids debug")


def verify_evidence(
    evidence: pb.Evidence | None,
    policy: AttestationPolicy,
    *,
    nonce: bytes,
    binding: bytes,
) -> EnclaveIdentity:
    """Check ``evidence`` against ``policy`` for this session; return the enclave's identity.

    Raises ``AttestationError`` whose ``check`` names the first failed check.
    """

    fail = _failure
    if evidence is None or not evidence.body:
        raise fail("evidence", "the proxy sent no evidence")
    if evidence.format != EVIDENCE_FORMAT:
        raise fail("evidence", f"unknown evidence format {evidence.format!r}")
    platform = evidence.platform_key
    if not policy.trust_any_platform and platform not in policy._platform_keys:
        raise fail(
            "platform signature",
            "the evidence is signed by a platform key this client does not trust",
            hint="add that machine's platform.pub to AttestationPolicy(platform_keys=...)",
            setting="policy.platform_keys",
        )
    if policy.trust_any_platform:
        log.warning(
            "farside: NOT checking which platform signed this enclave's evidence "
            "(AttestationPolicy(trust_any_platform=True)): development only"
        )
    try:
        Ed25519PublicKey.from_public_bytes(platform).verify(evidence.signature, evidence.body)
    except (InvalidSignature, ValueError):
        raise fail("platform signature", "the evidence's signature does not verify") from None
    try:
        body = pb.EvidenceBody.FromString(evidence.body)
    except DecodeError:
        raise fail("evidence", "malformed evidence body") from None
    if body.version != EVIDENCE_VERSION or len(body.measurement) != 32 or len(body.signer) != 32:
        raise fail("evidence", "malformed evidence body")
    expected = report_data(nonce, binding)
    if len(body.report_data) != 64 or not hmac.compare_digest(body.report_data[:32], expected[:32]):
        raise fail("nonce", "the evidence was not made for this session's nonce (a replay?)")
    if not hmac.compare_digest(body.report_data[32:], expected[32:]):
        raise fail("channel binding", "the evidence was made for another session's channel")
    identity = EnclaveIdentity(
        measurement=body.measurement,
        signer=body.signer,
        product_id=body.product_id,
        security_version=body.security_version,
        debug=body.debug,
    )
    _check_claims(identity, policy)
    absent = [layer for layer in policy.require_sandbox if layer not in body.sandbox]
    if absent:
        raise fail(
            "sandbox",
            f"the enclave's process lacks sandbox layer(s) {', '.join(absent)} (applied: "
            f"{', '.join(body.sandbox) or 'none'})",
        )
    return identity


def verify_session_evidence(
    evidence: pb.Evidence | None,
    policy: AttestationPolicy,
    *,
    nonce: bytes,
    binding: bytes,
    sent: bytes,
    reported: bytes,
) -> EnclaveIdentity:
    """(client) The whole check of a session's evidence; return the enclave's identity.

    ``verify_evidence`` against ``policy`` for this session's ``nonce`` and channel
    ``binding``, and then that the enclave is the bundle the client ``sent`` (its
    measurement), as the proxy also ``reported`` in its Loaded frame.
    ``AttestationError`` naming the check otherwise.
    """
    identity = verify_evidence(evidence, policy, nonce=nonce, binding=binding)
    if identity.measurement != sent or reported != sent:
        raise _failure(
            "measurement",
            "the proxy loaded a different bundle than the one sent "
            f"({identity.measurement.hex()} instead of {sent.hex()})",
        )
    return identity
