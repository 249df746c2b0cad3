"""A helper module of the package enclave."""

from typing import Any


def double(value: Any) -> Any:
    return value * 2
