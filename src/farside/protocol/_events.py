"""Events the session core hands to its driver, and the values they carry.

Each event says what arrived and which client thread it must be delivered to
(``thread``; 0 means the session itself, not a thread). Events validate
themselves when built, so a driver can trust their fields.
"""

from __future__ import annotations

import enum
import os
import traceback as _traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._config import SandboxConfig
from .._errors import EnclaveError, StatusCode
from ..attestation.bundle import Bundle

# farside's own frames say nothing about the code that raised: a remote traceback shows
# the peer's code only (enclave code's frames are named "<enclave NAME>/...").
_FARSIDE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

__all__ = [
    "BundleReceived",
    "CallKind",
    "CallReceived",
    "CancelReceived",
    "CloseReceived",
    "DisposeReceived",
    "Event",
    "LoadedReceived",
    "OutputReceived",
    "RemoteError",
    "ResultReceived",
    "Stream",
]


class CallKind(enum.IntEnum):
    """What a call reaches; the numbers are the wire's ``CallKind``."""

    INITIALIZE = 1
    RUN = 2
    ECALL = 3
    FINALIZE = 4
    EXIT = 5

    @property
    def is_entry(self) -> bool:
        """True for calls from the client into the enclave."""
        return self is not CallKind.EXIT


class Stream(enum.IntEnum):
    """Which output stream one-way output belongs to; the wire's ``Stream``."""

    STDOUT = 1
    STDERR = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteError:
    """An exception raised on the other side, as it crossed the wire."""

    code: StatusCode = StatusCode.UNKNOWN
    type: str = ""
    message: str = ""
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException, *, debug: bool = False) -> RemoteError:
        """Describe ``exc`` for the peer; the traceback only when ``debug``, without
        farside's own frames (none at all when only farside's code was running)."""
        kind = type(exc)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        code = StatusCode.UNKNOWN
        message = str(exc)
        if isinstance(exc, EnclaveError):
            # An error that came from the other side passes through as it was (type and
            # plain message), so errors do not grow as they unwind through nested calls.
            code, message = exc.code, exc.message
            name = getattr(exc, "remote_type", "") or name
        tb = ""
        if debug:
            frames = [
                frame
                for frame in _traceback.extract_tb(exc.__traceback__)
                if not os.path.abspath(frame.filename).startswith(_FARSIDE_DIR)
            ]
            if frames:
                text = "".join(_traceback.format_list(frames))
                tb = f"Traceback (most recent call last):\n{text}{name}: {message}\n"
        return cls(code=code, type=name, message=message, traceback=tb)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallReceived:
    """The peer called us: run ``kind``/``name`` on the thread ``thread``.

    ``oneway`` calls (``host.notify``) expect no result and have ``call_id`` 0.
    """

    thread: int
    call_id: int
    kind: CallKind
    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    oneway: bool = False
    depth: int = 1
    trace: bytes = b""  # the caller's trace context, opaque here (farside.tracing reads it)

    def __post_init__(self) -> None:
        if self.oneway != (self.call_id == 0):
            raise ValueError("a call has id 0 exactly when it is one-way")


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultReceived:
    """The answer to our call ``call_id``: either ``value`` or ``error``."""

    thread: int
    call_id: int
    value: Any = None
    error: RemoteError | None = None

    def __post_init__(self) -> None:
        if self.error is not None and self.value is not None:
            raise ValueError("a result has a value or an error, not both")


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputReceived:
    """One-way output bytes from the enclave, in the order they were written."""

    thread: int
    stream: Stream
    data: bytes

    def __post_init__(self) -> None:
        Stream(self.stream)  # ValueError for anything but a known stream


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelReceived:
    """The client abandoned call ``call_id`` (and everything nested in it)."""

    thread: int
    call_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DisposeReceived:
    """(proxy) The client thread ``thread`` ended: its worker may exit once idle."""

    thread: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleReceived:
    """(proxy) The whole bundle arrived; load it and answer with ``loaded``."""

    bundle: Bundle
    max_depth: int
    nonce: bytes = b""
    client_nonce: bytes = b""
    signature: tuple[bytes, bytes] | None = None  # (signer public key, signature)
    sandbox: SandboxConfig | None = None  # what the client asks of the proxy's sandbox
    thread: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedReceived:
    """(client) The proxy loaded the bundle (``measurement``) or failed (``error``)."""

    measurement: bytes = b""
    error: RemoteError | None = None
    evidence: Any = None  # farside.v1.Evidence, verified by farside.attestation.evidence
    proxy_nonce: bytes = b""
    thread: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseReceived:
    """The peer ended the session; ``error`` is set when it did so on a fault."""

    error: RemoteError | None = None
    thread: int = 0


Event = (
    CallReceived
    | ResultReceived
    | OutputReceived
    | CancelReceived
    | DisposeReceived
    | BundleReceived
    | LoadedReceived
    | CloseReceived
)
