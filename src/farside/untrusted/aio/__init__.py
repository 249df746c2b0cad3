"""The untrusted side on asyncio: ``load`` and ``AsyncEnclaveClient`` (``farside.aio``).

The twin of ``farside.untrusted``'s ``load`` and ``EnclaveClient`` for event loops:
the same arguments, the same errors, the same opening steps (``_session.Opening``:
attestation before any input), with task affinity in place of thread affinity.
"""

import typing as _typing

from ..._lazy import exports as _exports

if _typing.TYPE_CHECKING:
    from ._client import (
        AsyncEnclaveClient as AsyncEnclaveClient,
    )
    from ._load import (
        load as load,
    )

_EXPORTS = {
    "AsyncEnclaveClient": "._client",
    "load": "._load",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = _exports(__name__, _EXPORTS)
