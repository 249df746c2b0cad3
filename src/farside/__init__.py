"""farside: run the confidential part of a Python application in a remote enclave.

The application (untrusted side) loads an enclave bundle into a proxy process on
a trusted machine, enters it with ``enter_and_run`` or ``call``, and serves the
enclave's exit calls (output, files, its own handlers) on its own machine, all
over one client-initiated session. Enclave code imports ``farside.trusted``.

    with farside.load("examples/quickstart/demo_enclave.py") as enclave:
        print(enclave.call("encrypt", "Asylo Rocks"))
"""

from ._config import EnclaveConfig, SandboxConfig
from ._errors import (
    AttestationError,
    ClientClosedError,
    DeadlineExceededError,
    EnclaveCallError,
    EnclaveError,
    EnclaveLoadError,
    EnclaveNameError,
    EnclaveUnavailableError,
    HostCallError,
    ProtocolError,
    StatusCode,
    UnsealError,
)
from ._tls import TLSConfig
from .attestation.evidence import AttestationPolicy
from .attestation.identity import EnclaveIdentity
from .provision import LocalProvision, Provisioner, ProxyLease, RemoteProvision
from .untrusted import (
    EnclaveClient,
    EnclaveLoadConfig,
    EnclaveManager,
    RemoteLoadConfig,
    RemoteProxyClientConfig,
    SimLoadConfig,
    load,
)

__version__ = "0.1.0"

__all__ = [
    # loading and calling
    "load",
    "EnclaveManager",
    "EnclaveClient",
    "EnclaveLoadConfig",
    "RemoteLoadConfig",
    "RemoteProxyClientConfig",
    "SimLoadConfig",
    "EnclaveConfig",
    "SandboxConfig",
    # attestation
    "AttestationPolicy",
    "EnclaveIdentity",
    # provisioning
    "LocalProvision",
    "RemoteProvision",
    "TLSConfig",
    "Provisioner",
    "ProxyLease",
    # errors
    "StatusCode",
    "EnclaveError",
    "EnclaveLoadError",
    "AttestationError",
    "EnclaveCallError",
    "HostCallError",
    "EnclaveUnavailableError",
    "DeadlineExceededError",
    "ProtocolError",
    "ClientClosedError",
    "EnclaveNameError",
    "UnsealError",
]
