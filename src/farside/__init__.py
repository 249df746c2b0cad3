"""farside: run the confidential part of a Python application in a remote enclave.

The application (untrusted side) loads an enclave bundle into a proxy process on
a trusted machine, enters it with ``enter_and_run`` or ``call``, and serves the
enclave's exit calls (output, files, its own handlers) on its own machine, all
over one client-initiated session. Enclave code imports ``farside.trusted``.

    with farside.load("examples/quickstart/demo_enclave.py") as enclave:
        print(enclave.call("encrypt", "Asylo Rocks"))

The names below are loaded on first use (PEP 562): ``import farside`` costs almost
nothing, and importing a low layer (``farside.protocol``, ``farside.trusted``) never
loads the layers above it (docs/architecture.md draws them).
"""

import typing as _typing

from ._lazy import exports as _exports

if _typing.TYPE_CHECKING:
    from ._config import (
        EnclaveConfig as EnclaveConfig,
        SandboxConfig as SandboxConfig,
    )
    from ._errors import (
        AttestationError as AttestationError,
        ClientClosedError as ClientClosedError,
        DeadlineExceededError as DeadlineExceededError,
        EnclaveCallError as EnclaveCallError,
        EnclaveError as EnclaveError,
        EnclaveLoadError as EnclaveLoadError,
        EnclaveNameError as EnclaveNameError,
        EnclaveUnavailableError as EnclaveUnavailableError,
        HostCallError as HostCallError,
        ProtocolError as ProtocolError,
        StatusCode as StatusCode,
        UnsealError as UnsealError,
    )
    from ._tls import (
        TLSConfig as TLSConfig,
    )
    from .attestation.evidence import (
        AttestationPolicy as AttestationPolicy,
    )
    from .attestation.identity import (
        EnclaveIdentity as EnclaveIdentity,
    )
    from .provision import (
        LocalProvision as LocalProvision,
        Provisioner as Provisioner,
        ProxyLease as ProxyLease,
        RemoteProvision as RemoteProvision,
    )
    from .untrusted import (
        EnclaveClient as EnclaveClient,
        EnclaveLoadConfig as EnclaveLoadConfig,
        EnclaveManager as EnclaveManager,
        RemoteLoadConfig as RemoteLoadConfig,
        RemoteProxyClientConfig as RemoteProxyClientConfig,
        SimLoadConfig as SimLoadConfig,
        load as load,
    )

__version__ = "0.1.0"

_EXPORTS = {
    # loading and calling
    "load": ".untrusted",
    "EnclaveManager": ".untrusted",
    "EnclaveClient": ".untrusted",
    "EnclaveLoadConfig": ".untrusted",
    "RemoteLoadConfig": ".untrusted",
    "RemoteProxyClientConfig": ".untrusted",
    "SimLoadConfig": ".untrusted",
    "EnclaveConfig": "._config",
    "SandboxConfig": "._config",
    # attestation
    "AttestationPolicy": ".attestation.evidence",
    "EnclaveIdentity": ".attestation.identity",
    # provisioning
    "LocalProvision": ".provision",
    "RemoteProvision": ".provision",
    "TLSConfig": "._tls",
    "Provisioner": ".provision",
    "ProxyLease": ".provision",
    # errors
    "StatusCode": "._errors",
    "EnclaveError": "._errors",
    "EnclaveLoadError": "._errors",
    "AttestationError": "._errors",
    "EnclaveCallError": "._errors",
    "HostCallError": "._errors",
    "EnclaveUnavailableError": "._errors",
    "DeadlineExceededError": "._errors",
    "ProtocolError": "._errors",
    "ClientClosedError": "._errors",
    "EnclaveNameError": "._errors",
    "UnsealError": "._errors",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = _exports(__name__, _EXPORTS)
