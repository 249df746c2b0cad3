"""An enclave that seals and unseals what the client hands it (the sealing tests' enclave)."""

from __future__ import annotations

from typing import Any

from farside.trusted import TrustedApplication, ecall, seal, unseal


class Sealer(TrustedApplication):
    def run(self, input: Any) -> Any:
        return input

    @ecall
    def seal_it(self, data: bytes, policy: str = "enclave") -> bytes:
        return seal(data, policy)

    @ecall
    def unseal_it(self, blob: bytes) -> bytes:
        return unseal(blob)


def build_trusted_application() -> TrustedApplication:
    return Sealer()
