"""Hardware evidence in a session, without hardware: ``HardwareAttester`` -> ``verify_evidence``.

The proxy's side (``HardwareAttester`` over a fake configfs-tsm kernel or a fake NSM)
makes an ``Evidence`` whose body names the enclave and whose TEE report data binds
that body in this session; the client's one entry point (``verify_evidence``) checks
the vendor chain (to a test root, trusted only through the verifier modules' test
seam: ``FakeTee.trust``), the binding, the body's claims and the TEE's own claims.
Every refusal names its check. The same flow through real proxies is
tests/integration/test_hardware_session.py.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest

import farside
from farside._proto.v1 import attestation_pb2 as pb
from farside.attestation.evidence import (
    AttestationPolicy,
    channel_binding,
    evidence_body,
    hardware_report_data,
    report_data,
    verify_evidence,
    verify_session_evidence,
)
from farside.attestation.hardware import (
    HardwareAttester,
    HardwareExpectations,
    NitroExpectations,
    SevSnpExpectations,
    TdxExpectations,
    verify_hardware_evidence,
)
from farside.attestation.hardware.attester import HARDWARE_SEALING_UNAVAILABLE
from farside.attestation.identity import EnclaveIdentity

from ._fake_tee import PLATFORMS, FakeTee
from ._hardware_fakes import SnpPki

MEASUREMENT = bytes(range(32))
IDENTITY = EnclaveIdentity(
    measurement=MEASUREMENT, signer=b"\x07" * 32, product_id=3, security_version=2, debug=False
)
NONCE = b"n" * 32
BINDING = channel_binding(
    tls_public_key=b"proxy key", client_nonce=b"c" * 32, proxy_nonce=b"p" * 32
)
SESSION = report_data(NONCE, BINDING)
SANDBOX = ("landlock-fs", "seccomp")


def attest(
    tee: FakeTee,
    tmp_path: Path,
    identity: EnclaveIdentity = IDENTITY,
    session: bytes = SESSION,
) -> pb.Evidence:
    """What a proxy's HardwareAttester answers for ``identity`` in ``session``."""
    attester = HardwareAttester(tee.source(tmp_path))
    try:
        attester.register(identity, SANDBOX)
        return attester.evidence(session)
    finally:
        attester.close()


def policy(tee: FakeTee | None, **overrides: Any) -> AttestationPolicy:
    settings: dict[str, Any] = {
        "measurements": (MEASUREMENT,),
        "hardware": tee.expectations() if tee is not None else None,
    }
    settings.update(overrides)
    return AttestationPolicy(**settings)


def refused(
    given: pb.Evidence,
    checked: AttestationPolicy,
    *,
    nonce: bytes = NONCE,
    binding: bytes = BINDING,
) -> str:
    with pytest.raises(farside.AttestationError) as caught:
        verify_evidence(given, checked, nonce=nonce, binding=binding)
    error = caught.value
    assert f"({error.check})" in str(error), str(error)
    return error.check


@pytest.fixture(params=PLATFORMS)
def tee(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> FakeTee:
    """A fake TEE of each platform whose test root this process's verifiers trust."""
    made = FakeTee.make(request.param)
    made.trust(monkeypatch)
    return made


# ------------------------------------------------------------------------- layout


def test_evidence_is_the_tees_own_binding_the_body_in_this_session(
    tee: FakeTee, tmp_path: Path
) -> None:
    evidence = attest(tee, tmp_path)
    assert evidence.format == tee.platform
    assert evidence.platform_key == b""
    body = pb.EvidenceBody.FromString(evidence.body)
    assert (body.measurement, body.report_data, tuple(body.sandbox)) == (
        MEASUREMENT,
        SESSION,
        SANDBOX,
    )
    assert evidence.body == evidence_body(IDENTITY, report_data=SESSION, sandbox=SANDBOX)
    # The TEE signed exactly the documented construction (docs/security.md).
    tee_report = verify_hardware_evidence(
        evidence.signature, format=tee.platform, collateral=list(evidence.collateral)
    )
    nonce_half = hashlib.sha256(b"farside.nonce.v1\0" + NONCE).digest()
    body_half = hashlib.sha256(
        b"farside.hw-binding.v1\0" + BINDING + hashlib.sha256(evidence.body).digest()
    ).digest()
    assert tee_report.report_data == nonce_half + body_half
    assert tee_report.report_data == hardware_report_data(SESSION, evidence.body)
    assert tee_report.report_data != SESSION  # never just the session's 64 bytes


def test_hardware_report_data_known_answer() -> None:
    """The construction's bytes, pinned: a change here breaks every deployed client."""
    binding = channel_binding(client_nonce=bytes(32), proxy_nonce=bytes(range(32)))
    session = report_data(b"\x01" * 32, binding)
    assert hardware_report_data(session, b"\x08\x01").hex() == (
        "4a0dd5e3bf650eee0afb67b59cafa8dc3bc3556f7830e5da177335241b94ca06"
        "7a3ef2b6c1ac9102a59b273a056f6c9201779ef485bcc2a245a744efa805e333"
    )
    with pytest.raises(ValueError, match="64"):
        hardware_report_data(session[:63], b"")


def test_round_trip_returns_the_identity_the_loader_measured(tee: FakeTee, tmp_path: Path) -> None:
    evidence = attest(tee, tmp_path)
    assert verify_evidence(evidence, policy(tee), nonce=NONCE, binding=BINDING) == IDENTITY
    identity = verify_session_evidence(
        evidence,
        policy(tee, require_sandbox=SANDBOX),
        nonce=NONCE,
        binding=BINDING,
        sent=MEASUREMENT,
        reported=MEASUREMENT,
    )
    assert identity == IDENTITY


def test_sev_snp_carries_the_hosts_certificate_table_as_collateral(tmp_path: Path) -> None:
    tee = FakeTee.make("sev-snp")
    evidence = attest(tee, tmp_path)
    assert len(evidence.collateral) == 1
    assert isinstance(tee.pki, SnpPki)
    assert tee.pki.vcek.der in evidence.collateral[0]
    assert attest(FakeTee.make("tdx"), tmp_path).collateral == []
    assert attest(FakeTee.make("nitro"), tmp_path).collateral == []


# ------------------------------------------------------------------------- binding


def test_a_changed_body_is_refused_as_body_binding(tee: FakeTee, tmp_path: Path) -> None:
    evidence = attest(tee, tmp_path)
    body = pb.EvidenceBody.FromString(evidence.body)
    body.measurement = b"\xee" * 32
    evidence.body = body.SerializeToString()
    assert refused(evidence, policy(tee, measurements=())) == "body binding"
    body.measurement, body.sandbox[:] = MEASUREMENT, [*SANDBOX, "netns"]
    evidence.body = body.SerializeToString()
    assert refused(evidence, policy(tee)) == "body binding"


def test_a_quote_paired_with_another_enclaves_body_is_refused(tee: FakeTee, tmp_path: Path) -> None:
    mine = attest(tee, tmp_path)
    other = EnclaveIdentity(measurement=b"\x99" * 32, debug=False)
    theirs = attest(tee, tmp_path, identity=other)
    paired = pb.Evidence()
    paired.CopyFrom(theirs)
    paired.body = mine.body  # their quote, my body: same session, another identity
    assert refused(paired, policy(tee)) == "body binding"
    paired.CopyFrom(mine)
    paired.signature = theirs.signature
    assert refused(paired, policy(tee)) == "body binding"


def test_wrong_nonce_and_other_channel_are_refused(tee: FakeTee, tmp_path: Path) -> None:
    evidence = attest(tee, tmp_path)
    assert refused(evidence, policy(tee), nonce=b"another nonce") == "nonce"
    other = channel_binding(client_nonce=b"c" * 32, proxy_nonce=b"q" * 32)
    assert refused(evidence, policy(tee), binding=other) == "channel binding"


def test_a_body_rewritten_for_this_session_does_not_move_the_quote(
    tee: FakeTee, tmp_path: Path
) -> None:
    """A relay that rewrites the body's report data to this session is caught by the TEE's."""
    old = attest(tee, tmp_path, session=report_data(b"old nonce", BINDING))
    body = pb.EvidenceBody.FromString(old.body)
    body.report_data = SESSION
    old.body = body.SerializeToString()
    assert refused(old, policy(tee)) == "nonce"  # the TEE's first half is the old nonce's
    elsewhere = report_data(NONCE, channel_binding(client_nonce=b"x" * 32, proxy_nonce=b"y" * 32))
    relayed = attest(tee, tmp_path, session=elsewhere)
    body = pb.EvidenceBody.FromString(relayed.body)
    body.report_data = SESSION
    relayed.body = body.SerializeToString()
    assert refused(relayed, policy(tee)) == "body binding"


# ------------------------------------------------------------------------- trust


def test_the_pinned_roots_refuse_a_test_chain(tmp_path: Path) -> None:
    """Without the test seam, the production verifiers trust only the vendors' roots."""
    for platform in PLATFORMS:
        tee = FakeTee.make(platform)
        evidence = attest(tee, tmp_path)
        assert refused(evidence, policy(tee)) == "root", platform


def test_a_signature_byte_flipped_is_refused(tee: FakeTee, tmp_path: Path) -> None:
    evidence = attest(tee, tmp_path)
    quote = bytearray(evidence.signature)
    # A byte of the TEE's signature: after a TDX quote's header and TD report, an
    # SEV-SNP report's R at 0x2A0, the last byte of a Nitro COSE_Sign1.
    quote[{"tdx": 48 + 584 + 4, "sev-snp": 0x2A0, "nitro": -1}[tee.platform]] ^= 1
    evidence.signature = bytes(quote)
    assert refused(evidence, policy(tee)) == "signature"


def test_sev_snp_without_a_vcek_needs_the_clients(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tee = FakeTee.make("sev-snp", send_vcek=False)
    tee.trust(monkeypatch)
    evidence = attest(tee, tmp_path)
    assert evidence.collateral == []
    assert refused(evidence, policy(tee)) == "collateral"
    assert isinstance(tee.pki, SnpPki)
    held = HardwareExpectations(
        sev_snp=SevSnpExpectations(measurements=(tee.measurement,), collateral=(tee.pki.vcek.pem,))
    )
    verified = verify_evidence(evidence, policy(tee, hardware=held), nonce=NONCE, binding=BINDING)
    assert verified == IDENTITY


def test_too_much_collateral_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tee = FakeTee.make("sev-snp")
    tee.trust(monkeypatch)
    evidence = attest(tee, tmp_path)
    evidence.collateral.extend([evidence.collateral[0]] * 8)
    assert refused(evidence, policy(tee)) == "collateral"


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    evidence = attest(FakeTee.make("tdx"), tmp_path)
    evidence.format = "tdx-v9"
    assert refused(evidence, policy(None)) == "evidence"


# ------------------------------------------------------------------------- policy


def test_hardware_evidence_without_expectations_for_its_platform_is_refused(
    tee: FakeTee, tmp_path: Path
) -> None:
    evidence = attest(tee, tmp_path)
    assert refused(evidence, policy(None)) == "platform"
    assert refused(evidence, policy(None, trust_any_platform=True)) == "platform"
    every_other: dict[str, Any] = {
        "tdx": TdxExpectations(),
        "sev_snp": SevSnpExpectations(),
        "nitro": NitroExpectations(),
    }
    del every_other[tee.platform.replace("-", "_")]
    other_platforms = HardwareExpectations(**every_other)
    assert refused(evidence, policy(None, hardware=other_platforms)) == "platform"


@pytest.mark.parametrize(
    ("platform", "expectations", "check"),
    [
        ("tdx", HardwareExpectations(tdx=TdxExpectations(mrtds=(b"\x01" * 48,))), "measurement"),
        ("tdx", HardwareExpectations(tdx=TdxExpectations(rtmrs={2: b"\x01" * 48})), "rtmr"),
        (
            "sev-snp",
            HardwareExpectations(sev_snp=SevSnpExpectations(measurements=(b"\x01" * 48,))),
            "measurement",
        ),
        (
            "sev-snp",
            HardwareExpectations(sev_snp=SevSnpExpectations(min_guest_svn=9)),
            "security version",
        ),
        ("nitro", HardwareExpectations(nitro=NitroExpectations(pcrs={0: b"\x01" * 48})), "pcr"),
    ],
)
def test_the_tees_own_claims_are_held_to_the_policy(
    platform: str,
    expectations: HardwareExpectations,
    check: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tee = FakeTee.make(platform)
    tee.trust(monkeypatch)
    assert refused(attest(tee, tmp_path), policy(tee, hardware=expectations)) == check


def test_a_debug_tee_needs_allow_debug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for platform in PLATFORMS:
        tee = FakeTee.make(platform, debug=True)
        tee.trust(monkeypatch)
        wanted = tee.expectations()
        if platform == "nitro":  # a debug enclave's PCR0 is zero: pin nothing
            wanted = HardwareExpectations(nitro=NitroExpectations())
        evidence = attest(tee, tmp_path)
        assert refused(evidence, policy(tee, hardware=wanted)) == "debug", platform
        allowed = policy(tee, hardware=wanted, allow_debug=True)
        assert verify_evidence(evidence, allowed, nonce=NONCE, binding=BINDING) == IDENTITY


def test_the_body_is_held_to_the_same_claims_as_sim_evidence(tee: FakeTee, tmp_path: Path) -> None:
    debug_bundle = EnclaveIdentity(measurement=MEASUREMENT, debug=True)
    assert refused(attest(tee, tmp_path, identity=debug_bundle), policy(tee)) == "debug"
    evidence = attest(tee, tmp_path)
    assert refused(evidence, policy(tee, measurements=(b"\x01" * 32,))) == "measurement"
    assert refused(evidence, policy(tee, signers=(b"\x01" * 32,))) == "signer"
    assert refused(evidence, policy(tee, product_id=4)) == "product id"
    assert refused(evidence, policy(tee, min_security_version=3)) == "security version"
    assert refused(evidence, policy(tee, require_sandbox=("netns",))) == "sandbox"
    with pytest.raises(farside.AttestationError) as caught:
        verify_session_evidence(
            evidence,
            policy(tee),
            nonce=NONCE,
            binding=BINDING,
            sent=b"\x01" * 32,
            reported=MEASUREMENT,
        )
    assert caught.value.check == "measurement"


def test_policy_keeps_hardware_and_one_debug_switch() -> None:
    tee = FakeTee.make("tdx")
    chosen = policy(tee, allow_debug=True)
    widened = chosen.with_platform_keys([b"k" * 32])
    assert widened.hardware is chosen.hardware
    assert widened.allow_debug
    assert widened.measurements == chosen.measurements
    with pytest.raises(ValueError, match="allow_debug"):
        AttestationPolicy(hardware=HardwareExpectations(tdx=TdxExpectations(), allow_debug=True))
    AttestationPolicy(
        hardware=HardwareExpectations(tdx=TdxExpectations(), allow_debug=True), allow_debug=True
    )
    with pytest.raises(TypeError, match="HardwareExpectations"):
        AttestationPolicy(hardware=TdxExpectations())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="collateral"):
        SevSnpExpectations(collateral=b"one certificate")  # type: ignore[arg-type]


# ------------------------------------------------------------------------- attester


def test_the_attester_works_on_its_own_thread_and_lets_go(tmp_path: Path) -> None:
    tee = FakeTee.make("tdx")
    kernel = tee.kernel()
    threads: list[str] = []
    make_outblob = kernel.make_outblob

    def recording(inblob: bytes) -> bytes:
        threads.append(threading.current_thread().name)
        return make_outblob(inblob)

    kernel.make_outblob = recording
    from farside.attestation.hardware import TsmAttester

    attester = HardwareAttester(TsmAttester(tmp_path, fs=kernel))
    assert attester.format == "tdx"
    with pytest.raises(RuntimeError, match="no enclave identity"):
        attester.evidence(SESSION)
    attester.register(IDENTITY, ())
    with pytest.raises(RuntimeError, match="one identity"):
        attester.register(IDENTITY, ())
    attester.evidence(SESSION)
    assert threads == ["farside-attester"]  # not the caller's (Landlocked) thread
    with pytest.raises(NotImplementedError) as caught:
        attester.sealing_keys()
    assert str(caught.value) == HARDWARE_SEALING_UNAVAILABLE.format(format="tdx")
    assert "TEE's own key derivation" in str(caught.value)
    attester.close()
    assert not attester._thread.alive
    with pytest.raises(RuntimeError, match="closed"):
        attester.evidence(SESSION)
    assert list(tmp_path.iterdir()) == []  # every report entry was removed


def test_an_attester_without_a_tee_fails_when_made(tmp_path: Path) -> None:
    from farside.attestation.hardware import TsmAttester

    with pytest.raises(farside.AttestationError) as caught:
        HardwareAttester(TsmAttester(tmp_path / "no-configfs-here"))
    assert caught.value.check == "attester"


def test_a_tee_that_does_not_answer_times_out(tmp_path: Path) -> None:
    tee = FakeTee.make("nitro")
    release = threading.Event()
    nsm = tee.nsm()

    def slow(request: bytes) -> bytes:
        release.wait(5)
        return nsm(request)

    from farside.attestation.hardware import NsmAttester

    attester = HardwareAttester(NsmAttester(transport=slow), timeout=0.2)
    attester.register(IDENTITY, ())
    with pytest.raises(farside.AttestationError) as caught:
        attester.evidence(SESSION)
    assert caught.value.check == "attester"
    release.set()
    attester.close()
