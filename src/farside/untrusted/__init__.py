"""The untrusted side: what the application on the untrusted machine uses.

``EnclaveManager`` loads enclaves from an ``EnclaveLoadConfig`` and keeps track
of their ``EnclaveClient``s; ``load`` is the short form. Exit calls the enclave
makes are served here, on the client thread whose entry call is waiting.
"""

import typing as _typing

from .._lazy import exports as _exports

if _typing.TYPE_CHECKING:
    from ._client import (
        EnclaveClient as EnclaveClient,
    )
    from ._config import (
        EnclaveLoadConfig as EnclaveLoadConfig,
        RemoteLoadConfig as RemoteLoadConfig,
        RemoteProxyClientConfig as RemoteProxyClientConfig,
        SimLoadConfig as SimLoadConfig,
    )
    from ._manager import (
        EnclaveManager as EnclaveManager,
        load as load,
    )

_EXPORTS = {
    "EnclaveClient": "._client",
    "EnclaveLoadConfig": "._config",
    "EnclaveManager": "._manager",
    "RemoteLoadConfig": "._config",
    "RemoteProxyClientConfig": "._config",
    "SimLoadConfig": "._config",
    "load": "._manager",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = _exports(__name__, _EXPORTS)
