"""Real TEE evidence: attesters on the hardware, verifiers offline against pinned vendor roots.

Platforms: AWS Nitro Enclaves (NSM attestation documents), AMD SEV-SNP and Intel
TDX confidential VMs (configfs-tsm), Intel SGX (DCAP quotes). One verifier entry
point, ``verify_hardware_evidence``, returns a ``HardwareReport``;
``check_expectations`` holds it to a policy (``HardwareExpectations``) and to this
session's report data. ``HardwareAttester`` is the proxy's side in a session (over
``TsmAttester`` or ``NsmAttester``); ``farside.attestation.evidence.verify_evidence``
the client's. docs/hardware.md has the operator's side.

Names load on first use: importing this package (or ``farside.attestation``)
loads no CBOR, no certificates and no roots.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._report import (
        FORMATS,
        HardwareReport,
        NitroClaims,
        SevSnpClaims,
        SgxClaims,
        TdxClaims,
    )
    from .attester import HardwareAttester
    from .expectations import (
        HardwareExpectations,
        NitroExpectations,
        SevSnpExpectations,
        SgxExpectations,
        TdxExpectations,
        check_expectations,
    )
    from .nsm import NsmAttester
    from .tsm import TsmAttester
    from .verify import verify_hardware_evidence

__all__ = [
    "verify_hardware_evidence",
    "FORMATS",
    "HardwareReport",
    "NitroClaims",
    "SevSnpClaims",
    "TdxClaims",
    "SgxClaims",
    "check_expectations",
    "HardwareExpectations",
    "NitroExpectations",
    "SevSnpExpectations",
    "TdxExpectations",
    "SgxExpectations",
    "HardwareAttester",
    "NsmAttester",
    "TsmAttester",
]

_HOMES = {
    "verify_hardware_evidence": ".verify",
    "FORMATS": "._report",
    "HardwareReport": "._report",
    "NitroClaims": "._report",
    "SevSnpClaims": "._report",
    "TdxClaims": "._report",
    "SgxClaims": "._report",
    "check_expectations": ".expectations",
    "HardwareExpectations": ".expectations",
    "NitroExpectations": ".expectations",
    "SevSnpExpectations": ".expectations",
    "TdxExpectations": ".expectations",
    "SgxExpectations": ".expectations",
    "HardwareAttester": ".attester",
    "NsmAttester": ".nsm",
    "TsmAttester": ".tsm",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
