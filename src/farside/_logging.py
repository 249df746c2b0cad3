"""How farside's daemons log: a timestamp on every line, text or JSON, gRPC's own lines kept out.

``configure_logging(level, fmt, name=...)`` is called once by each long-running entry
point (``farside proxy``, ``farside provision-server``, ``farside fleet join``,
``farside vsock-relay``) before it imports gRPC. Every line carries an ISO 8601
timestamp in UTC with milliseconds; ``fmt="json"`` writes one JSON object per line
(``ts``, ``level``, ``logger``, ``process``, ``message`` and, for an exception,
``exc``), for log shippers that parse it.

gRPC's C core writes its own lines to stderr (handshake failures among them, which
farside reports in its own words). They are silenced unless the level is ``debug``:
``GRPC_VERBOSITY`` must be in the environment before gRPC is imported, and proxies
started later inherit it. An explicit ``$GRPC_VERBOSITY`` is kept.

This module must stay cheap and low: it imports nothing of farside.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import IO, Literal

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "JSONFormatter", "TextFormatter", "configure_logging"]

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
LogFormat = Literal["text", "json"]

MAX_MESSAGE = 64 * 2**10
"""The longest message one line carries; longer ones are cut (a log line must stay a line)."""


def _timestamp(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``2026-11-30T09:15:02.123Z NAME LEVEL message``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + " [... cut]"
        line = f"{_timestamp(record.created)} {self._name} {record.levelname} {message}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``process``, ``message``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + " [... cut]"
        entry = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self._name,
            "pid": record.process,
            "message": message,
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    level: str = "info",
    fmt: str = "text",
    *,
    name: str = "farside",
    stream: IO[str] | None = None,
) -> None:
    """Send this process's log lines to ``stream`` (stderr) at ``level``, as ``fmt``.

    Replaces whatever handlers the root logger had (a second call reconfigures).
    ``name`` says which daemon wrote a line (``farside-proxy[1234]``).
    """
    if level not in LOG_LEVELS:
        raise ValueError(f"the log level must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    if fmt not in LOG_FORMATS:
        raise ValueError(f"the log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    os.environ.setdefault("GRPC_VERBOSITY", "DEBUG" if level == "debug" else "NONE")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JSONFormatter(name) if fmt == "json" else TextFormatter(name))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # gRPC's Python side logs through logging; keep it quiet unless debugging.
    logging.getLogger("grpc").setLevel(logging.DEBUG if level == "debug" else logging.ERROR)
