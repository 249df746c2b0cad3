"""The ``farside`` command: one module per command group.

* ``client``: ``demo``, ``run``, ``status``;
* ``server``: ``proxy``, ``provision-server``, ``fleet``, ``doctor``;
* ``keys``: ``measure``, ``build``, ``keygen``, ``sign``, ``platform``, ``certs``;
* ``evidence``: ``evidence verify`` (real TEE evidence, offline).

Each command's handler sits beside its parser. Handlers import what they use, so
``farside --help`` and argument errors load nothing heavy.
"""

from __future__ import annotations

import argparse

from . import _common, client, evidence, keys, server

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``farside`` command."""
    parser = argparse.ArgumentParser(
        prog="farside",
        description="Run the confidential part of an application in a remote enclave.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    client.register(sub)
    server.register(sub)
    keys.register(sub)
    evidence.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``farside`` command."""
    parser = build_parser()
    # argparse cannot take `run ENCLAVE --call NAME ARG...` (positionals after an option)
    # in one pass; the leftover plain words are the call's arguments.
    args, extra = parser.parse_known_args(argv)
    if extra and (
        args.command != "run"
        or any(word.startswith("-") and _common.parse_arg(word) == word for word in extra)
    ):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.args = [*args.args, *extra]
    code: int = args.func(args)
    return code
