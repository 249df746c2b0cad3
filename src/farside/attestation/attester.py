"""The proxy's side of attestation: an ``Attester`` makes evidence for the enclave loaded.

The proxy's loader measures the bundle it received and ``register``s that identity
(and the sandbox layers in force) with its attester once, before any enclave code
runs. From then on the attester answers only two questions, both about *that*
identity: ``evidence(report_data)`` (what the client verifies, with report data
binding its nonce and the session's channel) and ``sealing_keys()`` (what
``farside.trusted.seal`` uses). Enclave code cannot register another identity.

``farside.attestation.agent.AgentAttester`` is the one proxies use: the platform key
stays in the platform agent's process. ``KeyAttester`` holds a key itself (in-process
tests); hardware attesters (configfs-tsm for TDX and SEV-SNP, the Nitro NSM) provide
the same interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .._proto.v1 import attestation_pb2 as pb
from .evidence import make_evidence
from .identity import EnclaveIdentity, SealingKeys, sealing_root

__all__ = ["Attester", "KeyAttester"]


class Attester(Protocol):
    """Evidence and sealing keys for one registered enclave identity."""

    def register(self, identity: EnclaveIdentity, sandbox: Sequence[str]) -> None:
        """Bind this attester to ``identity`` (once; ``RuntimeError`` on a second call)."""
        ...

    def evidence(self, report_data: bytes) -> pb.Evidence:
        """Evidence for the registered identity carrying the 64 bytes of ``report_data``."""
        ...

    def sealing_keys(self) -> SealingKeys | None:
        """The registered identity's sealing keys; None on a platform with no identity."""
        ...

    def close(self) -> None:
        """Let go of the platform: after the evidence and the sealing keys are made, enclave
        code must hold no way to ask for more (the proxy calls this before running it)."""
        ...


class KeyAttester:
    """Sim-mode evidence signed with a platform key this process holds, once.

    The key lives in the process that will run enclave code, so it is used before any
    of that code runs and then dropped: ``register`` derives the sealing keys, the first
    ``evidence`` signs, and the key is gone (a second ``evidence`` is a
    ``RuntimeError``). With ``platform_key=None`` (in-process tests) it signs with a
    throwaway key that no client trusts, and has no sealing keys.
    """

    def __init__(self, platform_key: Ed25519PrivateKey | None) -> None:
        self._key: Ed25519PrivateKey | None = platform_key
        self._has_platform = platform_key is not None
        self._identity: EnclaveIdentity | None = None
        self._sandbox: tuple[str, ...] = ()
        self._sealing_keys: SealingKeys | None = None

    def register(self, identity: EnclaveIdentity, sandbox: Sequence[str]) -> None:
        if self._identity is not None:
            raise RuntimeError("an attester serves the one identity registered first")
        self._identity = identity
        self._sandbox = tuple(sandbox)
        if self._key is not None:
            self._sealing_keys = SealingKeys.derive(sealing_root(self._key), identity)

    def evidence(self, report_data: bytes) -> pb.Evidence:
        if self._identity is None:
            raise RuntimeError("no enclave identity is registered with this attester")
        key, self._key = self._key, None
        if key is None and self._has_platform:
            raise RuntimeError("this attester made its one evidence; its key is gone")
        signer = key if key is not None else Ed25519PrivateKey.generate()
        return make_evidence(signer, self._identity, report_data=report_data, sandbox=self._sandbox)

    def sealing_keys(self) -> SealingKeys | None:
        return self._sealing_keys

    def close(self) -> None:
        self._key = None
