"""Evidence, and the client's side of attestation: what it requires and how it checks.

Every evidence carries an ``EvidenceBody`` naming the enclave the proxy's loader
measured (measurement, signer, product id, security version, debug, sandbox layers)
and the session's 64 bytes of report data, which bind the client's fresh nonce and
the session's channel (the proxy's TLS key, and a fresh nonce from each end). What
vouches for the body depends on ``Evidence.format``:

* ``"farside-sim-v1"``: the platform key (held by the platform agent) signs it; the
  client trusts the keys in ``AttestationPolicy.platform_keys``.
* ``"tdx"``, ``"sev-snp"``, ``"nitro"`` (and ``"sgx"``): ``signature`` is the TEE's own
  evidence, verified offline to the vendor's pinned root
  (``farside.attestation.hardware``), whose report data is
  ``hardware_report_data(report data, body)``: the TEE vouches for this exact body in
  this session. The client holds the TEE's own claims (MRTD, launch measurement, PCRs)
  to ``AttestationPolicy.hardware``.

``verify_session_evidence`` (and ``verify_evidence`` under it) is the client's one
entry point for both: it dispatches on the format, then checks every claim against
the ``AttestationPolicy`` before the client sends any configuration or input.
Verification raises ``AttestationError`` naming the failed check; it never returns
a bool.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from .._errors import AttestationError
from .._proto.v1 import attestation_pb2 as pb
from .identity import EnclaveIdentity

if TYPE_CHECKING:
    from .hardware import HardwareExpectations, HardwareReport

__all__ = [
    "EVIDENCE_FORMAT",
    "HARDWARE_BINDING_DOMAIN",
    "HARDWARE_EVIDENCE_FORMATS",
    "AttestationPolicy",
    "channel_binding",
    "evidence_body",
    "hardware_report_data",
    "make_evidence",
    "public_key_bytes",
    "report_data",
    "verify_evidence",
    "verify_session_evidence",
]

log = logging.getLogger("farside")

EVIDENCE_FORMAT = "farside-sim-v1"
EVIDENCE_VERSION = 1
HARDWARE_EVIDENCE_FORMATS = ("tdx", "sev-snp", "nitro", "sgx")
"""The ``Evidence.format`` of hardware evidence: the verifier's format names."""
HARDWARE_BINDING_DOMAIN = b"farside.hw-binding.v1\0"
MAX_COLLATERAL = 8
"""The most collateral items a hardware evidence may carry (SEV-SNP sends one table)."""


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


def hardware_report_data(report_data: bytes, body: bytes) -> bytes:
    """The 64 bytes a TEE signs for hardware evidence: this session, and this ``body``.

    ``report_data`` is the session's 64 bytes (``report_data(nonce, binding)``): its
    first half, SHA-256 of the client's nonce, stays as it is; the second is
    SHA-256(``"farside.hw-binding.v1\\0"`` + channel binding + SHA-256(``body``)). A
    quote made for one body (one enclave identity) cannot be paired with another, nor
    with another session's channel.
    """
    if len(report_data) != 64:
        raise ValueError("report data is 64 bytes")
    body_digest = hashlib.sha256(body).digest()
    binding = hashlib.sha256(HARDWARE_BINDING_DOMAIN + report_data[32:] + body_digest).digest()
    return report_data[:32] + binding


def evidence_body(
    identity: EnclaveIdentity, *, report_data: bytes, sandbox: Iterable[str] = ()
) -> bytes:
    """The serialized ``EvidenceBody`` naming ``identity``, for sim and hardware evidence."""
    if len(report_data) != 64:
        raise ValueError("report data is 64 bytes")
    return pb.EvidenceBody(
        version=EVIDENCE_VERSION,
        measurement=identity.measurement,
        signer=identity.signer,
        product_id=identity.product_id,
        security_version=identity.security_version,
        debug=identity.debug,
        report_data=report_data,
        sandbox=list(sandbox),
    ).SerializeToString()


def make_evidence(
    platform_key: Ed25519PrivateKey,
    identity: EnclaveIdentity,
    *,
    report_data: bytes,
    sandbox: Iterable[str] = (),
) -> pb.Evidence:
    """(attester) Sign sim-mode evidence for ``identity`` carrying ``report_data`` (64 bytes)."""
    body = evidence_body(identity, report_data=report_data, sandbox=sandbox)
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
    ``Ed25519PublicKey`` or a ``platform.pub`` path), for sim-mode evidence.
    ``trust_any_platform`` skips that check: for development only, logged loudly at
    every load, and it never applies to hardware evidence.
    ``require_sandbox``: sandbox layers the evidence must list as applied to the
    enclave's process (names as ``farside doctor`` prints them, e.g. ``"seccomp"``,
    ``"landlock-fs"``); refused with ``AttestationError(check="sandbox")``.
    ``hardware``: what TEE evidence must show, per platform
    (``farside.attestation.hardware.HardwareExpectations``: TDX MRTD and RTMRs,
    SEV-SNP launch measurement, Nitro PCRs, ...); hardware evidence of a platform it
    does not name is refused (check "platform"), and so is all hardware evidence
    without it. ``allow_debug`` covers both the bundle's debug flag and the TEE's
    debug mode.
    """

    measurements: tuple[str | bytes, ...] = ()
    signers: tuple[str | bytes, ...] = ()
    product_id: int | None = None
    min_security_version: int = 0
    allow_debug: bool = False
    platform_keys: tuple[object, ...] = ()
    trust_any_platform: bool = False
    require_sandbox: tuple[str, ...] = ()
    hardware: HardwareExpectations | None = None
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
        if self.hardware is not None:
            from .hardware.expectations import HardwareExpectations

            if not isinstance(self.hardware, HardwareExpectations):
                raise TypeError(
                    "AttestationPolicy.hardware is a farside.attestation.hardware."
                    f"HardwareExpectations, not {type(self.hardware).__name__}"
                )
            if self.hardware.allow_debug and not self.allow_debug:
                raise ValueError(
                    "in a policy, allow_debug covers the TEE's debug mode too: set "
                    "AttestationPolicy(allow_debug=True) rather than "
                    "HardwareExpectations(allow_debug=True)"
                )

    def with_platform_keys(self, keys: Iterable[bytes]) -> AttestationPolicy:
        """This policy, also trusting ``keys`` (raw 32-byte public keys)."""
        return replace(self, platform_keys=(*self.platform_keys, *keys))


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


def _verify_sim_signature(evidence: pb.Evidence, policy: AttestationPolicy) -> None:
    platform = evidence.platform_key
    if not policy.trust_any_platform and platform not in policy._platform_keys:
        raise _failure(
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
        raise _failure("platform signature", "the evidence's signature does not verify") from None


def _expectations_for(policy: AttestationPolicy, platform: str) -> HardwareExpectations:
    """The policy's expectations, if they name ``platform``; "platform" refusal otherwise."""
    wanted = policy.hardware
    named = None
    if wanted is not None:
        named = {
            "nitro": wanted.nitro,
            "sev-snp": wanted.sev_snp,
            "tdx": wanted.tdx,
            "sgx": wanted.sgx,
        }.get(platform)
    if wanted is None or named is None:
        raise _failure(
            "platform",
            f"the proxy sent {platform} evidence and the policy accepts no {platform} "
            "enclaves (give AttestationPolicy(hardware=HardwareExpectations(...)) with what "
            f"its {platform} measurements must be)",
        )
    # The policy's allow_debug is the one switch for the bundle's and the TEE's debug.
    return replace(wanted, allow_debug=policy.allow_debug)


def _verify_tee_signature(
    evidence: pb.Evidence, expectations: HardwareExpectations
) -> HardwareReport:
    """The TEE's own evidence, verified to its vendor's pinned root, at the current time."""
    from .hardware.verify import verify_hardware_evidence

    if len(evidence.collateral) > MAX_COLLATERAL:
        raise _failure("collateral", f"the evidence carries more than {MAX_COLLATERAL} items")
    extra: Sequence[bytes] = ()
    if evidence.format == "sev-snp" and expectations.sev_snp is not None:
        extra = expectations.sev_snp.collateral
    try:
        return verify_hardware_evidence(
            evidence.signature,
            format=evidence.format,
            collateral=[*evidence.collateral, *extra],
        )
    except AttestationError as exc:
        raise _failure(exc.check or "evidence", f"{evidence.format} evidence: {exc}") from None


_SECOND_HALF = {
    "channel binding": "the evidence was made for another session's channel",
    "body binding": "the TEE's report data does not bind this evidence body in this session "
    "(a body changed, or a quote paired with another enclave's body)",
}


def _check_report_data(actual: bytes, expected: bytes, second_half: str) -> None:
    """``actual`` is ``expected``: "nonce" names the first half, ``second_half`` the second."""
    if len(actual) != 64 or not hmac.compare_digest(actual[:32], expected[:32]):
        raise _failure("nonce", "the evidence was not made for this session's nonce (a replay?)")
    if not hmac.compare_digest(actual[32:], expected[32:]):
        raise _failure(second_half, _SECOND_HALF[second_half])


def _parse_body(data: bytes) -> pb.EvidenceBody:
    try:
        body = pb.EvidenceBody.FromString(data)
    except DecodeError:
        raise _failure("evidence", "malformed evidence body") from None
    if body.version != EVIDENCE_VERSION or len(body.measurement) != 32 or len(body.signer) != 32:
        raise _failure("evidence", "malformed evidence body")
    return body


def verify_evidence(
    evidence: pb.Evidence | None,
    policy: AttestationPolicy,
    *,
    nonce: bytes,
    binding: bytes,
) -> EnclaveIdentity:
    """Check ``evidence`` against ``policy`` for this session; return the enclave's identity.

    Sim evidence: the platform signature, then the body. Hardware evidence: the policy
    must name its platform, the TEE's evidence must verify to the vendor's pinned root
    now, and its report data must be ``hardware_report_data`` of this session and this
    body; then the body's claims, and the TEE's own claims against
    ``policy.hardware``. Raises ``AttestationError`` whose ``check`` names the first
    failed check.
    """
    if evidence is None or not evidence.body:
        raise _failure("evidence", "the proxy sent no evidence")
    tee: HardwareReport | None = None
    expectations: HardwareExpectations | None = None
    if evidence.format == EVIDENCE_FORMAT:
        _verify_sim_signature(evidence, policy)
    elif evidence.format in HARDWARE_EVIDENCE_FORMATS:
        expectations = _expectations_for(policy, evidence.format)
        tee = _verify_tee_signature(evidence, expectations)
    else:
        raise _failure("evidence", f"unknown evidence format {evidence.format[:40]!r}")
    body = _parse_body(evidence.body)
    expected = report_data(nonce, binding)
    _check_report_data(body.report_data, expected, "channel binding")
    tee_expected = b""
    if tee is not None:
        tee_expected = hardware_report_data(expected, evidence.body)
        _check_report_data(tee.report_data, tee_expected, "body binding")
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
        raise _failure(
            "sandbox",
            f"the enclave's process lacks sandbox layer(s) {', '.join(absent)} (applied: "
            f"{', '.join(body.sandbox) or 'none'})",
        )
    if tee is not None and expectations is not None:
        from .hardware.expectations import check_expectations

        try:
            check_expectations(tee, expectations, report_data=tee_expected)
        except AttestationError as exc:
            raise _failure(exc.check or "evidence", f"{tee.format}: {exc}") from None
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
