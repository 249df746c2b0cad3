"""Test-only stand-ins for vendor PKIs and devices: a CA of our own, evidence it signs.

Everything here is made fresh by the tests (nothing is trusted by farside's
production entry points): certificate chains with chosen names (including the
exact names of the pinned vendor roots, to show names buy nothing), Nitro
documents, SEV-SNP reports and DCAP quotes signed by them, a configfs-tsm tree
that answers like the kernel, and an NSM that answers like the device.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from farside.attestation.hardware import _dcap_format

NOT_BEFORE = datetime(2024, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2040, 1, 1, tzinfo=UTC)
INSIDE = datetime(2025, 6, 1, tzinfo=UTC)


@dataclass
class Issued:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)])


def issue(
    subject: x509.Name,
    *,
    issuer: Issued | None = None,
    ca: bool,
    curve: ec.EllipticCurve | None = None,
    extensions: tuple[x509.ExtensionType, ...] = (),
    not_after: datetime = NOT_AFTER,
) -> Issued:
    """A certificate for a fresh key: self-signed when ``issuer`` is None."""
    key = ec.generate_private_key(curve or ec.SECP384R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    signer = key if issuer is None else issuer.key
    digest = hashes.SHA384() if isinstance(signer.curve, ec.SECP384R1) else hashes.SHA256()
    return Issued(builder.sign(signer, digest), key)


def raw_signature(key: ec.EllipticCurvePrivateKey, message: bytes, size: int) -> tuple[int, int]:
    digest = hashes.SHA384() if size == 48 else hashes.SHA256()
    return decode_dss_signature(key.sign(message, ec.ECDSA(digest)))


# ------------------------------------------------------------------------------- Nitro


def nitro_document(
    leaf: Issued,
    cabundle: list[bytes],
    *,
    user_data: bytes | None = None,
    nonce: bytes | None = None,
    public_key: bytes | None = None,
    pcrs: dict[int, bytes] | None = None,
    timestamp: datetime = INSIDE,
) -> bytes:
    """A COSE_Sign1 attestation document signed by ``leaf`` (ES384)."""
    payload = cbor2.dumps(
        {
            "module_id": "i-0123456789abcdef0-enc0123456789abcdef",
            "digest": "SHA384",
            "timestamp": int(timestamp.timestamp() * 1000),
            "pcrs": pcrs if pcrs is not None else {i: bytes([i + 1]) * 48 for i in range(16)},
            "certificate": leaf.der,
            "cabundle": cabundle,
            "public_key": public_key,
            "user_data": user_data,
            "nonce": nonce,
        }
    )
    protected = cbor2.dumps({1: -35})
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = raw_signature(leaf.key, to_be_signed, 48)
    signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]))


@dataclass
class NitroPki:
    """root -> intermediate -> leaf, the shape of AWS's (shorter)."""

    root: Issued
    intermediate: Issued
    leaf: Issued

    @classmethod
    def make(cls, root_name: x509.Name | None = None) -> NitroPki:
        root = issue(root_name or name("test nitro root"), ca=True)
        intermediate = issue(name("test nitro intermediate"), issuer=root, ca=True)
        leaf = issue(name("test nitro enclave"), issuer=intermediate, ca=False)
        return cls(root, intermediate, leaf)

    def document(self, **kwargs: object) -> bytes:
        return nitro_document(self.leaf, [self.root.der, self.intermediate.der], **kwargs)  # type: ignore[arg-type]


class FakeNsm:
    """Answers NSM API requests (CBOR in, CBOR out) like the device, signing with ``pki``.

    ``pcrs``: what the documents report (default: PCRn = bytes([n + 1]) * 48).
    """

    def __init__(
        self,
        pki: NitroPki,
        *,
        answer: Callable[[object], object] | None = None,
        pcrs: dict[int, bytes] | None = None,
    ) -> None:
        self.pki = pki
        self.requests: list[object] = []
        self._answer = answer
        self._pcrs = pcrs

    def __call__(self, request: bytes) -> bytes:
        decoded = cbor2.loads(request)
        self.requests.append(decoded)
        if self._answer is not None:
            return cbor2.dumps(self._answer(decoded))
        body = decoded["Attestation"]
        document = self.pki.document(
            user_data=body["user_data"],
            nonce=body["nonce"],
            public_key=body["public_key"],
            pcrs=self._pcrs,
        )
        return cbor2.dumps({"Attestation": {"document": document}})


# ----------------------------------------------------------------------------- SEV-SNP

_AMD = "1.3.6.1.4.1.3704.1."
CHIP_ID = bytes(range(64))
TCB = bytes([3, 0, 0, 0, 0, 0, 8, 115])  # bootloader 3, tee 0, snp 8, microcode 115 (Milan)


def _der_int(value: int) -> bytes:
    return bytes([0x02, 0x01, value])


def vcek_extensions(chip_id: bytes = CHIP_ID, tcb: bytes = TCB) -> tuple[x509.ExtensionType, ...]:
    spl = {"3.1": tcb[0], "3.2": tcb[1], "3.3": tcb[6], "3.8": tcb[7]}
    return (
        x509.UnrecognizedExtension(x509.ObjectIdentifier(_AMD + "4"), chip_id),
        *(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(_AMD + oid), _der_int(value))
            for oid, value in spl.items()
        ),
    )


@dataclass
class SnpPki:
    """ARK -> ASK -> VCEK, named as AMD names them (Milan)."""

    ark: Issued
    ask: Issued
    vcek: Issued

    @classmethod
    def make(
        cls,
        *,
        ark_name: x509.Name | None = None,
        ask_name: x509.Name | None = None,
        chip_id: bytes = CHIP_ID,
    ) -> SnpPki:
        ark = issue(ark_name or name("ARK-Milan"), ca=True)
        ask = issue(ask_name or name("SEV-Milan"), issuer=ark, ca=True)
        vcek = issue(name("SEV-VCEK"), issuer=ask, ca=False, extensions=vcek_extensions(chip_id))
        return cls(ark, ask, vcek)


def snp_report(
    vcek: Issued,
    *,
    report_data: bytes = bytes(64),
    measurement: bytes = b"\x11" * 48,
    policy: int = 0x30000,
    host_data: bytes = b"\x22" * 32,
    guest_svn: int = 1,
    chip_id: bytes = CHIP_ID,
    tcb: bytes = TCB,
) -> bytes:
    """An ATTESTATION_REPORT (version 2) signed by ``vcek``."""
    report = bytearray(0x4A0)
    struct.pack_into("<IIQ", report, 0, 2, guest_svn, policy)
    struct.pack_into("<I", report, 0x34, 1)
    report[0x38:0x40] = tcb
    report[0x50:0x90] = report_data
    report[0x90:0xC0] = measurement
    report[0xC0:0xE0] = host_data
    report[0x180:0x188] = tcb
    report[0x1A0:0x1E0] = chip_id
    r, s = raw_signature(vcek.key, bytes(report[:0x2A0]), 48)
    report[0x2A0 : 0x2A0 + 72] = r.to_bytes(72, "little")
    report[0x2A0 + 72 : 0x2A0 + 144] = s.to_bytes(72, "little")
    return bytes(report)


@dataclass
class FakeTsmKernel:
    """A configfs-tsm tree in a directory, with the kernel's side effects.

    ``mkdir`` makes an entry with ``provider`` and ``generation``; writing ``inblob``
    bumps ``generation`` and fills ``outblob`` (``make_outblob(inblob)``) and, if
    set, ``auxblob``. ``interfere`` simulates another writer: one more bump.
    """

    provider: str
    make_outblob: Callable[[bytes], bytes]
    auxblob: bytes | None = None
    interfere: bool = False
    removed: list[Path] = field(default_factory=list)

    def mkdir(self, path: Path) -> None:
        path.mkdir(mode=0o700)
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")

    def rmdir(self, path: Path) -> None:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
        self.removed.append(path)

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def write(self, path: Path, data: bytes) -> None:
        path.write_bytes(data)
        if path.name != "inblob":
            return
        generation = int((path.parent / "generation").read_text()) + 1
        generation += 1 if self.interfere else 0
        (path.parent / "generation").write_text(f"{generation}\n")
        (path.parent / "outblob").write_bytes(self.make_outblob(data))
        if self.auxblob is not None:
            (path.parent / "auxblob").write_bytes(self.auxblob)


def certificate_table(certificates: list[bytes]) -> bytes:
    """An extended report's certificate table: (GUID, offset, length) entries, then the DER."""
    guids = [bytes.fromhex("63da758de6644564adc5f4b93be8accd"), bytes(range(16))]
    header = 24 * (len(certificates) + 1)
    entries, blobs, offset = b"", b"", header
    for index, der in enumerate(certificates):
        entries += guids[min(index, 1)] + struct.pack("<II", offset, len(der))
        blobs += der
        offset += len(der)
    return entries + bytes(24) + blobs


# -------------------------------------------------------------------------------- DCAP

INTEL_SGX_QE = bytes.fromhex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff")
INTEL_TDX_QE = bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")


@dataclass
class PckPki:
    """Root -> PCK CA -> PCK, all P-256 as Intel's."""

    root: Issued
    ca: Issued
    pck: Issued

    @classmethod
    def make(
        cls, *, root_name: x509.Name | None = None, ca_name: x509.Name | None = None
    ) -> PckPki:
        curve = ec.SECP256R1()
        root = issue(root_name or name("test sgx root"), ca=True, curve=curve)
        ca = issue(ca_name or name("test pck ca"), issuer=root, ca=True, curve=curve)
        pck = issue(name("Intel SGX PCK Certificate"), issuer=ca, ca=False, curve=curve)
        return cls(root, ca, pck)

    @property
    def chain_pem(self) -> bytes:
        return self.pck.pem + self.ca.pem + self.root.pem


def _p256_raw(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = raw_signature(key, message, 32)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def dcap_quote(
    pki: PckPki,
    *,
    tdx: bool,
    report_data: bytes = bytes(64),
    debug: bool = False,
    qe_signer: bytes | None = None,
    qe_debug: bool = False,
    measurement: bytes | None = None,
) -> bytes:
    """A v3 SGX or v4 TDX quote: attestation key vouched for by a QE report the PCK signed."""
    version, tee = (4, _dcap_format.TEE_TDX) if tdx else (3, 0)
    header = struct.pack("<HHI", version, 2, tee) + bytes(40)
    if tdx:
        body = bytearray(584)
        body[120] = 0x01 if debug else 0
        body[136:184] = measurement or b"\x33" * 48
        body[520:584] = report_data
    else:
        body = bytearray(384)
        body[48] = 0x02 if debug else 0
        body[64:96] = measurement or b"\x44" * 32
        body[128:160] = b"\x55" * 32
        struct.pack_into("<HH", body, 256, 7, 3)
        body[320:384] = report_data
    signed = header + bytes(body)
    attestation = ec.generate_private_key(ec.SECP256R1())
    point = attestation.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]
    auth = b"\xaa" * 32
    qe = bytearray(384)
    qe[48] = 0x02 if qe_debug else 0
    qe[128:160] = qe_signer or (INTEL_TDX_QE if tdx else INTEL_SGX_QE)
    struct.pack_into("<H", qe, 256, 2 if tdx else 1)
    qe[320:352] = hashlib.sha256(point + auth).digest()
    pem = pki.chain_pem
    qe_part = (
        bytes(qe)
        + _p256_raw(pki.pck.key, bytes(qe))
        + struct.pack("<H", len(auth))
        + auth
        + struct.pack("<HI", 5, len(pem))
        + pem
    )
    if tdx:
        qe_part = struct.pack("<HI", 6, len(qe_part)) + qe_part
    signature_data = _p256_raw(attestation, signed) + point + qe_part
    return signed + struct.pack("<I", len(signature_data)) + signature_data


def replace_pck_chain(quote: bytes, pki: PckPki) -> bytes:
    """A real v3 quote with its PCK chain swapped for ``pki``'s and its QE report re-signed."""
    parts = _dcap_format.parse_quote(quote)
    assert parts.version == 3
    pem = pki.chain_pem
    signature_data = (
        parts.signature
        + parts.attestation_key
        + parts.qe_report
        + _p256_raw(pki.pck.key, parts.qe_report)
        + struct.pack("<H", len(parts.qe_auth_data))
        + parts.qe_auth_data
        + struct.pack("<HI", 5, len(pem))
        + pem
    )
    return parts.signed + struct.pack("<I", len(signature_data)) + signature_data


def later(days: int) -> datetime:
    return INSIDE + timedelta(days=days)
