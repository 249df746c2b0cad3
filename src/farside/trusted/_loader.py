"""Loading a bundle's bytes as an isolated Python package, straight from memory.

The proxy executes exactly the bytes it received and measured: nothing is
written to disk and re-read. The bundle becomes the package ``_farside_enclave``
(its own modules import each other relatively), and every module of it gets its
own copy of the builtins (``open`` among them reaches the client's files on the
threads that run enclave code: ``_redirect``).
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.machinery
import importlib.util
import linecache
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from ..attestation.bundle import Bundle

__all__ = ["PACKAGE", "load_package"]

PACKAGE = "_farside_enclave"


class _BundleImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and loads ``_farside_enclave[.sub...]`` from the bundle's files."""

    def __init__(self, bundle: Bundle, enclave_builtins: Mapping[str, Any]) -> None:
        self._files = bundle.files
        self._entry = bundle.manifest.entry
        self._tag = f"<enclave {bundle.manifest.name}>"
        self._builtins = dict(enclave_builtins)

    def _locate(self, fullname: str) -> tuple[str, bool] | None:
        if fullname == PACKAGE:
            return self._entry, True
        if not fullname.startswith(PACKAGE + "."):
            return None
        rel = fullname[len(PACKAGE) + 1 :].replace(".", "/")
        if f"{rel}/__init__.py" in self._files:
            return f"{rel}/__init__.py", True
        if f"{rel}.py" in self._files:
            return f"{rel}.py", False
        return None

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        found = self._locate(fullname)
        if found is None:
            return None
        filename, is_package = found
        spec = importlib.util.spec_from_loader(fullname, self, is_package=is_package)
        if spec is not None:
            spec.origin = f"{self._tag}/{filename}"
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        found = self._locate(module.__name__)
        assert found is not None
        filename, _ = found
        source = self._files[filename].decode("utf-8")
        origin = f"{self._tag}/{filename}"
        # Tracebacks show the enclave's lines: register them (mtime None: never stale).
        linecache.cache[origin] = (len(source), None, source.splitlines(True), origin)
        module.__file__ = origin
        module.__dict__["__builtins__"] = self._builtins
        code = compile(source, origin, "exec", dont_inherit=True)
        exec(code, module.__dict__)  # noqa: S102 (running the enclave's code is the point)


def load_package(bundle: Bundle) -> ModuleType:
    """Import ``bundle`` as the package ``_farside_enclave`` and return it.

    Errors in the bundle's code propagate as raised (``SyntaxError``, ...).
    """
    enclave_builtins = dict(builtins.__dict__)
    importer = _BundleImporter(bundle, enclave_builtins)
    sys.meta_path.insert(0, importer)
    return importlib.import_module(PACKAGE)
