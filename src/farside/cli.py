"""The ``farside`` command: run the demo, call any enclave, run a proxy, measure a bundle."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _cmd_demo(args: argparse.Namespace) -> int:
    import farside
    from farside.examples.quickstart import demo_driver

    try:
        demo_driver.run(args.enclave_path, args.message, decrypt=True)
    except farside.EnclaveError as exc:
        print(f"farside demo: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import farside

    call_args = [_parse_arg(a) for a in args.args]
    try:
        with farside.load(args.enclave, debug=not args.no_debug) as enclave:
            if args.call:
                result = enclave.call(args.call, *call_args)
            else:
                result = enclave.enter_and_run(call_args[0] if call_args else None)
    except (farside.EnclaveError, TypeError) as exc:
        print(f"farside run: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(_jsonable(result), indent=None))
    return 0


def _cmd_proxy(args: argparse.Namespace) -> int:
    from farside.proxy import run_proxy

    return run_proxy(
        args.listen,
        token_file=args.token_file,
        token_stdin=args.token_stdin,
        idle_timeout=args.idle_timeout,
        parent_pid=args.parent_pid,
    )


def _cmd_measure(args: argparse.Namespace) -> int:
    from farside.attestation import BundleError, load_bundle

    try:
        bundle = load_bundle(args.path, debug=not args.no_debug)
    except BundleError as exc:
        print(f"farside measure: {exc}", file=sys.stderr)
        return 1
    m = bundle.manifest
    print(
        f"bundle: {m.name} (entry {m.entry}, {len(bundle.files)} files, {bundle.size} bytes, "
        f"debug={m.debug})"
    )
    print(bundle.measurement().hex())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``farside`` command."""
    from farside.examples.quickstart.demo_driver import DEFAULT_ENCLAVE

    parser = argparse.ArgumentParser(
        prog="farside",
        description="Run the confidential part of an application in a remote enclave.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the quickstart: encrypt a message in an enclave",
        description="Load the quickstart enclave (local provisioning), "
        "encrypt --message inside it, print the ciphertext from inside the "
        "enclave, decrypt it there to prove the round trip, and destroy it.",
    )
    demo.add_argument("--message", required=True, help="the message to encrypt")
    demo.add_argument(
        "--enclave_path",
        "--enclave-path",
        default=str(DEFAULT_ENCLAVE),
        help="the enclave bundle (default: the packaged demo enclave)",
    )
    demo.set_defaults(func=_cmd_demo)

    run = sub.add_parser(
        "run",
        help="load an enclave and call it from the shell",
        description="Load ENCLAVE (a .py file or package directory), call "
        "its @ecall NAME (or run() without --call) with ARGs, print the result "
        "as JSON, and destroy it. Each ARG is parsed as JSON when it is valid "
        "JSON and passed as a string otherwise.",
    )
    run.add_argument("enclave", help="the enclave bundle")
    run.add_argument("--call", metavar="NAME", help="the @ecall entry point (default: run())")
    run.add_argument("args", nargs="*", metavar="ARG", help="arguments (JSON or string)")
    run.add_argument("--no-debug", action="store_true", help="load as a non-debug enclave")
    run.set_defaults(func=_cmd_run)

    proxy = sub.add_parser(
        "proxy",
        help="serve one enclave session (started by provisioners)",
        description="The RemoteEnclaveProxyServer: listen on --listen, "
        "accept the one session presenting the token, host its enclave, and "
        "exit when the session ends. Prints 'farside-proxy ready ADDRESS' "
        "once it listens.",
    )
    proxy.add_argument(
        "--listen", required=True, help="unix:/path/to.sock or host:port (port 0 picks one)"
    )
    token = proxy.add_mutually_exclusive_group()
    token.add_argument(
        "--token-stdin",
        action="store_true",
        help="read the session token from the first line of stdin",
    )
    token.add_argument("--token-file", help="read the session token from this file")
    proxy.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        help="exit if no client connects within this many seconds (default 30)",
    )
    proxy.add_argument(
        "--parent-pid",
        type=int,
        help="exit when this process (the provisioner) is no longer the parent",
    )
    proxy.set_defaults(func=_cmd_proxy)

    measure = sub.add_parser(
        "measure",
        help="print an enclave bundle's measurement",
        description="Print the bundle's SHA-256 measurement (64 hex "
        "digits, on the last line), the one the proxy reports on load.",
    )
    measure.add_argument("path", type=Path, help="a .py file or package directory")
    measure.add_argument("--no-debug", action="store_true", help="measure as non-debug")
    measure.set_defaults(func=_cmd_measure)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``farside`` command."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
