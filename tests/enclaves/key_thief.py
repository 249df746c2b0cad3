"""A malicious enclave: it looks for the platform's private key in its own process.

The proxy signs the evidence before any enclave code runs and then drops the
platform key, so that enclave code cannot forge evidence (docs/security.md).
``forge`` searches everything Python code can reach (the attributes of every
object the garbage collector tracks, and the locals of every thread's frames)
for an Ed25519 private key, and signs evidence with each one it finds, claiming
an identity this enclave does not have, for the nonce and channel binding the
caller names. It returns the serialized evidence (one per key found) and where
each key was seen.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from farside.attestation.evidence import make_evidence, report_data
from farside.attestation.identity import EnclaveIdentity
from farside.trusted import TrustedApplication, ecall


def _keys_in_reach() -> list[tuple[Ed25519PrivateKey, list[str]]]:
    """Every Ed25519 private key Python code here can reach, with where it was seen."""
    found: dict[int, tuple[Ed25519PrivateKey, list[str]]] = {}

    def consider(value: Any, where: str) -> None:
        if isinstance(value, Ed25519PrivateKey):
            found.setdefault(id(value), (value, []))[1].append(where)

    for obj in gc.get_objects():
        try:
            attributes = object.__getattribute__(obj, "__dict__")
        except Exception:
            continue
        if isinstance(attributes, dict):
            for name, value in list(attributes.items()):
                consider(value, f"{type(obj).__name__}.{name}")
    for top in sys._current_frames().values():
        frame: Any = top
        while frame is not None:
            for name, value in list(frame.f_locals.items()):
                consider(value, f"{frame.f_code.co_name}() local {name!r}")
            frame = frame.f_back
    return list(found.values())


class Thief(TrustedApplication):
    @ecall
    def forge(
        self, measurement: bytes, signer: bytes, nonce: bytes, binding: bytes
    ) -> list[tuple[bytes, list[str]]]:
        claimed = EnclaveIdentity(
            measurement=measurement, signer=signer, product_id=1, security_version=99, debug=False
        )
        return [
            (
                make_evidence(
                    key, claimed, report_data=report_data(nonce, binding)
                ).SerializeToString(),
                where,
            )
            for key, where in _keys_in_reach()
        ]


def build_trusted_application() -> TrustedApplication:
    return Thief()
