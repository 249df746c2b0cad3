"""The exceptions farside raises, and the status codes they carry.

Every failure that crosses the enclave boundary or a process boundary surfaces as
one of these; lower layers (grpc, OSError, msgpack, protobuf) are mapped at the
layer boundary with ``raise ... from``, never leaked::

    EnclaveError                    .code (StatusCode), .message, .hint, .setting
     ├─ EnclaveLoadError            bundle missing/invalid, initialize() failed, provisioning failed
     │   └─ AttestationError        evidence missing or bad, policy mismatch
     ├─ EnclaveCallError            code on the other side raised: .remote_type, .remote_traceback
     │   └─ HostCallError           (inside the enclave) an exit handler on the client raised
     ├─ EnclaveUnavailableError     proxy/stream gone (crash, kill, network); raised promptly
     ├─ UnsealError                 (inside the enclave) a sealed blob could not be opened; opaque
     ├─ DeadlineExceededError       a call's timeout passed; the call is cancelled on the far side
     └─ ProtocolError               the peer sent a malformed or unexpected frame

    ClientClosedError(RuntimeError) a call on an EnclaveClient that was destroyed
    EnclaveNameError(ValueError)    get_client() of an unknown name, or a load under a name in use

An error's ``message`` says what went wrong; ``hint``, when there is one, says what to
change, in Python terms, and ``str(error)`` is both. ``setting`` names the setting that
fixes it ("tls.ca", "tls.cert", "tls", "policy.platform_keys", "address", "token") so
that a front end such as the ``farside`` command can say it in its own terms (a flag).

The public classes read as ``farside.EnclaveError`` (their ``__module__`` is
``farside``, where they are exported), in tracebacks, ``repr`` and the type names
that cross the boundary.

This module owns only the types; it imports nothing else from farside.
"""

from __future__ import annotations

import enum

__all__ = [
    "AttestationError",
    "ClientClosedError",
    "DeadlineExceededError",
    "EnclaveCallError",
    "EnclaveError",
    "EnclaveLoadError",
    "EnclaveNameError",
    "EnclaveUnavailableError",
    "HostCallError",
    "ProtocolError",
    "StatusCode",
    "UnsealError",
]


class StatusCode(enum.IntEnum):
    """The canonical status codes of gRPC and absl, as farside errors carry them."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def coerce(cls, value: int) -> StatusCode:
        """Return the code for ``value``, or ``UNKNOWN`` for a number no code has."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


class EnclaveError(Exception):
    """Base of every error farside raises about an enclave; carries a status code.

    ``hint`` (what to change, in Python terms) and ``setting`` (which setting that is)
    are ``None`` unless the fix is known; see the module docstring.
    """

    default_code = StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: StatusCode | None = None,
        hint: str | None = None,
        setting: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = self.default_code if code is None else code
        self.hint = hint
        self.setting = setting

    def __str__(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message


class EnclaveLoadError(EnclaveError):
    """The enclave could not be loaded: bad bundle, failed initialize(), failed provisioning."""

    default_code = StatusCode.FAILED_PRECONDITION


class AttestationError(EnclaveLoadError):
    """The enclave did not prove what it is: evidence missing, invalid, or against policy.

    ``check`` names the check that failed. Every evidence: "evidence", "nonce", "channel
    binding", "measurement", "signer", "product id", "security version", "debug",
    "sandbox"; sim evidence: "platform signature"; hardware evidence (docs/hardware.md):
    "platform", "body binding", "format", "root", "certificate chain", "expired",
    "timestamp", "signature", "collateral", "qe report", "qe identity", "attestation key",
    "tcb", and the platform's pinned claims (as ``check_expectations`` names them).
    """

    default_code = StatusCode.PERMISSION_DENIED

    def __init__(
        self,
        message: str,
        *,
        check: str = "",
        code: StatusCode | None = None,
        hint: str | None = None,
        setting: str | None = None,
    ) -> None:
        super().__init__(message, code=code, hint=hint, setting=setting)
        self.check = check


class EnclaveCallError(EnclaveError):
    """Code on the other side of the boundary raised.

    ``remote_type`` is the qualified name of the exception raised there;
    ``remote_traceback`` is its formatted traceback for debug enclaves, else ``None``.
    ``str()`` names the remote type unless it is farside's generic ``EnclaveError``
    (the enclave runtime's own refusals, such as an unknown entry point), so no error
    name is said twice.
    """

    def __init__(
        self,
        message: str,
        *,
        remote_type: str = "",
        remote_traceback: str | None = None,
        code: StatusCode | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        named = self.remote_type and self.remote_type not in _GENERIC_REMOTE_TYPES
        text = f"{self.remote_type}: {self.message}" if named else self.message
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


class HostCallError(EnclaveCallError):
    """Raised inside an enclave when the client's exit handler for ``host.call`` raised."""


class EnclaveUnavailableError(EnclaveError):
    """The enclave is gone: its proxy crashed or was killed, or the connection broke."""

    default_code = StatusCode.UNAVAILABLE


class UnsealError(EnclaveError):
    """A sealed blob could not be opened, for whatever reason; the one error unseal raises.

    Another enclave or platform, tampering, truncation, an unknown format and a
    blob from a higher security version all raise this, with the same message and
    code, so a caller probing with crafted blobs learns nothing about why.

    The code is ``DATA_LOSS`` ("unrecoverable data loss or corruption"), not
    ``PERMISSION_DENIED``: one opaque error cannot claim that a permission check
    failed when the cause may be corruption, and to the unsealer a blob sealed
    for another enclave is indistinguishable from corrupted bytes (the key is
    derived, never compared). Either way the data is not recoverable from this
    blob here. ``PERMISSION_DENIED`` stays the code of a failed attestation.
    """

    default_code = StatusCode.DATA_LOSS


class DeadlineExceededError(EnclaveError):
    """A call's timeout passed; the call was cancelled on the far side."""

    default_code = StatusCode.DEADLINE_EXCEEDED


class ProtocolError(EnclaveError):
    """The peer broke the session protocol (malformed or out-of-order frame).

    The session that saw it is closed; every later use of it raises this again.
    """

    default_code = StatusCode.INTERNAL


class ClientClosedError(RuntimeError):
    """The EnclaveClient was destroyed; load the enclave again to make new calls."""


class EnclaveNameError(ValueError):
    """An enclave name is unknown to the EnclaveManager, or already in use."""


# The generic error's names on the wire (a peer of an older farside says farside._errors).
_GENERIC_REMOTE_TYPES = frozenset({"farside.EnclaveError", "farside._errors.EnclaveError"})

# Exported as farside.X: say so wherever a class name is printed.
for _public in (
    EnclaveError,
    EnclaveLoadError,
    AttestationError,
    EnclaveCallError,
    HostCallError,
    EnclaveUnavailableError,
    UnsealError,
    DeadlineExceededError,
    ProtocolError,
    ClientClosedError,
    EnclaveNameError,
    StatusCode,
):
    _public.__module__ = "farside"
del _public
