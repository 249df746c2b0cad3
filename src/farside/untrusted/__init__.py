"""The untrusted side: what the application on the untrusted machine uses.

``EnclaveManager`` loads enclaves from an ``EnclaveLoadConfig`` and keeps track
of their ``EnclaveClient``s; ``load`` is the short form. Exit calls the enclave
makes are served here, on the client thread whose entry call is waiting.
"""

from ._client import EnclaveClient
from ._config import EnclaveLoadConfig, RemoteLoadConfig, RemoteProxyClientConfig, SimLoadConfig
from ._manager import EnclaveManager, load

__all__ = [
    "EnclaveClient",
    "EnclaveLoadConfig",
    "EnclaveManager",
    "RemoteLoadConfig",
    "RemoteProxyClientConfig",
    "SimLoadConfig",
    "load",
]
