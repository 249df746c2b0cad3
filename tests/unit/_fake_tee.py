"""A whole fake TEE for the session tests: a platform, what it measures, a test PKI, a seam.

``FakeTee`` makes TDX quotes or SEV-SNP reports through a fake configfs-tsm kernel
(``FakeTsmKernel``), or Nitro documents through a fake NSM (``FakeNsm``), all signed
by a test PKI of its own. ``trust`` makes *this* process's verifiers accept that
PKI's root through the verifier modules' test seam (their private ``_verify`` with
test roots), by pointing the per-platform entry points ``verify_hardware_evidence``
calls at it: nothing in farside's code takes a root from outside. ``save``/``load``
carry a FakeTee to a proxy process (tests/integration/_fake_tee_proxy.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from farside.attestation.hardware import (
    HardwareExpectations,
    NitroExpectations,
    NsmAttester,
    SevSnpExpectations,
    TdxExpectations,
    TsmAttester,
    dcap,
    nitro,
    sev_snp,
)

if TYPE_CHECKING:
    import pytest

from ._hardware_fakes import (
    FakeNsm,
    FakeTsmKernel,
    Issued,
    NitroPki,
    PckPki,
    SnpPki,
    certificate_table,
    dcap_quote,
    snp_report,
)

PLATFORMS = ("tdx", "sev-snp", "nitro")
MEASUREMENT = b"\x5a" * 48
_SNP_POLICY = 0x30000
_SNP_DEBUG = 1 << 19
_PKIS: dict[str, type[PckPki | SnpPki | NitroPki]] = {
    "tdx": PckPki,
    "sev-snp": SnpPki,
    "nitro": NitroPki,
}


def _issued_to_json(issued: Issued) -> dict[str, str]:
    key = issued.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {"certificate": issued.pem.decode(), "key": key.decode()}


def _issued_from_json(data: dict[str, str]) -> Issued:
    key = serialization.load_pem_private_key(data["key"].encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Issued(x509.load_pem_x509_certificate(data["certificate"].encode()), key)


@dataclass
class FakeTee:
    """A TEE of ``platform`` ("tdx", "sev-snp", "nitro") that measures ``measurement``.

    ``measurement`` is the TDX MRTD, the SEV-SNP launch measurement or the Nitro
    PCR0; ``debug`` sets the platform's debug marker (TD attribute, guest policy bit
    19, PCR0-2 all zero); ``send_vcek``: the SEV-SNP host puts the VCEK in ``auxblob``.
    """

    platform: str
    pki: PckPki | SnpPki | NitroPki
    measurement: bytes = MEASUREMENT
    debug: bool = False
    send_vcek: bool = True

    @classmethod
    def make(cls, platform: str, **settings: Any) -> FakeTee:
        return cls(platform, _PKIS[platform].make(), **settings)

    @property
    def attester(self) -> str:
        """The proxy's ``--attester`` for this platform."""
        return "nsm" if self.platform == "nitro" else "tsm"

    # ------------------------------------------------------------------ producing

    def pcrs(self) -> dict[int, bytes]:
        pcrs = {index: bytes([index + 1]) * 48 for index in range(16)}
        pcrs[0] = self.measurement
        if self.debug:
            pcrs.update({0: bytes(48), 1: bytes(48), 2: bytes(48)})
        return pcrs

    def _outblob(self, inblob: bytes) -> bytes:
        if isinstance(self.pki, PckPki):
            return dcap_quote(
                self.pki,
                tdx=True,
                report_data=inblob,
                debug=self.debug,
                measurement=self.measurement,
            )
        assert isinstance(self.pki, SnpPki)
        policy = _SNP_POLICY | (_SNP_DEBUG if self.debug else 0)
        return snp_report(
            self.pki.vcek, report_data=inblob, measurement=self.measurement, policy=policy
        )

    def kernel(self) -> FakeTsmKernel:
        """configfs-tsm as the kernel of this TEE would answer it."""
        assert self.platform in ("tdx", "sev-snp")
        auxblob = None
        if self.platform == "sev-snp" and self.send_vcek:
            assert isinstance(self.pki, SnpPki)
            auxblob = certificate_table([self.pki.vcek.der])
        provider = "tdx_guest" if self.platform == "tdx" else "sev_guest"
        return FakeTsmKernel(provider=provider, make_outblob=self._outblob, auxblob=auxblob)

    def nsm(self) -> FakeNsm:
        """The NSM of this enclave."""
        assert isinstance(self.pki, NitroPki)
        return FakeNsm(self.pki, pcrs=self.pcrs())

    def source(self, tsm_root: Path) -> TsmAttester | NsmAttester:
        """The attester a ``HardwareAttester`` wraps, on this fake (in-process tests)."""
        if self.platform == "nitro":
            return NsmAttester(transport=self.nsm())
        return TsmAttester(tsm_root, fs=self.kernel())

    # ------------------------------------------------------------------ verifying

    def expectations(self, **overrides: Any) -> HardwareExpectations:
        """Expectations that accept exactly this TEE's measurement (and nothing else)."""
        if self.platform == "tdx":
            return HardwareExpectations(tdx=TdxExpectations(mrtds=(self.measurement,)), **overrides)
        if self.platform == "sev-snp":
            return HardwareExpectations(
                sev_snp=SevSnpExpectations(measurements=(self.measurement,)), **overrides
            )
        return HardwareExpectations(
            nitro=NitroExpectations(pcrs={0: self.measurement}), **overrides
        )

    def trust(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make this process's verifiers trust this TEE's test root (see the module docstring)."""
        pki = self.pki
        if isinstance(pki, PckPki):
            root = pki.root.certificate

            def verify_dcap(
                data: bytes, *, at: datetime | None = None, collateral: Any = ()
            ) -> Any:
                return dcap._verify(data, at=at, roots=[root], collateral=collateral)

            monkeypatch.setattr(dcap, "verify_dcap", verify_dcap)
        elif isinstance(pki, SnpPki):
            ark, ask = pki.ark.certificate, pki.ask.certificate

            def verify_sev_snp(
                report: bytes, *, at: datetime | None = None, collateral: Any = ()
            ) -> Any:
                return sev_snp._verify(
                    report, at=at, collateral=collateral, arks={"Milan": ark}, intermediates=[ask]
                )

            monkeypatch.setattr(sev_snp, "verify_sev_snp", verify_sev_snp)
        else:
            nitro_root = pki.root.certificate

            def verify_nitro(data: bytes, *, at: datetime | None = None) -> Any:
                return nitro._verify(data, at=at, roots=[nitro_root])

            monkeypatch.setattr(nitro, "verify_nitro", verify_nitro)

    # ------------------------------------------------------------------ to a proxy

    def save(self, path: Path) -> None:
        pki = {f.name: _issued_to_json(getattr(self.pki, f.name)) for f in fields(self.pki)}
        data = {
            "platform": self.platform,
            "measurement": self.measurement.hex(),
            "debug": self.debug,
            "send_vcek": self.send_vcek,
            "pki": pki,
        }
        path.write_text(json.dumps(data))

    @classmethod
    def load(cls, path: Path) -> FakeTee:
        data = json.loads(path.read_text())
        kind = _PKIS[data["platform"]]
        pki = kind(**{name: _issued_from_json(value) for name, value in data["pki"].items()})
        return cls(
            data["platform"],
            pki,
            measurement=bytes.fromhex(data["measurement"]),
            debug=data["debug"],
            send_vcek=data["send_vcek"],
        )
