"""What an event-loop client transport provides, and ``connect`` by name.

An ``AsyncClientTransport`` is the ``ClientTransport`` of ``farside.transport.base``
on an event loop: every method runs on the loop that ``start`` ran on. ``send`` still
never blocks (the loop's transport buffers what the wire cannot take now), the sink is
called on the loop for each batch that arrives, and ``drain`` waits, without blocking
the loop, for a large backlog to go out.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..._proto.v1 import session_pb2 as pb
    from ..._tls import TLSConfig
    from ..base import FrameSink, LostCallback

__all__ = ["AsyncClientTransport", "connect"]

_MODULES = {
    "grpc": "farside.transport.aio.grpc",
    "stream": "farside.transport.aio.stream",
}


class AsyncClientTransport(Protocol):
    """The client's end of a session on an event loop."""

    target: str

    async def start(self, sink: FrameSink, lost: LostCallback) -> None:
        """Connect and authenticate; then every batch that arrives goes to ``sink``.

        A failure to connect, or a refusal, is reported through ``lost`` (not raised),
        as is any later loss of the connection.
        """
        ...

    def send(self, frames: list[pb.Frame]) -> None:
        """Queue frames for the proxy (never blocks)."""
        ...

    @property
    def backlog(self) -> int:
        """Bytes queued for the proxy that the wire has not taken yet."""
        ...

    async def drain(self) -> None:
        """Wait until the backlog is small again (returns at once if it is)."""
        ...

    async def aclose(self, timeout: float = 5.0) -> None:
        """End our side after what is queued, wait up to ``timeout`` for the peer, drop it."""
        ...


def connect(name: str, address: str, *, token: str, tls: TLSConfig | None) -> AsyncClientTransport:
    """The event-loop client end of transport ``name`` to the proxy at ``address``.

    Not yet started (``start`` connects). ``EnclaveLoadError`` if ``tls`` cannot be
    used; ``ValueError`` for a transport with no event-loop end.
    """
    if name not in _MODULES:
        raise ValueError(f"farside.aio reaches proxies over {', '.join(_MODULES)}, not {name!r}")
    transport: AsyncClientTransport = importlib.import_module(_MODULES[name]).connect(
        address, token=token, tls=tls
    )
    return transport
