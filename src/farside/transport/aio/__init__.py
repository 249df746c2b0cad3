"""The client's transports on an asyncio event loop (``farside.aio`` uses them).

The same wires, the same frames and the same handshakes as ``farside.transport``'s
threaded client ends, driven by the event loop instead of reader and writer threads:
``stream`` is an ``asyncio.Protocol`` on the socket (with asyncio's TLS for TCP), and
``grpc`` is a ``grpc.aio`` channel. ``connect(name, ...)`` picks one by the lease's
transport name and imports only that module, so the stream never loads gRPC. Only the
client has an event-loop end: proxies keep their threads.
"""

import typing as _typing

from ..._lazy import exports as _exports

if _typing.TYPE_CHECKING:
    from .base import (
        AsyncClientTransport as AsyncClientTransport,
        connect as connect,
    )

_EXPORTS = {
    "AsyncClientTransport": ".base",
    "connect": ".base",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = _exports(__name__, _EXPORTS)
