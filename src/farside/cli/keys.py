"""Keys and bundles: ``measure``, ``build``, ``keygen``, ``sign``, ``platform``, ``certs``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _common as common

if TYPE_CHECKING:
    from farside.attestation import Bundle

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the key and bundle commands to the ``farside`` parser's subcommands."""
    _add_measure(sub)
    _add_bundle_parsers(sub)
    _add_key_parsers(sub)


def _add_measure(sub: Any) -> None:
    measure = common.add_parser(
        sub,
        "measure",
        help="print an enclave bundle's measurement",
        description="Print the bundle's manifest ('bundle: ...'), its signer ('signer: HEX' "
        "after checking the signature, or 'signer: unsigned') and its SHA-256 measurement "
        "('measurement: HEX', 64 hex digits), the one the proxy reports on load.",
    )
    measure.add_argument(
        "path", type=Path, metavar="PATH", help="a .py file, package directory or .fsb archive"
    )
    measure.add_argument("--no-debug", action="store_true", help="measure as non-debug")
    measure.add_argument("--json", action="store_true", help="print one JSON object")
    measure.set_defaults(func=_cmd_measure)


def _cmd_measure(args: argparse.Namespace) -> int:
    from farside.attestation import load_bundle, verify_bundle_signature
    from farside.attestation.identity import UNSIGNED

    # Without --no-debug, the bundle's own flag (enclave.toml's, an archive's, else debug).
    bundle = load_bundle(args.path, debug=False if args.no_debug else None)
    signer = verify_bundle_signature(bundle)
    signer_hex = None if signer == UNSIGNED else signer.hex()
    if args.json:
        common.print_json({**_fields(bundle), "signer": signer_hex})
        return 0
    print(_describe(bundle))
    print(f"signer: {signer_hex or 'unsigned'}")
    print(f"measurement: {bundle.measurement().hex()}")
    return 0


def _describe(bundle: Bundle) -> str:
    m = bundle.manifest
    return (
        f"bundle: {m.name} (entry {m.entry}, {len(bundle.files)} files, {bundle.size} bytes, "
        f"product_id={m.product_id}, security_version={m.security_version}, debug={m.debug})"
    )


def _fields(bundle: Bundle) -> dict[str, object]:
    m = bundle.manifest
    return {
        "name": m.name,
        "entry": m.entry,
        "files": len(bundle.files),
        "size": bundle.size,
        "product_id": m.product_id,
        "security_version": m.security_version,
        "debug": m.debug,
        "measurement": bundle.measurement().hex(),
    }


def _add_bundle_parsers(sub: Any) -> None:
    build = common.add_parser(
        sub,
        "build",
        help="build an enclave bundle archive (.fsb)",
        description="Write PATH (a .py file or package directory) as a deterministic .fsb "
        "archive with its manifest. Manifest fields come from the flags, else the package's "
        "enclave.toml ([enclave] name, product_id, security_version, debug), else the "
        "defaults (the file or directory name, 0, 0, debug). Prints what it wrote, the "
        "manifest and 'measurement: HEX'.",
    )
    build.add_argument("path", type=Path, metavar="PATH", help="a .py file or package directory")
    build.add_argument(
        "--out", type=Path, required=True, metavar="FILE.fsb", help="the archive to write (.fsb)"
    )
    build.add_argument(
        "--name", metavar="NAME", help="the enclave's name (default: the file or directory name)"
    )
    build.add_argument("--product-id", type=int, metavar="N", help="the product id (default 0)")
    build.add_argument(
        "--security-version", type=int, metavar="N", help="the security version (default 0)"
    )
    build.add_argument("--no-debug", action="store_true", help="build a non-debug enclave")
    build.add_argument("--json", action="store_true", help="print one JSON object")
    build.set_defaults(func=_cmd_build)

    keygen = common.add_parser(
        sub,
        "keygen",
        help="make a signer key for bundles (Ed25519)",
        description="Write a signer key (PKCS#8 PEM, mode 0600) to --out and its public key "
        "next to it (.pub). Prints what it wrote and the signer identity (SHA-256 of the "
        "public key) as 'signer: HEX'.",
    )
    keygen.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="the key to write (signer.key)"
    )
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    keygen.add_argument("--json", action="store_true", help="print one JSON object")
    keygen.set_defaults(func=_cmd_keygen)

    sign = common.add_parser(
        sub,
        "sign",
        help="sign a built bundle archive",
        description="Sign the archive's measurement with the signer key, adding (or replacing) "
        "its signature in place. Prints the manifest, 'measurement: HEX' and the signer "
        "identity as 'signer: HEX'.",
    )
    sign.add_argument(
        "archive", type=Path, metavar="FILE.fsb", help="a .fsb archive (farside build)"
    )
    sign.add_argument(
        "--key", type=Path, required=True, metavar="FILE", help="the signer key (farside keygen)"
    )
    sign.add_argument("--json", action="store_true", help="print one JSON object")
    sign.set_defaults(func=_cmd_sign)


def _cmd_build(args: argparse.Namespace) -> int:
    from farside.attestation import build_bundle

    bundle = build_bundle(
        args.path,
        args.out,
        name=args.name,
        product_id=args.product_id,
        security_version=args.security_version,
        debug=False if args.no_debug else None,
    )
    if args.json:
        common.print_json({"archive": str(args.out), **_fields(bundle)})
        return 0
    print(f"wrote {args.out}")
    print(_describe(bundle))
    print(f"measurement: {bundle.measurement().hex()}")
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from farside.attestation import generate_signer_key

    public = generate_signer_key(args.out, force=args.force)
    signer = _signer_of_key(args.out).hex()
    if args.json:
        common.print_json({"key": str(args.out), "public_key": str(public), "signer": signer})
        return 0
    print(f"wrote {args.out} (0600) and {public}")
    print(f"signer: {signer}")
    return 0


def _signer_of_key(path: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization

    from farside.attestation import load_signer_key
    from farside.attestation.identity import signer_of

    public = load_signer_key(path).public_key()
    return signer_of(
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def _cmd_sign(args: argparse.Namespace) -> int:
    from farside.attestation import sign_bundle, verify_bundle_signature

    bundle = sign_bundle(args.archive, args.key)
    signer = verify_bundle_signature(bundle).hex()
    if args.json:
        common.print_json({"archive": str(args.archive), **_fields(bundle), "signer": signer})
        return 0
    print(f"signed {args.archive}")
    print(_describe(bundle))
    print(f"measurement: {bundle.measurement().hex()}")
    print(f"signer: {signer}")
    return 0


def _add_key_parsers(sub: Any) -> None:
    platform = sub.add_parser(
        "platform",
        help="this trusted machine's platform identity",
        description="The platform key pair of a trusted machine: its proxies sign attestation "
        "evidence with platform.key, and clients accept a remote enclave only if they trust "
        "that machine's platform.pub (AttestationPolicy(platform_keys=...), or "
        "--platform-key FILE). init makes the pair.",
    )
    platform_sub = platform.add_subparsers(dest="platform_command", required=True, metavar="ACTION")
    init = common.add_parser(
        platform_sub,
        "init",
        help="write platform.key (0600) and platform.pub",
        description="Make this trusted machine's platform key pair (Ed25519): platform.key "
        "(mode 0600), which its proxies sign evidence with, and platform.pub, which clients "
        "trust.",
    )
    init.add_argument("--dir", required=True, metavar="DIR", help="directory for the key pair")
    init.add_argument("--force", action="store_true", help="replace an existing key pair")
    init.set_defaults(func=_cmd_platform_init)

    agent = common.add_parser(
        platform_sub,
        "agent",
        help="hold the platform key for this machine's proxies (started by provisioners)",
        description="The platform agent: the only process that holds the platform key. It "
        "takes channels for new proxies on --control-fd and answers each with evidence and "
        "sealing keys for the identity the proxy registered before running enclave code. "
        "Provisioners start it; it exits when its control socket closes.",
    )
    agent.add_argument("--control-fd", type=int, required=True, metavar="FD", help="its broker")
    source = agent.add_mutually_exclusive_group(required=True)
    source.add_argument("--platform-dir", type=Path, metavar="DIR", help="sign with DIR's key")
    source.add_argument("--ephemeral", action="store_true", help="sign with a fresh key")
    agent.add_argument("--parent-pid", type=int, metavar="PID", help="exit when it dies")
    agent.set_defaults(func=_cmd_platform_agent)

    certs = common.add_parser(
        sub,
        "certs",
        help="make a development CA and server/client certificates",
        description="Write ca.pem, server.pem, server.key (SANs: every --host), client.pem "
        "and client.key into --out, for tests and first deployments.",
    )
    certs.add_argument("--out", required=True, metavar="DIR", help="output directory")
    certs.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="HOST",
        help="a DNS name or IP address the server is reached by (repeatable)",
    )
    certs.add_argument(
        "--client-name",
        default="farside-client",
        metavar="NAME",
        help="the client certificate's common name (its identity)",
    )
    certs.add_argument("--days", type=int, default=365, metavar="N", help="validity in days")
    certs.add_argument("--force", action="store_true", help="replace existing files")
    certs.set_defaults(func=_cmd_certs)


def _cmd_platform_agent(args: argparse.Namespace) -> int:
    from farside.attestation.agent import agent_main

    return agent_main(
        control_fd=args.control_fd, platform_dir=args.platform_dir, parent_pid=args.parent_pid
    )


def _cmd_platform_init(args: argparse.Namespace) -> int:
    from farside.attestation.platform import init_platform

    public = init_platform(args.dir, force=args.force)
    print(f"wrote {public.with_name('platform.key')} (0600) and {public}")
    return 0


def _cmd_certs(args: argparse.Namespace) -> int:
    from farside._devcerts import make_dev_certs

    paths = make_dev_certs(
        args.out, args.host, client_name=args.client_name, days=args.days, force=args.force
    )
    for path in paths:
        print(f"wrote {path}")
    return 0
