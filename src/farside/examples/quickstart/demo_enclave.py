"""The quickstart enclave: AES-256-GCM under a key that never leaves the enclave.

Unlike Asylo's demo, the key is not hard-coded: ``initialize`` generates it inside
the enclave. ``run`` and ``encrypt`` print the ciphertext from inside the enclave
(so it reaches the client through the output path) and return it; ``decrypt``
reverses it, which proves the round trip.
"""

from __future__ import annotations

import os
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from farside.trusted import EnclaveConfig, TrustedApplication, ecall

NONCE_SIZE = 12


class DemoEnclave(TrustedApplication):
    """Encrypts and decrypts messages for its client."""

    def initialize(self, config: EnclaveConfig) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))

    def run(self, input: Any) -> str:
        if not isinstance(input, dict) or not isinstance(input.get("message"), str):
            raise ValueError('enter_and_run expects {"message": str}')
        return self.encrypt(input["message"])

    @ecall
    def encrypt(self, message: str) -> str:
        """Return hex(nonce + ciphertext + tag) of ``message``."""
        if not isinstance(message, str):
            raise TypeError("message must be a str")
        nonce = os.urandom(NONCE_SIZE)
        sealed = (nonce + self._aead.encrypt(nonce, message.encode(), None)).hex()
        print("Encrypted message:")
        print(sealed)
        return sealed

    @ecall
    def decrypt(self, sealed_hex: str) -> str:
        """Reverse ``encrypt``; raises if the ciphertext was not made by this enclave."""
        sealed = bytes.fromhex(sealed_hex)
        return self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], None).decode()


def build_trusted_application() -> TrustedApplication:
    """Asylo's BuildTrustedApplication."""
    return DemoEnclave()
