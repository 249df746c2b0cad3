"""What the command groups share: flags for reaching an enclave, secrets, errors.

Importing this module is cheap: farside's own modules are imported inside the
functions that need them, so ``farside --help`` loads no gRPC or cryptography.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farside.transport.factory import TRANSPORTS

if TYPE_CHECKING:
    from farside import AttestationPolicy, Provisioner, TLSConfig

__all__ = [
    "add_remote_flags",
    "client_tls",
    "fail",
    "jsonable",
    "parse_arg",
    "policy",
    "positive_int",
    "provisioner",
    "read_secret",
]


def parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def fail(command: str, message: object) -> int:
    print(f"farside {command}: {message}", file=sys.stderr)
    return 1


def read_secret(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}") from None
    if not token:
        raise ValueError(f"{path!r} is empty")
    return token


def client_tls(args: argparse.Namespace) -> TLSConfig | None:
    from farside import TLSConfig

    if not (args.tls_ca or args.tls_cert or args.tls_key):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    return TLSConfig(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)


def provisioner(args: argparse.Namespace) -> Provisioner:
    from farside import LocalProvision, RemoteProvision

    if not args.remote:
        return LocalProvision(transport=args.transport)
    token = read_secret(args.token_file) if args.token_file else None
    return RemoteProvision(
        args.remote,
        tls=client_tls(args),
        token=token,
        transport=args.transport,
        node_label=getattr(args, "node_label", None),
    )


def policy(args: argparse.Namespace, *, debug: bool) -> AttestationPolicy | None:
    from farside import AttestationPolicy

    if not (args.platform_key or args.trust_any_platform):
        return None  # the default: exactly this bundle, on a platform the provisioner vouches for
    return AttestationPolicy(
        platform_keys=tuple(args.platform_key or ()),
        allow_debug=debug,
        trust_any_platform=args.trust_any_platform,
    )


def add_remote_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default=None,
        help="the session's wire: gRPC (default, or $FARSIDE_TRANSPORT) or the faster "
        "stream transport (docs/performance.md)",
    )
    group = parser.add_argument_group("remote provisioning (default: a local proxy process)")
    group.add_argument("--remote", metavar="HOST:PORT", help="the provision server to use")
    group.add_argument("--tls-ca", metavar="FILE", help="CA bundle that signed the server's cert")
    group.add_argument("--tls-cert", metavar="FILE", help="client certificate (mTLS)")
    group.add_argument("--tls-key", metavar="FILE", help="client key (mTLS)")
    group.add_argument("--token-file", metavar="FILE", help="the server's bearer token")
    group.add_argument(
        "--node-label",
        metavar="KEY=VALUE",
        help="fleet mode: place the enclave on a host with this label (e.g. tee=sgx)",
    )
    group.add_argument(
        "--platform-key",
        metavar="FILE",
        action="append",
        help="a trusted machine's platform.pub: its evidence is accepted (repeatable)",
    )
    group.add_argument(
        "--trust-any-platform",
        action="store_true",
        help="accept evidence signed by any platform (development only; logged loudly)",
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value
