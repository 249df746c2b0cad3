"""The analyst: query aggregates over a sealed dataset, through the signed enclave.

    python -m farside.examples.data_service.analyst --enclave data_service.fsb \\
        --signer SIGNER_HEX --sealed dataset.sealed --query mean:salary \\
        --query count:salary:age=30..39 \\
        --remote trusted.example.com:4321 --tls-ca tls/ca.pem --tls-cert tls/client.pem \\
        --tls-key tls/client.key --platform-key platform.pub

The analyst never holds the rows: it sends the sealed blob into an enclave that
has proven it is the pinned signer's code (any other code is refused before it
gets anything), and the enclave answers only ``count``, ``sum``, ``mean``, ``min``
and ``max`` over groups of at least three rows.

A query is ``OP:COLUMN``, optionally followed by filters ``:COLUMN=LOW..HIGH``
(inclusive; leave out a bound for an open end: ``age=55..``). Without ``--query``,
the analyst asks for the row count and each column's sum and mean.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import farside

from . import common
from .owner import describe

__all__ = ["Query", "ask", "default_queries", "main", "query_dataset", "run_queries"]

Number = int | float


def _bound(text: str) -> Number | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


@dataclass(frozen=True, slots=True)
class Query:
    """``op`` over ``column`` of the rows whose ``where`` columns lie in their ranges."""

    op: str
    column: str
    where: tuple[tuple[str, Number | None, Number | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Query:
        """``OP:COLUMN[:COLUMN=LOW..HIGH]...``; ``ValueError`` if it is not one."""
        op, _, rest = text.partition(":")
        column, *filters = rest.split(":")
        if not op or not column:
            raise ValueError(f"a query is OP:COLUMN[:COLUMN=LOW..HIGH]..., not {text!r}")
        where = []
        for item in filters:
            name, equals, bounds = item.partition("=")
            low, dots, high = bounds.partition("..")
            if not (name and equals and dots):
                raise ValueError(f"a filter is COLUMN=LOW..HIGH, not {item!r} (in {text!r})")
            try:
                where.append((name, _bound(low), _bound(high)))
            except ValueError:
                raise ValueError(f"the bounds of {item!r} are numbers (in {text!r})") from None
        return cls(op, column, tuple(where))

    def arguments(self) -> tuple[str, str, dict[str, list[Number | None]] | None]:
        """The ``aggregate`` entry point's arguments."""
        where = {name: [low, high] for name, low, high in self.where} or None
        return self.column, self.op, where

    def __str__(self) -> str:
        text = f"{self.op}({self.column})"
        conditions = []
        for name, low, high in self.where:
            if low is not None and high is not None:
                conditions.append(f"{low} <= {name} <= {high}")
            elif low is not None:
                conditions.append(f"{name} >= {low}")
            elif high is not None:
                conditions.append(f"{name} <= {high}")
        return f"{text} where {' and '.join(conditions)}" if conditions else text


def default_queries(columns: Sequence[str]) -> list[Query]:
    """The row count, then each column's sum and mean."""
    queries = [Query("count", columns[0])]
    for column in columns:
        queries += [Query("sum", column), Query("mean", column)]
    return queries


def run_queries(
    client: farside.EnclaveClient,
    sealed: bytes,
    queries: Sequence[Query] | None = None,
    *,
    out: Callable[[str], Any] = print,
) -> list[tuple[Query, Number | None]]:
    """Load ``sealed`` into the enclave, then ``ask`` it ``queries`` (default: the usual)."""
    columns: list[str] = client.call("load_dataset", sealed)
    out(f"dataset columns: {', '.join(columns)}")
    return ask(client, default_queries(columns) if queries is None else queries, out=out)


def ask(
    client: farside.EnclaveClient,
    queries: Sequence[Query],
    *,
    out: Callable[[str], Any] = print,
) -> list[tuple[Query, Number | None]]:
    """Ask a loaded dataset ``queries``; return (query, answer, or None if refused).

    A query the enclave refuses (an unknown op or column, a group that is too
    small) is reported through ``out`` and answered ``None``; other errors raise.
    """
    answers: list[tuple[Query, Number | None]] = []
    for query in queries:
        try:
            value: Number = client.call("aggregate", *query.arguments())
        except farside.EnclaveCallError as exc:
            if exc.remote_type != "ValueError":
                raise
            out(f"{query}: refused: {exc.message}")
            answers.append((query, None))
        else:
            out(f"{query} = {value}")
            answers.append((query, value))
    return answers


def query_dataset(
    enclave: str | os.PathLike[str],
    sealed: bytes,
    queries: Sequence[Query] | None = None,
    *,
    signer: str,
    provision: farside.Provisioner | None = None,
    platform_keys: Sequence[str | os.PathLike[str]] = (),
    out: Callable[[str], Any] = print,
) -> list[tuple[Query, Number | None]]:
    """Load the signed enclave (``AttestationError`` if it is not the signer's) and query."""
    with common.load_enclave(
        enclave, signer=signer, provision=provision, platform_keys=platform_keys
    ) as client:
        out(describe(client.identity))
        return run_queries(client, sealed, queries, out=out)


def _query(text: str) -> Query:
    try:
        return Query.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m farside.examples.data_service.analyst",
        description="Query aggregates over a sealed dataset through the signed data-service "
        "enclave. A query is OP:COLUMN[:COLUMN=LOW..HIGH]... with OP one of count, sum, "
        "mean, min, max; default: the row count and each column's sum and mean.",
    )
    common.add_common_flags(parser)
    parser.add_argument(
        "--sealed", required=True, metavar="FILE", help="the blob the data owner sealed"
    )
    parser.add_argument(
        "--query",
        action="append",
        type=_query,
        metavar="OP:COLUMN[:COLUMN=LOW..HIGH]",
        help="an aggregate to ask for (repeatable)",
    )
    common.add_remote_flags(parser)
    args = parser.parse_args(argv)
    try:
        sealed = Path(args.sealed).read_bytes()
        provision = common.provisioner(args)
        try:
            query_dataset(
                args.enclave,
                sealed,
                args.query,
                signer=args.signer,
                provision=provision,
                platform_keys=args.platform_key,
            )
        finally:
            if isinstance(provision, farside.RemoteProvision):
                provision.close()
    except farside.EnclaveCallError as exc:
        if not exc.remote_type.endswith("UnsealError"):
            print(f"analyst: error: {exc}", file=sys.stderr)
            return 1
        print(
            f"analyst: error: {exc.message}. It was sealed on another trusted machine (in "
            "local mode: by another process), for another signer or product, by a newer "
            "version, or it was changed.",
            file=sys.stderr,
        )
        return 1
    except (farside.EnclaveError, ValueError, OSError) as exc:
        print(f"analyst: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
