"""The ``farside`` command: one module per command group.

* ``client``: ``demo``, ``run``, ``status``;
* ``server``: ``proxy``, ``provision-server``, ``fleet``, ``doctor``, ``vsock-relay``;
* ``keys``: ``measure``, ``build``, ``keygen``, ``sign``, ``platform``, ``certs``;
* ``evidence``: ``evidence verify`` (real TEE evidence, offline).

Each command's handler sits beside its parser. Handlers import what they use, so
``farside --help`` and argument errors load nothing heavy.

``main`` is the one boundary where errors meet the user: a mistake (a farside error,
a bad file, a refused request) is one line, ``farside COMMAND: what and how to fix
it``, and exit status 1; Ctrl-C is ``interrupted`` and 130; ``-v`` adds tracebacks.
Only a bug in farside shows a traceback unasked.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from . import _common, client, evidence, keys, server

__all__ = ["build_parser", "main"]

# Commands that run as daemons: they log from info, with timestamps, under these names.
_SERVERS = {
    "proxy": "farside-proxy",
    "provision-server": "farside-provision",
    "platform agent": "farside-agent",
    "vsock-relay": "farside-relay",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``farside`` command."""
    from farside import __version__

    parser = argparse.ArgumentParser(
        prog="farside",
        description="Run the confidential part of an application in a remote enclave.",
        parents=[_common.OUTPUT_FLAGS],
        formatter_class=_common.HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"farside {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    client.register(sub)
    server.register(sub)
    keys.register(sub)
    evidence.register(sub)
    return parser


def _command_name(args: argparse.Namespace) -> str:
    """``run``, or ``fleet join``: what error lines start with."""
    words = [args.command]
    for attribute in ("fleet_command", "platform_command", "evidence_command"):
        if getattr(args, attribute, None):
            words.append(getattr(args, attribute))
    return " ".join(words)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``farside`` command."""
    import os

    parser = build_parser()
    # argparse cannot take `run ENCLAVE --call NAME ARG...` (positionals after an option)
    # in one pass; the leftover plain words are the call's arguments.
    words = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(words)
    if getattr(args, "config", None):
        # The file's settings go right after the command's name, so that the command
        # line's own flags, which come later, override them.
        try:
            settings = _common.config_words(args.config, args.config_parser)
        except _common.CommandError as exc:
            print(f"farside {args.command}: {exc}", file=sys.stderr)
            return 2
        at = words.index(args.command) + 1
        args, extra = parser.parse_known_args([*words[:at], *settings, *words[at:]])
    if extra and (
        args.command != "run"
        or any(word.startswith("-") and _common.parse_arg(word) == word for word in extra)
    ):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.args = [*args.args, *extra]
    name = _command_name(args)
    prefix = _SERVERS.get(name)
    if prefix is not None and name in ("proxy", "platform agent"):
        prefix = f"{prefix}[{os.getpid()}]"  # one of many on the machine
    _common.configure_logging(args, server=prefix is not None, name=prefix or "farside")
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        print(f"farside {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _is_user_error(exc):
            raise  # a bug in farside: its traceback is what a report needs
        if getattr(args, "verbose", 0):
            traceback.print_exc()
        lines = _common.describe_error(exc, args)
        print(f"farside {name}: " + "\n".join(lines), file=sys.stderr)
        return 1
    return code


def _is_user_error(exc: BaseException) -> bool:
    """A mistake or a refusal the user can act on, as opposed to a bug."""
    from farside import ClientClosedError, EnclaveError, EnclaveNameError

    return isinstance(
        exc,
        EnclaveError
        | ClientClosedError
        | EnclaveNameError
        | _common.CommandError
        | ValueError
        | OSError,
    )
