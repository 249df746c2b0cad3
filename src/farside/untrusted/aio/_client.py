"""``AsyncEnclaveClient``: the asyncio application's handle on one loaded enclave."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ... import tracing
from ..._errors import (
    ClientClosedError,
    DeadlineExceededError,
    EnclaveError,
    EnclaveUnavailableError,
)
from ...attestation.identity import EnclaveIdentity
from ...protocol import CallKind
from ...transport.aio import AsyncClientTransport
from .._session import Opening
from ._endpoint import AsyncEndpoint

__all__ = ["AsyncEnclaveClient"]

log = logging.getLogger("farside")

FINALIZE_TIMEOUT = 30.0


class AsyncEnclaveClient:
    """A loaded enclave, used from asyncio: ``await`` its entry points, serve its exits.

    Get one from ``farside.aio.load``. Each asyncio task that calls the enclave gets
    its own enclave worker, kept for the task's life and let go when the task ends
    (task affinity, as the sync client has thread affinity); an exit call made during
    a task's call is served in that task. Calls of different tasks run concurrently.
    The client belongs to the event loop it was loaded on. Used as ``async with``, the
    enclave is destroyed when the block ends.
    """

    def __init__(
        self,
        *,
        name: str,
        endpoint: AsyncEndpoint,
        transport: AsyncClientTransport,
        opening: Opening,
        identity: EnclaveIdentity,
        loop: asyncio.AbstractEventLoop,
        on_destroyed: Callable[[AsyncEnclaveClient], None],
    ) -> None:
        self._name = name
        self._endpoint = endpoint
        self._transport = transport
        self._opening = opening
        self._exits = opening.exits
        self._identity = identity
        self._debug = opening.sim.debug
        self._loop = loop
        self._on_destroyed = on_destroyed
        self._tags = itertools.count(2)  # 1 ran initialize
        self._task_tags: dict[asyncio.Task[Any], int] = {}
        self._closed = False
        self._closing: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        state = "destroyed" if self._closed else "loaded"
        return f"<AsyncEnclaveClient {self._name!r} {state} measurement={self.measurement[:16]}…>"

    @property
    def name(self) -> str:
        """The enclave's name (unique among this process's asyncio clients)."""
        return self._name

    @property
    def measurement(self) -> str:
        """The hex SHA-256 measurement of the bundle the proxy loaded."""
        return self._identity.measurement.hex()

    @property
    def identity(self) -> EnclaveIdentity:
        """What the enclave proved about itself: measurement, signer, versions, debug."""
        return self._identity

    @property
    def debug(self) -> bool:
        """Whether this is a debug enclave (its errors carry tracebacks)."""
        return self._debug

    @property
    def closed(self) -> bool:
        """True once the enclave was destroyed through this client."""
        return self._closed

    # ------------------------------------------------------------- tasks

    def _check_loop(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not self._loop:
            raise RuntimeError(
                f"the AsyncEnclaveClient of enclave {self._name!r} belongs to the event loop "
                "it was loaded on; load another client in this loop (one client per loop), "
                "or use farside.load from threads"
            )

    def _task_tag(self) -> int:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("enclave calls are made from an asyncio task")
        tag = self._task_tags.get(task)
        if tag is None:
            tag = self._task_tags[task] = next(self._tags)
            task.add_done_callback(self._task_ended)
        return tag

    def _task_ended(self, task: asyncio.Task[Any]) -> None:
        tag = self._task_tags.pop(task, None)
        if tag is not None and not self._closed:
            self._dispose(tag)

    def _dispose(self, tag: int) -> None:
        self._endpoint.dispose(tag)
        self._exits.output.forget(tag)

    def _give_up_tag(self, tag: int) -> None:
        """After a timeout or a cancellation: this task's next call gets a fresh tag (hence
        a fresh worker), and the old tag's worker goes once its abandoned call unwinds."""
        task = asyncio.current_task()
        if task is not None and self._task_tags.get(task) == tag:
            del self._task_tags[task]
            self._dispose(tag)

    # ------------------------------------------------------------- calls

    async def _call(
        self,
        kind: CallKind,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        timeout: float | None,
    ) -> Any:
        self._check_loop()
        if self._closed:
            raise ClientClosedError(
                f"enclave {self._name!r} was destroyed; load it again to make new calls"
            )
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive (or None to wait as long as it takes)")
        tag = self._task_tag()
        endpoint = self._endpoint
        tracer = tracing.TRACER
        try:
            if tracer is None:
                return await endpoint.call(tag, kind, name, args, kwargs, timeout=timeout)
            method = name or kind.name.lower()
            attributes = {"farside.enclave": self._name}
            with tracer.client_span(tracing.ENTRY_SERVICE, method, attributes) as trace:
                return await endpoint.call(
                    tag, kind, name, args, kwargs, timeout=timeout, trace=trace
                )
        except (DeadlineExceededError, asyncio.CancelledError):
            # The abandoned worker finishes in the background; this task gets a fresh one.
            if endpoint.core.is_abandoned(tag):
                self._give_up_tag(tag)
            raise
        finally:
            self._exits.output.flush(tag)  # the call's output, ending mid-line or not

    async def enter_and_run(self, input: Any = None, *, timeout: float | None = None) -> Any:
        """Run the enclave's ``TrustedApplication.run(input)`` and return its output.

        Raises ``EnclaveCallError`` if it raised, ``DeadlineExceededError`` after
        ``timeout`` seconds, ``EnclaveUnavailableError`` if the enclave is gone.
        Cancelling the task cancels the call in the enclave.
        """
        return await self._call(CallKind.RUN, "", (input,), None, timeout)

    async def call(
        self, name: str, /, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Call the enclave's ``@ecall`` entry point ``name`` and return its result."""
        if not isinstance(name, str) or not name:
            raise ValueError("call() needs the entry point's name as its first argument")
        return await self._call(CallKind.ECALL, name, args, kwargs, timeout)

    def register_exit_handler(self, name: str, fn: Callable[..., Any]) -> None:
        """Serve the enclave's ``host.call(name, ...)`` (and ``host.notify``) with ``fn``.

        ``fn`` is a plain function (it runs on the event loop: keep it short) or an
        ``async def`` (awaited in the task whose call is waiting; it may call into the
        enclave again, a nested call on the same worker). Whatever it raises is raised
        in the enclave as ``HostCallError``.
        """
        self._exits.register(name, fn)

    # ------------------------------------------------------------- ending

    async def aclose(self, final_input: Any = None, *, skip_finalize: bool = False) -> None:
        """Run ``finalize(final_input)`` (unless skipped) and release everything.

        Closing twice is a no-op (a second close waits for the first). Raises
        ``EnclaveCallError`` if ``finalize`` raised (the enclave is released all the same).
        """
        self._check_loop()
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closing = self._loop.create_future()
        self._closed = True  # new calls are refused from now on
        finalize_error: EnclaveError | None = None
        try:
            if not skip_finalize and self._endpoint.failure is None:
                try:
                    await self._endpoint.call(
                        self._task_tag(),
                        CallKind.FINALIZE,
                        "",
                        (final_input,),
                        timeout=FINALIZE_TIMEOUT,
                    )
                except EnclaveUnavailableError:
                    pass  # already gone: nothing to finalize, and not an error
                except EnclaveError as exc:
                    finalize_error = exc
        finally:
            with contextlib.suppress(EnclaveError):
                self._endpoint.run(lambda core: core.close())
            try:
                await self._transport.aclose()
            finally:
                self._exits.output.flush()
                self._endpoint.fail(ClientClosedError(f"enclave {self._name!r} was destroyed"))
                await asyncio.to_thread(self._opening.release)
                self._on_destroyed(self)
                self._closing.set_result(None)
        if finalize_error is not None:
            raise finalize_error

    async def __aenter__(self) -> AsyncEnclaveClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.aclose()
        except Exception:
            if exc_type is None:
                raise
            log.exception("destroying enclave %r after an error in its block failed", self._name)
