"""Lazy package attributes (PEP 562): a package names its exports, and importing the
package loads none of the modules behind them until one is used.

Every ``farside`` package's ``__init__`` is a table of ``name -> submodule`` built with
``exports``, so ``import farside.protocol`` (or ``farside.trusted``) does not pay for
gRPC, the provisioners or the CLI. Type checkers see the same names through the
package's ``if TYPE_CHECKING:`` imports; ``tests/unit/test_layers.py`` checks that the
two agree and that every export resolves.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["exports"]


def exports(
    package: str, table: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose name ``N`` comes from ``table[N]``.

    ``table`` maps each exported name to the module that defines it, relative to the
    package (``".bundle"``). A name is imported on first use and then cached in the
    package's namespace, so later look-ups cost nothing.
    """

    def __getattr__(name: str) -> Any:  # noqa: N807 (the PEP 562 hook's name)
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted({*table, *vars(importlib.import_module(package))})

    return __getattr__, __dir__
