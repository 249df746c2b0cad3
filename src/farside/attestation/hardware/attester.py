"""The proxy's ``Attester`` on real hardware: the TEE's own evidence, bound to the body.

``HardwareAttester`` wraps a ``TsmAttester`` (configfs-tsm: Intel TDX and AMD
SEV-SNP confidential VMs) or an ``NsmAttester`` (AWS Nitro Enclaves) behind the
``farside.attestation.attester.Attester`` protocol. For the identity the loader
registered it builds the same ``EvidenceBody`` as sim mode (measurement, signer,
product id, security version, debug, sandbox layers, the session's report data) and
asks the TEE for evidence whose report data is
``evidence.hardware_report_data(report data, body)``: SHA-256 of the client's nonce,
then SHA-256 of the channel binding and of the body. The ``Evidence`` it returns is
``format`` "tdx", "sev-snp" or "nitro", ``body`` that body, ``signature`` the raw
quote, report or document, and ``collateral`` the host's SEV-SNP certificate table
when it gave one.

The TEE's report interface plays the platform agent's part, so enclave code must
not reach it: the proxy's sandbox (Landlock) refuses configfs and ``/dev/nsm`` to
the threads that run enclave code. The attester therefore does its device work on
a thread of its own, started when it is made (before the sandbox, so outside
Landlock's domain, which binds only the confining thread and its descendants) and
ended by ``close``, which the runtime calls before any enclave code runs.

Sealing has no platform key to derive from here: ``sealing_keys`` raises
``NotImplementedError`` (hardware sealing needs the TEE's own key derivation,
which farside does not implement), and ``farside.trusted.seal`` says so.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from ..._errors import AttestationError
from ..._proto.v1 import attestation_pb2 as pb
from ..evidence import evidence_body, hardware_report_data
from ..identity import EnclaveIdentity, SealingKeys
from .nsm import NsmAttester
from .tsm import TsmAttester

__all__ = ["ATTEST_TIMEOUT", "HARDWARE_SEALING_UNAVAILABLE", "HardwareAttester"]

ATTEST_TIMEOUT = 60.0
"""The longest the attester waits for the TEE's evidence (a TDX quote goes to the host's QGS)."""

HARDWARE_SEALING_UNAVAILABLE = (
    "sealing is not available under a hardware attester ({format}): there is no farside "
    "platform key on a TEE, and sealing there needs the TEE's own key derivation "
    "(TDX and SEV-SNP derived keys, AWS KMS with a Nitro attestation document), which "
    "farside does not implement; nothing was sealed"
)
"""What ``farside.trusted.seal``/``unseal`` raise (``NotImplementedError``) on hardware."""

_CLOSE_WAIT = 5.0
_T = TypeVar("_T")
_Job = tuple[Callable[[], object], "concurrent.futures.Future[object]"]


class _DeviceThread:
    """One thread that runs the attester's device calls; see the module docstring."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name="farside-attester")
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            work, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work())
            except BaseException as exc:  # handed to the caller, who raises it
                future.set_exception(exc)

    def run(self, work: Callable[[], _T], timeout: float) -> _T:
        if self._closed:
            raise RuntimeError("the hardware attester is closed")
        future: concurrent.futures.Future[object] = concurrent.futures.Future()
        self._jobs.put((work, future))
        try:
            return future.result(timeout)  # type: ignore[return-value]
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AttestationError(
                f"the TEE gave no evidence within {timeout:g} s", check="attester"
            ) from None

    def close(self) -> None:
        # Takes no more work at once; a device call that hangs is left to its daemon thread
        # (it is no way in for enclave code), so a stuck TEE cannot hold the proxy up here.
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
            self._thread.join(_CLOSE_WAIT)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class HardwareAttester:
    """An ``Attester`` whose evidence is the TEE's own (see the module docstring).

    ``source`` is a ``TsmAttester`` or an ``NsmAttester``. Making one asks the TEE
    which platform it is (configfs-tsm's provider), so a machine without it fails
    here, with ``AttestationError(check="attester")``, rather than at a client's load.
    A TEE that does not answer within ``timeout`` seconds is the same error.
    """

    def __init__(
        self, source: TsmAttester | NsmAttester, *, timeout: float = ATTEST_TIMEOUT
    ) -> None:
        self._source: TsmAttester | NsmAttester | None = source
        self._timeout = timeout
        self._identity: EnclaveIdentity | None = None
        self._sandbox: tuple[str, ...] = ()
        self._thread = _DeviceThread()
        try:
            self.format: str = self._thread.run(lambda: source.format, timeout)
        except BaseException:
            self._thread.close()
            raise

    def register(self, identity: EnclaveIdentity, sandbox: Sequence[str]) -> None:
        """Bind to ``identity`` (once; ``RuntimeError`` on a second call)."""
        if self._identity is not None:
            raise RuntimeError("an attester serves the one identity registered first")
        self._identity = identity
        self._sandbox = tuple(sandbox)

    def evidence(self, report_data: bytes) -> pb.Evidence:
        """The TEE's evidence for the registered identity in the session ``report_data`` names."""
        source, identity = self._source, self._identity
        if identity is None:
            raise RuntimeError("no enclave identity is registered with this attester")
        if source is None:
            raise RuntimeError("the hardware attester is closed")
        body = evidence_body(identity, report_data=report_data, sandbox=self._sandbox)
        tee_report_data = hardware_report_data(report_data, body)
        collateral: list[bytes] = []
        if isinstance(source, TsmAttester):
            report = self._thread.run(lambda: source.report(tee_report_data), self._timeout)
            raw = report.outblob
            if report.auxblob and source.format == "sev-snp":
                collateral.append(report.auxblob)
            self.format = source.format
        else:
            raw = self._thread.run(lambda: source.evidence(tee_report_data), self._timeout)
        return pb.Evidence(format=self.format, body=body, signature=raw, collateral=collateral)

    def sealing_keys(self) -> SealingKeys | None:
        """Never: ``NotImplementedError`` (see ``HARDWARE_SEALING_UNAVAILABLE``)."""
        raise NotImplementedError(HARDWARE_SEALING_UNAVAILABLE.format(format=self.format))

    def close(self) -> None:
        """End the device thread and drop the source: enclave code gets no way to the TEE."""
        self._source = None
        self._thread.close()
