"""``EnclaveConfig`` and ``SandboxConfig``: what the client hands to the enclave's side.

Shared by both sides: the client builds them; ``EnclaveConfig`` crosses the wire as a
value that the trusted runtime rebuilds for ``TrustedApplication.initialize``, and
``SandboxConfig`` travels in the session's ``Open`` frame to the proxy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from . import _values

__all__ = ["SANDBOX_MODES", "EnclaveConfig", "SandboxConfig", "SandboxMode"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EnclaveConfig:
    """Configuration handed to ``TrustedApplication.initialize``.

    ``environment`` is the enclave's ``os.environ``, all of it (like Asylo's
    ``environment_variables``: nothing of the trusted machine's environment is left);
    ``user`` is any farside value the enclave wants (like Asylo's config extensions).
    """

    environment: Mapping[str, str] = field(default_factory=dict)
    user: Any = None

    def __post_init__(self) -> None:
        env = dict(self.environment)
        for key, value in env.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key or "=" in key:
                raise TypeError(
                    f"EnclaveConfig.environment entry {key!r}: {value!r} must map a "
                    "non-empty str without '=' to a str"
                )
        object.__setattr__(self, "environment", MappingProxyType(env))
        _values.encode(self.user, what="EnclaveConfig.user")  # TypeError now, not at load

    def to_wire(self) -> dict[str, Any]:
        """The value that crosses the wire."""
        return {"environment": dict(self.environment), "user": self.user}

    @classmethod
    def from_wire(cls, value: Any) -> EnclaveConfig:
        """Rebuild from ``to_wire``'s value; raises ``TypeError`` if it is malformed."""
        if not isinstance(value, dict) or set(value) != {"environment", "user"}:
            raise TypeError("malformed EnclaveConfig")
        environment = value["environment"]
        if not isinstance(environment, dict):
            raise TypeError("malformed EnclaveConfig.environment")
        return cls(environment=environment, user=value["user"])


SandboxMode = Literal["strict", "best-effort", "off"]
SANDBOX_MODES: tuple[SandboxMode, ...] = ("off", "best-effort", "strict")
"""From the weakest to the strictest."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxConfig:
    """What the client asks of the sandbox that confines the enclave on the trusted machine.

    ``mode``: None keeps the proxy's own (``farside proxy --sandbox``, default
    ``"best-effort"``: apply every layer the machine offers, log the rest); ``"strict"``
    makes the proxy refuse to run the enclave unless every layer is applied. A proxy
    never goes below its own mode, so ``"off"`` only turns the sandbox off where the
    proxy's own mode is off too (``LocalProvision(sandbox="off")``).
    ``memory`` (bytes of address space), ``open_files`` and ``cpu_seconds`` are resource
    limits for the proxy process; the proxy's own limits, if any, cap them.
    """

    mode: SandboxMode | None = None
    memory: int | None = None
    open_files: int | None = None
    cpu_seconds: int | None = None

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in SANDBOX_MODES:
            raise ValueError(
                f"SandboxConfig.mode must be one of {', '.join(SANDBOX_MODES)} or None, "
                f"not {self.mode!r}"
            )
        for name in ("memory", "open_files", "cpu_seconds"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"SandboxConfig.{name} must be a positive int or None")
