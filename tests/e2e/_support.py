"""Helpers for the end-to-end tests that run once per transport."""

from __future__ import annotations

import os

from farside.transport.factory import TRANSPORT_VARIABLE


def environment(transport: str) -> dict[str, str]:
    """This process's environment, with ``$FARSIDE_TRANSPORT`` set to ``transport``."""
    return {**os.environ, TRANSPORT_VARIABLE: transport}


def proxy_transport(cmdline: str) -> str:
    """The transport a ``farside proxy`` command line serves (gRPC unless it says)."""
    words = cmdline.split()
    if "--transport" in words:
        return words[words.index("--transport") + 1]
    return "grpc"
