"""The comparison enclave: runs ``program.main`` (plain file handling) inside an enclave."""

from __future__ import annotations

from typing import Any

from farside.trusted import TrustedApplication, ecall

from . import program


class WordCount(TrustedApplication):
    @ecall
    def main(self) -> dict[str, Any]:
        return program.main()


def build_trusted_application() -> TrustedApplication:
    return WordCount()
