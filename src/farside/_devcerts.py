"""``farside certs``: a development CA and server/client certificates.

For tests and first deployments: an ECDSA P-256 CA, a server certificate whose
subject alternative names are the given hosts (DNS names or IP addresses), and a
client certificate for mTLS. Keys are written 0600, atomically. Production
deployments should use their own PKI; see docs/deploy.md.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._files import write_private

__all__ = ["make_dev_certs", "make_fleet_certs"]

FILES = ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    days: int,
    *,
    ca: bool = False,
    hosts: list[str] | None = None,
    usage: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False
        )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _prepare(
    out: str | os.PathLike[str], hosts: list[str], files: tuple[str, ...], force: bool, no_host: str
) -> Path:
    """Check the host names, make ``out`` (0700), and refuse to overwrite ``files`` unless
    ``force``; return the directory."""
    if not hosts:
        raise ValueError(no_host)
    for host in hosts:
        if not host or any(c.isspace() for c in host):
            raise ValueError(f"invalid host name {host!r}")
    root = Path(out)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not force:
        existing = [name for name in files if (root / name).exists()]
        if existing:
            raise FileExistsError(
                f"{', '.join(existing)} already exist in {str(root)!r}; pass --force to replace"
            )
    return root


def make_dev_certs(
    out: str | os.PathLike[str],
    hosts: list[str],
    *,
    client_name: str = "farside-client",
    days: int = 365,
    force: bool = False,
) -> list[Path]:
    """Write ca.pem, server.pem/.key (SANs: ``hosts``), client.pem/.key into ``out``."""
    root = _prepare(
        out, hosts, FILES, force, "at least one --host is needed for the server certificate"
    )
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # A unique name: clients may trust several development CAs in one bundle.
    ca_name = f"farside development CA {secrets.token_hex(4)}"
    ca = _issue(ca_name, ca_key, None, ca_key, days, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        hosts[0], server_key, ca, ca_key, days, hosts=hosts, usage=[ExtendedKeyUsageOID.SERVER_AUTH]
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue(
        client_name, client_key, ca, ca_key, days, usage=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    pem = serialization.Encoding.PEM
    outputs = {
        "ca.pem": (ca.public_bytes(pem), 0o644),
        "server.pem": (server.public_bytes(pem), 0o644),
        "server.key": (_key_pem(server_key), 0o600),
        "client.pem": (client.public_bytes(pem), 0o644),
        "client.key": (_key_pem(client_key), 0o600),
    }
    for name, (data, mode) in outputs.items():
        write_private(root / name, data, mode=mode, force=True)
    return [root / name for name in FILES]


FLEET_FILES = ("ca.pem", "node.pem", "node.key")


def make_fleet_certs(
    out: str | os.PathLike[str], hosts: list[str], *, days: int = 365, force: bool = False
) -> list[Path]:
    """Write ca.pem, node.pem and node.key (0600) for a development fleet's Ray TLS.

    Ray uses one certificate per node both to serve and to connect (mutual TLS),
    so the node certificate allows both uses; its SANs are ``hosts`` (every node's
    address). A CA of its own: Ray's cluster is not the clients' business.
    """
    root = _prepare(
        out, hosts, FLEET_FILES, force, "at least one --host (a node's address) is needed"
    )
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue(f"farside fleet CA {secrets.token_hex(4)}", ca_key, None, ca_key, days, ca=True)
    node_key = ec.generate_private_key(ec.SECP256R1())
    node = _issue(
        "farside fleet node",
        node_key,
        ca,
        ca_key,
        days,
        hosts=hosts,
        usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    pem = serialization.Encoding.PEM
    outputs = {
        "ca.pem": (ca.public_bytes(pem), 0o644),
        "node.pem": (node.public_bytes(pem), 0o644),
        "node.key": (_key_pem(node_key), 0o600),
    }
    for name, (data, mode) in outputs.items():
        write_private(root / name, data, mode=mode, force=True)
    return [root / name for name in FLEET_FILES]
