"""Client commands: ``demo``, ``run`` and ``status``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from . import _common as common

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the client commands to the ``farside`` parser's subcommands."""
    _add_demo(sub)
    _add_run(sub)
    _add_status(sub)


def _add_demo(sub: Any) -> None:
    from farside.examples.quickstart.demo_driver import DEFAULT_ENCLAVE

    demo = sub.add_parser(
        "demo",
        help="run the quickstart: encrypt a message in an enclave",
        description="Load the quickstart enclave (a local proxy, or --remote), encrypt "
        "--message inside it, print the ciphertext from inside the enclave, decrypt it there "
        "to prove the round trip, and destroy it.",
    )
    demo.add_argument("--message", required=True, help="the message to encrypt")
    demo.add_argument(
        "--enclave_path",
        "--enclave-path",
        default=str(DEFAULT_ENCLAVE),
        help="the enclave bundle (default: the packaged demo enclave)",
    )
    common.add_remote_flags(demo)
    demo.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    import farside
    from farside.examples.quickstart import demo_driver

    try:
        demo_driver.run(
            args.enclave_path,
            args.message,
            provision=common.provisioner(args),
            policy=common.policy(args, debug=True),
            decrypt=True,
        )
    except (farside.EnclaveError, ValueError) as exc:
        return common.fail("demo", exc)
    return 0


def _add_run(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="load an enclave and call it from the shell",
        description="Load ENCLAVE (a .py file or package directory), call its @ecall NAME "
        "(or run() without --call) with ARGs, print the result as JSON, and destroy it. Each "
        "ARG is parsed as JSON when it is valid JSON and passed as a string otherwise.",
    )
    run.add_argument("enclave", help="the enclave bundle")
    run.add_argument("--call", metavar="NAME", help="the @ecall entry point (default: run())")
    run.add_argument("args", nargs="*", metavar="ARG", help="arguments (JSON or string)")
    run.add_argument("--no-debug", action="store_true", help="load as a non-debug enclave")
    run.add_argument(
        "--stdin",
        action="store_true",
        help="give the enclave this shell's standard input (its input() and sys.stdin)",
    )
    common.add_remote_flags(run)
    run.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    import farside

    call_args = [common.parse_arg(a) for a in args.args]
    try:
        with farside.load(
            args.enclave,
            debug=not args.no_debug,
            provision=common.provisioner(args),
            policy=common.policy(args, debug=not args.no_debug),
            stdin=args.stdin,
        ) as enclave:
            if args.call:
                result = enclave.call(args.call, *call_args)
            else:
                result = enclave.enter_and_run(call_args[0] if call_args else None)
    except (farside.EnclaveError, TypeError, ValueError) as exc:
        return common.fail("run", exc)
    print(json.dumps(common.jsonable(result)))
    return 0


def _add_status(sub: Any) -> None:
    status = sub.add_parser(
        "status",
        help="list a provision server's hosts, free slots and running enclaves",
        description="Ask the provision server at ADDRESS (a fleet-mode server lists every "
        "trusted host of its fleet) for its hosts, their free slots, and its enclaves.",
    )
    status.add_argument("address", metavar="HOST:PORT", help="the provision server")
    status.add_argument("--tls-ca", metavar="FILE", help="CA bundle that signed the server's cert")
    status.add_argument("--tls-cert", metavar="FILE", help="client certificate (mTLS)")
    status.add_argument("--tls-key", metavar="FILE", help="client key (mTLS)")
    status.add_argument("--token-file", metavar="FILE", help="the server's bearer token")
    status.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    status.add_argument("--json", action="store_true", help="print the reply as JSON")
    status.set_defaults(func=_cmd_status)


def _cmd_status(args: argparse.Namespace) -> int:
    import farside

    try:
        provision = farside.RemoteProvision(
            args.address,
            tls=common.client_tls(args),
            token=common.read_secret(args.token_file) if args.token_file else None,
        )
        try:
            reply = provision.server_status(timeout=args.timeout)
        finally:
            provision.close()
    except (farside.EnclaveError, ValueError) as exc:
        return common.fail("status", exc)
    if args.json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(reply), indent=2))
        return 0
    print(f"hosts ({len(reply.hosts)}):")
    for host in reply.hosts:
        labels = ",".join(f"{k}={v}" for k, v in sorted(host.labels.items())) or "-"
        state = "alive" if host.alive else "DEAD"
        print(
            f"  {host.address:<20} {state:<5} slots {host.slots_free}/{host.slots_total} free"
            f"  labels {labels}"
        )
    print(f"enclaves ({len(reply.enclaves)}):")
    for e in reply.enclaves:
        print(
            f"  {e.enclave_id}  {e.name:<24} {e.host or '-':<16} {e.address:<22} "
            f"{e.client:<24} up {e.uptime_seconds:7.1f} s  calls {e.calls_served}"
        )
    return 0
