"""The producing side without the hardware: configfs-tsm against a fake tree, NSM against a fake.

``FakeTsmKernel`` keeps a real directory tree in tmp_path and does what the kernel
does when ``inblob`` is written; ``FakeNsm`` answers the NSM API's CBOR like the
device. Round trips go attester -> verifier (through the test-root seam) ->
``check_expectations`` with this session's report data. No test opens a device.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import pytest

import farside
from farside.attestation.evidence import channel_binding, report_data
from farside.attestation.hardware import (
    HardwareExpectations,
    NitroExpectations,
    NsmAttester,
    SevSnpExpectations,
    TsmAttester,
    check_expectations,
    nitro,
    nsm,
    sev_snp,
)

from ._hardware_fakes import INSIDE, FakeNsm, FakeTsmKernel, NitroPki, SnpPki, snp_report

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "hardware"
NONCE = b"client nonce"
BINDING = channel_binding(client_nonce=b"c" * 32, proxy_nonce=b"p" * 32)
REPORT_DATA = report_data(NONCE, BINDING)


# ------------------------------------------------------------------- configfs-tsm


def snp_kernel(pki: SnpPki, **kwargs: Any) -> FakeTsmKernel:
    return FakeTsmKernel(
        provider="sev_guest",
        make_outblob=lambda inblob: snp_report(pki.vcek, report_data=inblob),
        **kwargs,
    )


def test_tsm_report_follows_the_configfs_abi(tmp_path: Path) -> None:
    pki = SnpPki.make()
    kernel = snp_kernel(pki, auxblob=b"certificate table")
    attester = TsmAttester(tmp_path, fs=kernel)
    report = attester.report(REPORT_DATA)
    assert report.provider == "sev_guest"
    assert report.generation == 1
    assert report.auxblob == b"certificate table"
    assert report.outblob[0x50:0x90] == REPORT_DATA  # inblob became REPORT_DATA
    assert attester.format == "sev-snp"
    # The entry is gone afterwards, and was our own (not shared with other attesters).
    assert len(kernel.removed) == 1
    assert kernel.removed[0].name.startswith("farside-")
    assert list(tmp_path.iterdir()) == []


def test_tsm_round_trip_verifies_and_binds_the_session(tmp_path: Path) -> None:
    pki = SnpPki.make()
    attester = TsmAttester(tmp_path, fs=snp_kernel(pki))
    evidence = attester.evidence(REPORT_DATA)
    verified = sev_snp._verify(
        evidence,
        at=INSIDE,
        collateral=[pki.vcek.der],
        arks={"Milan": pki.ark.certificate},
        intermediates=[pki.ask.certificate],
    )
    expectations = HardwareExpectations(sev_snp=SevSnpExpectations(measurements=(b"\x11" * 48,)))
    check_expectations(verified, expectations, report_data=REPORT_DATA)
    other_session = report_data(
        NONCE, channel_binding(client_nonce=b"x" * 32, proxy_nonce=b"p" * 32)
    )
    with pytest.raises(farside.AttestationError) as caught:
        check_expectations(verified, expectations, report_data=other_session)
    assert caught.value.check == "channel binding"


def test_tsm_refuses_a_report_another_writer_raced(tmp_path: Path) -> None:
    kernel = snp_kernel(SnpPki.make(), interfere=True)
    with pytest.raises(farside.AttestationError) as caught:
        TsmAttester(tmp_path, fs=kernel).evidence(REPORT_DATA)
    assert caught.value.check == "attester"
    assert "generation 0 -> 2" in caught.value.message
    assert list(tmp_path.iterdir()) == []  # removed even so


def test_tsm_tdx_provider_has_no_auxblob(tmp_path: Path) -> None:
    quote = (VECTORS / "tdx" / "tdx_quote").read_bytes()
    kernel = FakeTsmKernel(provider="tdx_guest", make_outblob=lambda _inblob: quote)
    attester = TsmAttester(tmp_path, fs=kernel)
    assert attester.format == "tdx"
    report = attester.report(REPORT_DATA)
    assert (report.provider, report.outblob, report.auxblob) == ("tdx_guest", quote, b"")


def test_tsm_unknown_provider_and_missing_tree_are_attester_errors(tmp_path: Path) -> None:
    kernel = FakeTsmKernel(provider="arm_cca_guest", make_outblob=lambda inblob: inblob)
    with pytest.raises(farside.AttestationError) as caught:
        TsmAttester(tmp_path, fs=kernel).evidence(REPORT_DATA)
    assert caught.value.check == "attester"
    assert "arm_cca_guest" in caught.value.message
    with pytest.raises(farside.AttestationError) as caught:
        TsmAttester(tmp_path / "no-tsm-here").evidence(REPORT_DATA)
    assert caught.value.check == "attester"


def test_tsm_takes_exactly_64_bytes(tmp_path: Path) -> None:
    attester = TsmAttester(tmp_path, fs=snp_kernel(SnpPki.make()))
    with pytest.raises(ValueError, match="64"):
        attester.evidence(b"short")


# ----------------------------------------------------------------------------- NSM


def test_nsm_request_is_the_apis_attestation_request() -> None:
    fake = FakeNsm(NitroPki.make())
    NsmAttester(transport=fake, public_key=b"DER key").evidence(REPORT_DATA)
    assert fake.requests == [
        {"Attestation": {"user_data": REPORT_DATA, "nonce": None, "public_key": b"DER key"}}
    ]


def test_nsm_round_trip_verifies_and_binds_the_session() -> None:
    pki = NitroPki.make()
    attester = NsmAttester(transport=FakeNsm(pki))
    assert attester.format == "nitro"
    document = attester.evidence(REPORT_DATA)
    verified = nitro._verify(document, at=INSIDE, roots=[pki.root.certificate])
    assert verified.report_data == REPORT_DATA
    expectations = HardwareExpectations(nitro=NitroExpectations(pcrs={0: b"\x01" * 48}))
    check_expectations(verified, expectations, report_data=REPORT_DATA)
    with pytest.raises(farside.AttestationError) as caught:
        check_expectations(verified, expectations, report_data=report_data(b"old", BINDING))
    assert caught.value.check == "nonce"


@pytest.mark.parametrize(
    ("answer", "needle"),
    [
        ({"Error": "InvalidArgument"}, "InvalidArgument"),
        ({"Attestation": {}}, "no attestation document"),
        ({"Something": 1, "Else": 2}, "malformed"),
        ([1, 2, 3], "malformed"),
    ],
)
def test_nsm_errors_are_attester_errors(answer: object, needle: str) -> None:
    attester = NsmAttester(transport=FakeNsm(NitroPki.make(), answer=lambda _request: answer))
    with pytest.raises(farside.AttestationError) as caught:
        attester.evidence(REPORT_DATA)
    assert caught.value.check == "attester"
    assert needle in caught.value.message


def test_nsm_device_errors_and_garbage_are_attester_errors(tmp_path: Path) -> None:
    with pytest.raises(farside.AttestationError) as caught:
        NsmAttester(tmp_path / "no-nsm").evidence(REPORT_DATA)
    assert caught.value.check == "attester"
    with pytest.raises(farside.AttestationError) as caught:
        NsmAttester(transport=lambda _request: b"\xff\xff").evidence(REPORT_DATA)
    assert caught.value.check == "attester"


def test_nsm_ioctl_request_code_and_message_layout() -> None:
    # _IOWR(0x0A, 0, struct nsm_raw): two {u64 addr, u64 len} iovecs, 32 bytes.
    assert ctypes.sizeof(nsm._NsmRaw) == 32
    assert nsm.NSM_IOCTL_RAW == 0xC0200A00


def test_nsm_device_transport_marshals_through_the_ioctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real transport, with the kernel's side of the ioctl played in Python."""
    device = tmp_path / "nsm"
    device.write_bytes(b"")
    pki = NitroPki.make()
    fake = FakeNsm(pki)
    seen: list[int] = []

    def fake_ioctl(fd: int, request: int, message: Any, mutate: bool) -> int:
        seen.append(request)
        assert mutate is True
        raw = nsm._NsmRaw.from_buffer(message)
        payload = ctypes.string_at(raw.request.addr, raw.request.len)
        answer = fake(payload)
        assert len(answer) <= raw.response.len
        ctypes.memmove(raw.response.addr, answer, len(answer))
        raw.response.len = len(answer)  # the kernel reports the response's length
        return 0

    monkeypatch.setattr(nsm.fcntl, "ioctl", fake_ioctl)
    document = NsmAttester(device).evidence(REPORT_DATA)
    assert seen == [nsm.NSM_IOCTL_RAW]
    assert fake.requests[0]["Attestation"]["user_data"] == REPORT_DATA  # type: ignore[index]
    verified = nitro._verify(document, at=INSIDE, roots=[pki.root.certificate])
    assert verified.report_data == REPORT_DATA
