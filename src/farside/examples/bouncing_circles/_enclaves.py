"""Loading a circle enclave from asyncio: ``farside.aio`` where it exists.

Until ``farside.aio`` is part of the installed farside, the synchronous client is
driven from worker threads instead (``asyncio.to_thread``), with the same four
operations the app uses: ``load``, ``call``, ``aclose`` and the identity.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any, Protocol

import farside

__all__ = ["AsyncEnclave", "load"]


class AsyncEnclave(Protocol):
    """What the app needs of an ``AsyncEnclaveClient``."""

    @property
    def name(self) -> str: ...

    @property
    def measurement(self) -> str: ...

    @property
    def identity(self) -> farside.EnclaveIdentity: ...

    @property
    def closed(self) -> bool: ...

    async def call(self, name: str, /, *args: Any, timeout: float | None = None) -> Any: ...

    async def aclose(self) -> None: ...


def _aio() -> Any:
    try:
        return importlib.import_module("farside.aio")
    except ImportError:
        return None


class _ThreadedEnclave:
    """A synchronous ``EnclaveClient`` driven from worker threads."""

    def __init__(self, client: farside.EnclaveClient) -> None:
        self._client = client

    @property
    def name(self) -> str:
        return self._client.name

    @property
    def measurement(self) -> str:
        return self._client.measurement

    @property
    def identity(self) -> farside.EnclaveIdentity:
        return self._client.identity

    @property
    def closed(self) -> bool:
        return self._client.closed

    async def call(self, name: str, /, *args: Any, timeout: float | None = None) -> Any:
        return await asyncio.to_thread(self._client.call, name, *args, timeout=timeout)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._client.__exit__, None, None, None)


async def load(source: str, **kwargs: Any) -> AsyncEnclave:
    """``await farside.aio.load(source, **kwargs)``, or its threaded stand-in."""
    aio = _aio()
    if aio is not None:
        enclave: AsyncEnclave = await aio.load(source, **kwargs)
        return enclave
    return _ThreadedEnclave(await asyncio.to_thread(farside.load, source, **kwargs))
