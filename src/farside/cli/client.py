"""Client commands: ``demo``, ``run`` and ``status``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import _common as common

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the client commands to the ``farside`` parser's subcommands."""
    _add_demo(sub)
    _add_run(sub)
    _add_status(sub)


def _add_demo(sub: Any) -> None:
    demo = common.add_parser(
        sub,
        "demo",
        help="run the quickstart: encrypt a message in an enclave",
        description="Load the quickstart enclave (a local proxy, or --remote), encrypt "
        "--message inside it, print the ciphertext from inside the enclave, decrypt it there "
        "to prove the round trip, and destroy it.",
    )
    demo.add_argument("--message", required=True, metavar="TEXT", help="the message to encrypt")
    demo.add_argument(
        "--enclave-path",
        "--enclave_path",
        dest="enclave_path",
        metavar="PATH",
        help="the enclave bundle (default: the packaged demo enclave, "
        "farside.examples.quickstart.DEMO_ENCLAVE)",
    )
    common.add_remote_flags(demo)
    demo.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from farside.examples.quickstart import DEMO_ENCLAVE, demo_driver

    demo_driver.run(
        args.enclave_path or str(DEMO_ENCLAVE),
        args.message,
        provision=common.provisioner(args),
        policy=common.policy(args, debug=True),
        decrypt=True,
        load_timeout=args.connect_timeout,
    )
    return 0


def _add_run(sub: Any) -> None:
    run = common.add_parser(
        sub,
        "run",
        help="load an enclave and call it from the shell",
        description="Load ENCLAVE (a .py file, package directory or .fsb archive), call its "
        "@ecall NAME (or run() without --call) with ARGs, print the result as JSON, and "
        "destroy it. Each ARG is read as JSON when it is valid JSON (42 is a number, "
        "'\"42\"' the string) and as a string otherwise; a note on stderr says when an ARG "
        "was read as something other than a string. With --json-args every ARG must be JSON.",
    )
    run.add_argument("enclave", metavar="ENCLAVE", help="the enclave bundle")
    run.add_argument("--call", metavar="NAME", help="the @ecall entry point (default: run())")
    run.add_argument("args", nargs="*", metavar="ARG", help="arguments (JSON or string)")
    run.add_argument(
        "--json-args", action="store_true", help="every ARG is JSON: a bare word is an error"
    )
    run.add_argument("--no-debug", action="store_true", help="load as a non-debug enclave")
    run.add_argument(
        "--files-root",
        metavar="DIR",
        help="the directory whose files the enclave may open (open(), host.open); "
        "default: the working directory",
    )
    run.add_argument(
        "--exit-handler",
        action="append",
        default=[],
        metavar="NAME=MODULE:FUNCTION",
        help="serve the enclave's host.call(NAME, ...) with FUNCTION of the Python module "
        "MODULE (imported from the working directory or sys.path); repeatable",
    )
    run.add_argument(
        "--stdin",
        action="store_true",
        help="give the enclave this shell's standard input (its input() and sys.stdin)",
    )
    common.add_remote_flags(run)
    run.set_defaults(func=_cmd_run)


def _import_handler(spec: str) -> tuple[str, Callable[..., Any]]:
    """``NAME=MODULE:FUNCTION`` -> (NAME, the function), imported the way ``python -m`` would."""
    name, _, target = spec.partition("=")
    module_name, _, attribute = target.partition(":")
    if not (name and module_name and attribute):
        raise common.CommandError(
            f"--exit-handler takes NAME=MODULE:FUNCTION (e.g. audit=handlers:audit), not {spec!r}"
        )
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise common.CommandError(
            f"--exit-handler {spec}: cannot import {module_name}: {exc}"
        ) from None
    function = module
    for part in attribute.split("."):
        function = getattr(function, part, None)  # type: ignore[assignment]
        if function is None:
            raise common.CommandError(f"--exit-handler {spec}: {module_name} has no {attribute}")
    if not callable(function):
        raise common.CommandError(f"--exit-handler {spec}: {attribute} is not callable")
    return name, function


def _cmd_run(args: argparse.Namespace) -> int:
    import farside

    call_args, notes = common.parse_call_args(args.args, strict=args.json_args)
    for note in notes:
        print(f"farside run: note: {note}", file=sys.stderr)
    handlers = dict(_import_handler(spec) for spec in args.exit_handler)
    if args.files_root is not None and not os.path.isdir(args.files_root):
        raise common.CommandError(f"--files-root {args.files_root!r} is not a directory")
    with farside.load(
        args.enclave,
        debug=not args.no_debug,
        provision=common.provisioner(args),
        policy=common.policy(args, debug=not args.no_debug),
        exit_handlers=handlers,
        load_timeout=args.connect_timeout,
        stdin=args.stdin,
        **({"files_root": args.files_root} if args.files_root is not None else {}),
    ) as enclave:
        if args.call:
            result = enclave.call(args.call, *call_args)
        else:
            if len(call_args) > 1:
                raise common.CommandError(
                    f"run() takes one input, not {len(call_args)} ARGs (give a JSON list, or "
                    "--call NAME)"
                )
            result = enclave.enter_and_run(call_args[0] if call_args else None)
    print(json.dumps(common.jsonable(result)))
    return 0


def _add_status(sub: Any) -> None:
    status = common.add_parser(
        sub,
        "status",
        help="list a provision server's hosts, free slots and running enclaves",
        description="Ask the provision server at HOST:PORT (a fleet-mode server lists every "
        "trusted host of its fleet) for its hosts, their free slots, and the enclaves it "
        "shows this client. CALLS counts the entry calls each enclave has served, "
        "initialize() included, as its proxy last reported them: proxies report changes "
        "twice a second, so a call made in the last half second may not be counted yet.",
    )
    status.add_argument("address", metavar="HOST:PORT", help="the provision server")
    status.add_argument("--tls-ca", metavar="FILE", help="CA bundle that signed the server's cert")
    status.add_argument("--tls-cert", metavar="FILE", help="client certificate (mTLS)")
    status.add_argument("--tls-key", metavar="FILE", help="client key (mTLS)")
    status.add_argument("--token-file", metavar="FILE", help="the server's bearer token")
    status.add_argument(
        "--timeout", type=common.positive_float, default=10.0, metavar="SECONDS", help="seconds"
    )
    status.add_argument(
        "--json",
        action="store_true",
        help="print the reply as JSON, with the counters of a server that keeps metrics "
        "(each enclave's; the server's totals for operators)",
    )
    status.add_argument(
        "--watch",
        type=common.positive_float,
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C; with --json, one JSON "
        "document per line",
    )
    status.add_argument(
        "--count", type=common.positive_int, metavar="N", help="with --watch: stop after N"
    )
    status.set_defaults(func=_cmd_status)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append(("  " + "  ".join(cells)).rstrip())
    return lines


def _cmd_status(args: argparse.Namespace) -> int:
    import farside

    provision = farside.RemoteProvision(
        args.address,
        tls=common.client_tls(args),
        token=common.read_secret(args.token_file) if args.token_file else None,
    )
    if args.watch is None:
        try:
            reply = provision.server_status(timeout=args.timeout)
        finally:
            provision.close()
        _print_status(reply, as_json=args.json, compact=False)
        return 0
    return _watch_status(provision, args)


def _watch_status(provision: Any, args: argparse.Namespace) -> int:
    """``status --watch``: the table (or a JSON line) every ``--watch`` s, until Ctrl-C."""
    import sys
    import time

    import farside

    shown = 0
    try:
        while True:
            try:
                reply = provision.server_status(timeout=args.timeout)
            except farside.EnclaveError as exc:
                print(f"farside status: {exc}", file=sys.stderr)  # a watch rides it out
            else:
                if not args.json and sys.stdout.isatty():
                    print("\x1b[H\x1b[2J", end="")  # a refreshed table, not a scroll
                if not args.json:
                    print(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                _print_status(reply, as_json=args.json, compact=True)
            shown += 1
            if args.count is not None and shown >= args.count:
                return 0
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    finally:
        provision.close()


def _print_status(reply: Any, *, as_json: bool, compact: bool) -> None:
    if as_json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(reply), indent=None if compact else 2), flush=True)
        return
    print(f"hosts ({len(reply.hosts)}):")
    hosts = [
        (
            host.address,
            "alive" if host.alive else "DEAD",
            f"{host.slots_free}/{host.slots_total}",
            ",".join(f"{k}={v}" for k, v in sorted(host.labels.items())) or "-",
        )
        for host in reply.hosts
    ]
    if hosts:
        print("\n".join(_table(("ADDRESS", "STATE", "FREE/SLOTS", "LABELS"), hosts)))
    print(f"enclaves ({len(reply.enclaves)}):")
    enclaves = [
        (
            e.enclave_id,
            e.name,
            e.host or "-",
            e.address,
            e.client,
            f"{e.uptime_seconds:.1f}s",
            str(e.calls_served),
        )
        for e in reply.enclaves
    ]
    if enclaves:
        headers = ("ID", "NAME", "HOST", "ADDRESS", "CLIENT", "UPTIME", "CALLS")
        print("\n".join(_table(headers, enclaves)))
