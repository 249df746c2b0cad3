"""``farside.aio.load``: open a session on the running event loop.

The steps and their order are the sync client's (``_session.Opening``): read the
bundle, provision a proxy, connect, send the bundle and nonces, verify the evidence
(nothing else is accepted before), initialize. What blocks (files, starting a proxy,
checking signatures) runs in a thread; the session's frames move on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Generator, Mapping
from types import TracebackType
from typing import Any, TypeVar

from ..._config import EnclaveConfig, SandboxConfig
from ..._errors import EnclaveCallError, EnclaveError, EnclaveLoadError, EnclaveNameError
from ...attestation.evidence import AttestationPolicy
from ...metrics import client as client_metrics
from ...metrics.frames import CountingSender, counting_sink
from ...protocol import CallKind
from ...provision.base import Provisioner
from ...transport import aio as aio_transport
from .._config import EnclaveLoadConfig
from .._fileservice import DEFAULT_MAX_OPEN_FILES
from .._manager import load_config_for
from .._session import Opening, client_error
from ._client import AsyncEnclaveClient
from ._endpoint import AsyncEndpoint

__all__ = ["load"]

T = TypeVar("T")

_names: set[str] = set()  # the names of this process's asyncio clients, loaded or loading
_names_lock = threading.Lock()  # clients of different loops (threads) share it


def _forget(client: AsyncEnclaveClient) -> None:
    with _names_lock:
        _names.discard(client.name)


async def _off_loop(fn: Callable[[], T], undo: Callable[[T], None]) -> T:
    """``fn()`` in a thread; if the caller is cancelled meanwhile, ``undo`` its result
    once it comes (in a thread of its own: the loop may be ending), so that a load
    cancelled while a proxy starts leaves no proxy behind."""
    # A plain future, not a task: asyncio.run's ending cancels tasks, and the undo must
    # still see the result.
    future = asyncio.get_running_loop().run_in_executor(None, fn)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:

        def undo_later(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                threading.Thread(target=undo, args=(done.result(),), daemon=True).start()

        future.add_done_callback(undo_later)
        raise


async def _open(load_config: EnclaveLoadConfig) -> AsyncEnclaveClient:
    loop = asyncio.get_running_loop()
    opening = await _off_loop(lambda: Opening(load_config), lambda o: o.exits.files.close_all())
    lease = await _off_loop(opening.provision, lambda _: opening.release())
    try:
        transport = await asyncio.to_thread(  # TLS settings are files
            aio_transport.connect, lease.transport, lease.address, token=lease.token, tls=lease.tls
        )
    except BaseException:
        await asyncio.to_thread(opening.release)
        raise
    counters = client_metrics.COUNTERS  # opted in (farside.metrics.enable): count the bytes
    sender: Any = transport if counters is None else CountingSender(transport, counters.add_sent)
    endpoint = AsyncEndpoint(
        opening.new_core(), sender, opening.exits, error_from_exception=client_error, loop=loop
    )
    sink = (
        endpoint.feed if counters is None else counting_sink(endpoint.feed, counters.add_received)
    )
    load_timeout = opening.proxy_config.load_timeout
    try:
        await transport.start(sink, endpoint.fail)
        endpoint.run(opening.send_open)
        loaded = await endpoint.wait_loaded(load_timeout)
        identity = await asyncio.to_thread(opening.verify, loaded)
        endpoint.run(lambda core: core.accept_evidence())  # only now may the proxy reach us
        try:
            await endpoint.call(
                1, CallKind.INITIALIZE, "", opening.initialize_args(), timeout=load_timeout
            )
        except EnclaveCallError as exc:  # importing the bundle, or its initialize()
            raise opening.not_started(exc) from exc
    except BaseException as exc:
        with contextlib.suppress(EnclaveError):
            endpoint.run(lambda core: core.close())
        await asyncio.shield(_tear_down(transport, endpoint, opening))
        error = opening.failed(exc)
        if error is exc:
            raise
        raise error from exc
    endpoint.dispose(1)  # initialize's worker: the tasks have their own
    return AsyncEnclaveClient(
        name=load_config.name,
        endpoint=endpoint,
        transport=transport,
        opening=opening,
        identity=identity,
        loop=loop,
        on_destroyed=_forget,
    )


async def _tear_down(
    transport: aio_transport.AsyncClientTransport, endpoint: AsyncEndpoint, opening: Opening
) -> None:
    try:
        await transport.aclose(timeout=1.0)
    finally:
        endpoint.fail(EnclaveLoadError("the enclave failed to load"))
        await asyncio.to_thread(opening.release)


async def _load(config: Callable[[], EnclaveLoadConfig]) -> AsyncEnclaveClient:
    load_config = await asyncio.to_thread(config)
    name = load_config.name
    with _names_lock:
        if name in _names:
            raise EnclaveNameError(
                f"an enclave named {name!r} is already loaded; destroy "
                "it first or choose another name"
            )
        _names.add(name)
    try:
        return await _open(load_config)
    except BaseException:
        with _names_lock:
            _names.discard(name)
        raise


class Loading:
    """What ``farside.aio.load`` returns: ``await`` it for the client, or use it as
    ``async with`` (the enclave is destroyed when the block ends)."""

    def __init__(self, config: Callable[[], EnclaveLoadConfig]) -> None:
        self._config = config
        self._client: AsyncEnclaveClient | None = None

    def __await__(self) -> Generator[Any, None, AsyncEnclaveClient]:
        return _load(self._config).__await__()

    async def __aenter__(self) -> AsyncEnclaveClient:
        self._client = await _load(self._config)
        return self._client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.__aexit__(exc_type, exc, tb)


def load(
    enclave_path: str | os.PathLike[str],
    *,
    name: str | None = None,
    provision: Provisioner | None = None,
    config: EnclaveConfig | None = None,
    debug: bool = True,
    exit_handlers: Mapping[str, Callable[..., Any]] | None = None,
    files_root: str | os.PathLike[str] | None = ".",
    load_timeout: float = 30.0,
    policy: AttestationPolicy | None = None,
    sandbox: SandboxConfig | None = None,
    max_open_files: int = DEFAULT_MAX_OPEN_FILES,
    files_root_readonly: bool = False,
    stdin: bool = False,
) -> Loading:
    """Load the enclave bundle at ``enclave_path`` on the running loop: ``farside.load``'s
    arguments and errors, awaitable (``client = await farside.aio.load(...)``) or an
    ``async with`` block.

    ``exit_handlers`` may be plain functions (run on the loop) or ``async def``. The
    client is not registered in ``EnclaveManager`` (the sync API's registry, which
    destroys its enclaves at exit from no loop); names are unique among this
    process's asyncio clients. Nothing runs until awaited.
    """

    def config_() -> EnclaveLoadConfig:
        return load_config_for(
            enclave_path,
            name=name,
            provision=provision,
            config=config,
            debug=debug,
            exit_handlers=exit_handlers,
            files_root=files_root,
            load_timeout=load_timeout,
            policy=policy,
            sandbox=sandbox,
            max_open_files=max_open_files,
            files_root_readonly=files_root_readonly,
            stdin=stdin,
        )

    return Loading(config_)
