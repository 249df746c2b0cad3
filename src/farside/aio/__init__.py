"""farside on asyncio: the twin of ``farside.load`` and ``EnclaveClient``.

    async with farside.aio.load("enclave.py") as enclave:
        result = await enclave.call("encrypt", "Asylo Rocks", timeout=2.0)

    enclave = await farside.aio.load("enclave.py")     # also awaitable
    await enclave.aclose()

``load`` takes ``farside.load``'s arguments and raises its errors; the enclave proves
itself before anything of the client's reaches it, as in the sync API. Each asyncio
task that calls the enclave gets its own enclave worker (task affinity); cancelling
a task cancels its call in the enclave. The wire is driven by the event loop itself
(an ``asyncio.Protocol`` for the stream transport, ``grpc.aio`` for gRPC); what must
block (reading the bundle, starting a proxy, verifying evidence, the file service)
runs in a thread. A client belongs to the loop it was loaded on.
"""

import typing as _typing

from .._lazy import exports as _exports

if _typing.TYPE_CHECKING:
    from ..untrusted.aio import (
        AsyncEnclaveClient as AsyncEnclaveClient,
        load as load,
    )

_EXPORTS = {
    "AsyncEnclaveClient": "..untrusted.aio",
    "load": "..untrusted.aio",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = _exports(__name__, _EXPORTS)
