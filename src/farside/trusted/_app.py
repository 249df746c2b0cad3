"""What an enclave author writes: a ``TrustedApplication`` and its ``@ecall``s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .._config import EnclaveConfig

__all__ = ["TrustedApplication", "ecall", "is_ecall"]

F = TypeVar("F", bound=Callable[..., Any])
_ECALL_MARK = "__farside_ecall__"


def ecall(method: F) -> F:
    """Mark a ``TrustedApplication`` method as a named entry point.

    The client reaches it with ``client.call("name", *args, **kwargs)``; methods
    without this mark cannot be called from outside. ``timeout`` is reserved by
    ``call`` and cannot be a parameter name.
    """
    if not callable(method):
        raise TypeError("@ecall decorates methods")
    setattr(method, _ECALL_MARK, True)
    return method


def is_ecall(obj: object) -> bool:
    """True if ``obj`` was marked with ``@ecall``."""
    return callable(obj) and getattr(obj, _ECALL_MARK, False) is True


class TrustedApplication:
    """Base class of an enclave: Asylo's TrustedApplication, in Python.

    The bundle's ``build_trusted_application()`` returns one instance. The
    runtime calls ``initialize`` once after loading, ``run`` for each
    ``enter_and_run``, the ``@ecall`` methods by name, and ``finalize`` once when
    the client destroys the enclave. Calls from different client threads run
    concurrently on different worker threads: guard shared state.
    """

    def initialize(self, config: EnclaveConfig) -> None:
        """Set the enclave up; raising here fails the client's load."""

    def run(self, input: Any) -> Any:
        """Handle ``client.enter_and_run(input)`` and return its output."""
        raise NotImplementedError(f"{type(self).__name__} does not implement run()")

    def finalize(self, final_input: Any) -> None:
        """Tear down; ``final_input`` is what the client passed to ``destroy_enclave``."""
