"""``farside evidence verify``: check a piece of real TEE evidence offline, from the shell.

Exit status 0 when the evidence verifies to its vendor's pinned root (and prints
what it says, or one JSON object with ``--json``); otherwise exit status 1 and
exactly one line on stderr, ``evidence rejected: CHECK: why``, whatever went
wrong (unreadable file, malformed bytes of any kind, a broken chain), never a
traceback. Owns only the command; verification lives in
``farside.attestation.hardware``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farside._errors import AttestationError

from . import _common as common

if TYPE_CHECKING:
    from farside.attestation.hardware import HardwareReport

__all__ = ["register", "run_verify"]

_FORMATS = ("auto", "nitro", "sev-snp", "tdx", "sgx")
_MAX_FILE = 1024 * 1024  # evidence and collateral are kilobytes; refuse to slurp a disk image


def register(sub: Any) -> None:
    """Add the ``evidence`` command group (with its ``verify`` action) to the subcommands."""
    evidence = sub.add_parser(
        "evidence",
        help="check real TEE evidence (Nitro, SEV-SNP, TDX, SGX) offline",
        description="Work with hardware attestation evidence; see docs/hardware.md.",
    )
    actions = evidence.add_subparsers(dest="evidence_command", required=True, metavar="ACTION")
    verify = common.add_parser(
        actions,
        "verify",
        help="verify evidence to its vendor's pinned root",
        description="Verify FILE (a Nitro attestation document, raw CBOR or base64; an SEV-SNP "
        "report; a TDX or SGX DCAP quote) against the pinned AWS, AMD or Intel root, offline. "
        "Exit 0 and print its claims when it verifies; otherwise exit 1 with one line "
        "'evidence rejected: CHECK: why'. Only the vendor chain and signatures are checked "
        "here, not what the claims must be (that is the client's AttestationPolicy).",
    )
    verify.add_argument("file", metavar="FILE", help="the evidence")
    verify.add_argument(
        "--format",
        default="auto",
        metavar="{" + ",".join(_FORMATS) + "}",
        help="what FILE is (default: detect)",
    )
    verify.add_argument(
        "--at",
        metavar="ISO-8601-TIME",
        help="check certificate validity at this time (default: now; no zone means UTC)",
    )
    verify.add_argument(
        "--collateral",
        metavar="FILE",
        action="append",
        default=[],
        help="SEV-SNP: the VCEK/VLEK certificate (PEM, DER or the auxblob certificate table), "
        "optionally ASK/ARK; DCAP: optional Intel TCB collateral (dcap-qvl JSON, needs "
        "farside[tcb]); repeatable",
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.set_defaults(func=run_verify)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_FILE + 1)
    except OSError as exc:
        raise AttestationError(
            check="input", message=f"cannot read {what} {path!r}: {exc.strerror or exc}"
        ) from None
    if len(data) > _MAX_FILE:
        raise AttestationError(
            check="input", message=f"{what} {path!r} is larger than {_MAX_FILE} bytes"
        )
    return data


def _parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise AttestationError(
            check="input", message=f"--at {text!r} is not an ISO-8601 time"
        ) from None
    return when.replace(tzinfo=UTC) if when.utcoffset() is None else when


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _summary(report: HardwareReport) -> dict[str, Any]:
    claims = report.claims
    return {
        "format": report.format,
        "measurement": report.measurement.hex(),
        "report_data": report.report_data.hex(),
        "debug": report.debug,
        "public_key": None if report.public_key is None else report.public_key.hex(),
        "nonce": None if report.nonce is None else report.nonce.hex(),
        "tcb_status": report.tcb_status,
        "advisory_ids": list(report.advisory_ids),
        "claims": {name: _jsonable(getattr(claims, name)) for name in claims.__slots__},
    }


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


def _verify(args: argparse.Namespace) -> dict[str, Any]:
    from farside.attestation.hardware import verify_hardware_evidence

    if args.format not in _FORMATS:
        raise AttestationError(
            check="input", message=f"--format is one of {', '.join(_FORMATS)}, not {args.format!r}"
        )
    at = None if args.at is None else _parse_time(args.at)
    data = _read(args.file, "evidence")
    collateral = [_read(path, "collateral") for path in args.collateral]
    report = verify_hardware_evidence(data, format=args.format, at=at, collateral=collateral)
    return _summary(report)


def run_verify(args: argparse.Namespace) -> int:
    """The ``evidence verify`` action: 0 and the claims, or 1 and one rejection line."""
    try:
        summary = _verify(args)
    except AttestationError as exc:
        check = exc.check or "evidence"
        print(f"evidence rejected: {check}: {_one_line(exc.message)}", file=sys.stderr)
        return 1
    except Exception as exc:  # the promise is one line, never a traceback
        print(f"evidence rejected: error: {_one_line(type(exc).__name__)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary))
        return 0
    for key in ("format", "measurement", "report_data", "debug", "tcb_status"):
        if summary[key] is not None:
            print(f"{key}: {str(summary[key]).lower() if key == 'debug' else summary[key]}")
    for name, value in summary["claims"].items():
        print(f"{name}: {value}")
    print(f"evidence verified: {Path(args.file).name} chains to the pinned vendor root")
    return 0
