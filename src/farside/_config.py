"""``EnclaveConfig``: what the client hands to the enclave's ``initialize``.

Shared by both sides: the client builds it, it crosses the wire as a value, and
the trusted runtime rebuilds it for ``TrustedApplication.initialize``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from . import _values

__all__ = ["EnclaveConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EnclaveConfig:
    """Configuration handed to ``TrustedApplication.initialize``.

    ``environment`` becomes ``os.environ`` entries inside the enclave's process;
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
