"""The sans-IO session core of farside.

Frames in, frames and "deliver to thread T" events out; no sockets, threads or
clocks. Both ends of a session (the client and the proxy) drive a
``SessionCore``; the transports only move frames, and the untrusted and trusted
runtimes only talk to the core through their driver (``farside.transport``).
"""

from ._core import PROTOCOL_VERSION, Limits, Role, SessionCore, State
from ._events import (
    BundleReceived,
    CallKind,
    CallReceived,
    CancelReceived,
    CloseReceived,
    DisposeReceived,
    Event,
    LoadedReceived,
    OutputReceived,
    RemoteError,
    ResultReceived,
    Stream,
)

__all__ = [
    "PROTOCOL_VERSION",
    "BundleReceived",
    "CallKind",
    "CallReceived",
    "CancelReceived",
    "CloseReceived",
    "DisposeReceived",
    "Event",
    "Limits",
    "LoadedReceived",
    "OutputReceived",
    "RemoteError",
    "ResultReceived",
    "Role",
    "SessionCore",
    "State",
    "Stream",
]
