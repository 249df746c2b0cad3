"""The proxy process (Asylo's RemoteEnclaveProxyServer): one enclave, one session.

``server`` runs it (``farside proxy``); ``sandbox`` confines it before enclave code
runs (``farside doctor`` reports what this machine offers). Names load on first use.
"""

import typing as _typing

from .._lazy import exports as _exports

if _typing.TYPE_CHECKING:
    from .server import (
        RemoteEnclaveProxyServer as RemoteEnclaveProxyServer,
        run_proxy as run_proxy,
    )

_EXPORTS = {"RemoteEnclaveProxyServer": ".server", "run_proxy": ".server"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = _exports(__name__, _EXPORTS)
