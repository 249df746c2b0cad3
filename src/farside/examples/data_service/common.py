"""What the data owner's and the analyst's drivers share: flags, policy, loading, the CSV.

Both sides load the same signed enclave under the same policy: the enclave must be
signed by the expected signer (``--signer``, the hex line ``farside sign`` prints),
be this product, not be a debug enclave, and run on a trusted machine whose
platform key the client holds (``--platform-key``; local mode trusts its own).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path

import farside

__all__ = [
    "ENCLAVE_DIR",
    "ENCLAVE_NAME",
    "PRODUCT_ID",
    "SAMPLE_CSV",
    "SECURITY_VERSION",
    "add_common_flags",
    "add_remote_flags",
    "load_enclave",
    "policy",
    "provisioner",
    "read_csv",
    "signer_hex",
]

HERE = Path(__file__).resolve().parent
ENCLAVE_DIR = HERE / "enclave"
SAMPLE_CSV = HERE / "sample.csv"
# The manifest enclave/enclave.toml gives `farside build`; the policy checks PRODUCT_ID.
ENCLAVE_NAME = "data_service"
PRODUCT_ID = 1
SECURITY_VERSION = 1

_SIGNER = re.compile(r"[0-9a-f]{64}")


def signer_hex(text: str) -> str:
    """An argparse type: the 64-hex signer identity that ``farside sign`` prints."""
    value = text.strip().lower()
    if not _SIGNER.fullmatch(value):
        raise argparse.ArgumentTypeError(
            "the signer is 64 hex digits: the last line `farside sign` (or keygen) prints"
        )
    return value


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """``--enclave`` and ``--signer``, which both sides need."""
    parser.add_argument(
        "--enclave",
        required=True,
        metavar="FILE.fsb",
        help="the signed enclave archive (farside build + farside sign)",
    )
    parser.add_argument(
        "--signer",
        required=True,
        type=signer_hex,
        metavar="HEX",
        help="the signer identity to require (printed by farside sign); other code is refused",
    )


def add_remote_flags(parser: argparse.ArgumentParser) -> None:
    """The remote-provisioning flags of ``farside demo``."""
    group = parser.add_argument_group("remote provisioning (default: a local proxy process)")
    group.add_argument("--remote", metavar="HOST:PORT", help="the provision server to use")
    group.add_argument("--tls-ca", metavar="FILE", help="CA bundle that signed the server's cert")
    group.add_argument("--tls-cert", metavar="FILE", help="client certificate (mTLS)")
    group.add_argument("--tls-key", metavar="FILE", help="client key (mTLS)")
    group.add_argument("--token-file", metavar="FILE", help="the server's bearer token")
    group.add_argument(
        "--platform-key",
        metavar="FILE",
        action="append",
        default=[],
        help="the trusted machine's platform.pub: only its evidence is accepted (repeatable)",
    )


def provisioner(args: argparse.Namespace) -> farside.Provisioner:
    """``RemoteProvision`` from the flags, or ``LocalProvision`` without ``--remote``."""
    if not args.remote:
        return farside.LocalProvision()
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    tls = None
    if args.tls_ca or args.tls_cert:
        tls = farside.TLSConfig(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    token = None
    if args.token_file:
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"the token file {args.token_file!r} is empty")
    return farside.RemoteProvision(args.remote, tls=tls, token=token)


def policy(
    signer: str, platform_keys: Sequence[str | os.PathLike[str]] = ()
) -> farside.AttestationPolicy:
    """What both sides require before they send the enclave anything.

    Pinning the signer (not one measurement) lets the signer ship a fixed version
    (a higher security version) that still opens the datasets sealed before it;
    ``min_security_version`` refuses anything older than this example's enclave.
    """
    return farside.AttestationPolicy(
        signers=(signer,),
        product_id=PRODUCT_ID,
        min_security_version=SECURITY_VERSION,
        allow_debug=False,
        platform_keys=tuple(platform_keys),
    )


def load_enclave(
    enclave: str | os.PathLike[str],
    *,
    signer: str,
    provision: farside.Provisioner | None = None,
    platform_keys: Sequence[str | os.PathLike[str]] = (),
) -> farside.EnclaveClient:
    """Load the signed data-service enclave; ``AttestationError`` if it is not the one."""
    return farside.load(
        enclave,
        provision=provision,
        debug=False,
        policy=policy(signer, platform_keys),
    )


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, int | float]]:
    """The rows of a CSV file with a header line and numbers in every cell.

    ``ValueError`` names the line and column of a bad cell (the enclave checks the
    rows again: it trusts nothing its caller sends).
    """
    rows: list[dict[str, int | float]] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or ())
        if not columns:
            raise ValueError(f"{os.fspath(path)!r} has no header line")
        for record in reader:
            line = reader.line_num
            if None in record or any(record[column] is None for column in columns):
                raise ValueError(f"line {line}: not as many cells as the header has columns")
            rows.append({column: _number(record[column], line, column) for column in columns})
    return rows


def _number(cell: str, line: int, column: str) -> int | float:
    text = cell.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"line {line}, column {column!r}: not a number") from None
