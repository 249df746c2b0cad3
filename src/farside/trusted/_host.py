"""``host``: the enclave's explicit ways out to the client's machine."""

from __future__ import annotations

from typing import Any

from .runtime import current_runtime

__all__ = ["cancelled", "host"]

_RESERVED = "farside."


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or name.startswith(_RESERVED):
        raise ValueError(
            f"exit handler names are non-empty str not starting with {_RESERVED!r}, got {name!r}"
        )


class Host:
    """Exit calls from inside the enclave; anything they return is untrusted input."""

    def call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run the client's exit handler ``name`` on the waiting client thread; return its result.

        If the handler raises, ``farside.HostCallError`` is raised here.
        """
        _check_name(name)
        return current_runtime().exit_call(name, args, kwargs)

    def notify(self, name: str, /, *args: Any, **kwargs: Any) -> None:
        """One-way form of ``call``: sent in order with output, no result, no waiting."""
        _check_name(name)
        current_runtime().notify(name, args, kwargs)

    def open(
        self,
        file: str,
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        """Open a file on the client's machine, confined to the root the client allows.

        Same arguments and return types as the builtin ``open``, which inside an enclave
        opens the same files; unlike it, ``host.open`` never opens the trusted host's
        (the interpreter's) files: every path outside the client's root raises
        ``PermissionError``.
        """
        return current_runtime().open(file, mode, buffering, encoding, errors, newline)


host = Host()
"""The enclave's handle on its host (the client's machine)."""


def cancelled() -> bool:
    """True if the client gave up on the entry call this thread runs (its timeout passed).

    A long computation can check it and stop early; the call's next exit call would
    raise ``HostCallError`` with code ``CANCELLED`` anyway.
    """
    return current_runtime().cancelled()
