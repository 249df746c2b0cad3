"""The data-service enclave: it keeps a dataset's rows and answers only aggregates.

Entry points (no entry point returns rows):

* ``ingest(rows)``: the data owner's. Checks the rows (a list of dicts mapping
  column names to numbers, every row with the same columns) and returns them
  sealed with policy ``"signer"``: canonical JSON inside, so the same rows always
  seal the same plaintext. The owner stores the blob anywhere; only an enclave of
  this signer and product id, at this security version or higher, on this
  platform, opens it.
* ``load_dataset(sealed)``: the analyst's. Unseals a blob ``ingest`` made and keeps
  the rows in memory; returns the column names.
* ``aggregate(column, op, where=None)``: ``op`` is one of ``OPS``; ``where``
  optionally keeps only rows whose columns lie in inclusive ranges,
  ``{"age": [30, 39]}`` (``None`` for an open end). Refuses (``ValueError``) any op
  or column it does not know, and any group of fewer than ``MIN_GROUP`` rows, so a
  narrow filter cannot single a row out.

Error messages cross the boundary to the caller, so none of them carries a row
value. This file imports only the standard library and ``farside.trusted``: all of
the enclave's code is in its measurement.
"""

from __future__ import annotations

import json
import math
import re
import threading
from typing import Any

from farside.trusted import EnclaveConfig, TrustedApplication, ecall, seal, unseal

OPS = ("count", "sum", "mean", "min", "max")
MIN_GROUP = 3  # fewer rows than this and an aggregate says too much about each of them
MAX_ROWS = 100_000
MAX_COLUMNS = 64
MAX_MAGNITUDE = 2**63  # bounds ints, so that sums and JSON stay small
FORMAT = "farside.examples.data_service.v1"
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

Number = int | float
Rows = list[dict[str, Number]]


def _is_number(value: object) -> bool:
    if isinstance(value, bool):  # True is an int in Python, and not a measurement
        return False
    if isinstance(value, int):
        return -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE
    return isinstance(value, float) and math.isfinite(value)


def check_rows(rows: object) -> Rows:
    """Return ``rows`` if it is a valid dataset; ``ValueError`` naming the row and column.

    The messages name positions and column names, never values.
    """
    if not isinstance(rows, list):
        raise ValueError("rows must be a list of dicts")
    if not MIN_GROUP <= len(rows) <= MAX_ROWS:
        raise ValueError(
            f"a dataset has {MIN_GROUP} to {MAX_ROWS} rows (fewer could never be queried), "
            f"not {len(rows)}"
        )
    columns: list[str] | None = None
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ValueError(f"row {index} is not a dict")
        names = sorted(row)
        if columns is None:
            if not 1 <= len(names) <= MAX_COLUMNS:
                raise ValueError(f"a row has 1 to {MAX_COLUMNS} columns, not {len(names)}")
            for name in names:
                if not isinstance(name, str) or not _COLUMN.fullmatch(name):
                    raise ValueError(
                        f"row {index}: column names are identifiers of up to 64 characters"
                    )
            columns = names
        elif names != columns:
            raise ValueError(f"row {index} does not have the same columns as row 1")
        for name in names:
            if not _is_number(row[name]):
                raise ValueError(f"row {index}, column {name!r}: not a finite number")
    return rows


def _range(column: str, bounds: object) -> tuple[float, float]:
    if not isinstance(bounds, list | tuple) or len(bounds) != 2:
        raise ValueError(f"where[{column!r}] must be [low, high] (None for an open end)")
    low, high = bounds
    for bound in (low, high):
        if bound is not None and not _is_number(bound):
            raise ValueError(f"where[{column!r}]: the bounds are numbers or None")
    return (-math.inf if low is None else low), (math.inf if high is None else high)


class DataService(TrustedApplication):
    """Seals datasets for their owner; answers aggregates over one loaded dataset."""

    def initialize(self, config: EnclaveConfig) -> None:
        self._lock = threading.Lock()
        self._rows: Rows = []
        self._columns: frozenset[str] = frozenset()

    @ecall
    def ingest(self, rows: Any) -> bytes:
        """Check ``rows`` and return them sealed for this signer and product."""
        checked = check_rows(rows)
        plaintext = json.dumps(
            {"format": FORMAT, "rows": checked},
            sort_keys=True,
            separators=(",", ":"),
            allow_nan=False,
        )
        return seal(plaintext.encode(), policy="signer")

    @ecall
    def load_dataset(self, sealed: bytes) -> list[str]:
        """Open a dataset ``ingest`` sealed and keep it; return its column names."""
        plaintext = unseal(sealed)  # UnsealError unless this signer's enclaves sealed it here
        try:
            document = json.loads(plaintext)
        except ValueError:
            document = None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError("the sealed blob is not a dataset of this service")
        rows = check_rows(document.get("rows"))
        with self._lock:
            self._rows = rows
            self._columns = frozenset(rows[0])
        return sorted(rows[0])

    @ecall
    def aggregate(self, column: str, op: str, where: dict[str, Any] | None = None) -> Number:
        """``op`` over ``column`` of the rows ``where`` keeps; refuses small groups."""
        with self._lock:
            rows, columns = self._rows, self._columns
        if not rows:
            raise ValueError("no dataset is loaded: call load_dataset first")
        if not isinstance(op, str) or op not in OPS:
            raise ValueError(f"unknown op {op!r}: the ops are {', '.join(OPS)}")
        if not isinstance(column, str) or column not in columns:
            raise ValueError(
                f"unknown column {column!r}: the columns are {', '.join(sorted(columns))}"
            )
        if where is not None and not isinstance(where, dict):
            raise ValueError('where is None or a dict like {"age": [30, 39]}')
        ranges = {}
        for name, bounds in (where or {}).items():
            if name not in columns:
                raise ValueError(f"unknown column {name!r} in where")
            ranges[name] = _range(name, bounds)
        values = [
            row[column]
            for row in rows
            if all(low <= row[name] <= high for name, (low, high) in ranges.items())
        ]
        if len(values) < MIN_GROUP:
            raise ValueError(
                f"the group has fewer than {MIN_GROUP} rows: its aggregates would expose "
                "individual rows"
            )
        if op == "count":
            return len(values)
        if op == "min":
            return min(values)
        if op == "max":
            return max(values)
        total = sum(values) if all(type(v) is int for v in values) else math.fsum(values)
        return total if op == "sum" else total / len(values)


def build_trusted_application() -> TrustedApplication:
    """Asylo's BuildTrustedApplication."""
    return DataService()
