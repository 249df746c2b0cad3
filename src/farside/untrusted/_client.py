"""``EnclaveClient``: the application's handle on one loaded enclave."""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .. import tracing
from .._errors import (
    ClientClosedError,
    DeadlineExceededError,
    EnclaveError,
    EnclaveUnavailableError,
)
from ..attestation.identity import EnclaveIdentity
from ..protocol import CallKind
from ..provision.base import Provisioner, ProxyLease
from ..transport.base import ClientTransport
from ..transport.endpoint import Endpoint
from ._exits import ExitHandlers

__all__ = ["EnclaveClient"]

log = logging.getLogger("farside")

FINALIZE_TIMEOUT = 30.0


class _ThreadEnd:
    """Kept in a client thread's local storage: it is freed when the thread ends."""

    __slots__ = ("__weakref__",)


class EnclaveClient:
    """A loaded enclave: enter it, call its entry points, serve its exit calls.

    Get one from ``farside.load`` or ``EnclaveManager.load_enclave``. Calls from
    different threads run concurrently, each client thread on its own enclave
    worker; exit calls run on the client thread whose call is waiting. Used as
    a context manager, the enclave is destroyed when the block ends.
    """

    def __init__(
        self,
        *,
        name: str,
        endpoint: Endpoint,
        transport: ClientTransport,
        lease: ProxyLease,
        provisioner: Provisioner,
        exits: ExitHandlers,
        identity: EnclaveIdentity,
        debug: bool,
        on_destroyed: Callable[[EnclaveClient], None],
    ) -> None:
        self._name = name
        self._endpoint = endpoint
        self._transport = transport
        self._lease = lease
        self._provisioner = provisioner
        self._exits = exits
        self._identity = identity
        self._debug = debug
        self._on_destroyed = on_destroyed
        self._threads = threading.local()
        self._tags = itertools.count(1)
        self._closed = False
        self._close_lock = threading.Lock()
        # Tags of client threads that ended, for the disposer to tell the proxy about
        # (a SimpleQueue: its put is safe from the finalizers that feed it).
        self._ended: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._disposer = threading.Thread(
            target=self._dispose_ended_threads, daemon=True, name=f"farside-dispose-{name}"
        )
        self._disposer.start()

    def __repr__(self) -> str:
        state = "destroyed" if self._closed else "loaded"
        return f"<EnclaveClient {self._name!r} {state} measurement={self.measurement[:16]}…>"

    @property
    def name(self) -> str:
        """The name the enclave is registered under in the ``EnclaveManager``."""
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

    # ------------------------------------------------------------- calls

    def _thread_tag(self) -> int:
        tag: int | None = getattr(self._threads, "tag", None)
        if tag is None:
            tag = self._threads.tag = next(self._tags)
            # The thread's local storage goes when the thread does, and the sentinel with
            # it: then the proxy's worker for this tag may go too (Asylo's DisposeOfThread).
            sentinel = _ThreadEnd()
            self._threads.sentinel = sentinel
            farewell = weakref.finalize(sentinel, self._ended.put, tag)
            # Not at interpreter exit: the thread lives on, and may be the one destroying
            # the enclave (atexit), waiting for finalize in this tag's mailbox.
            farewell.atexit = False
            self._threads.farewell = farewell
        return tag

    def _give_up_tag(self, tag: int) -> None:
        """After a timeout: this thread's next call gets a fresh tag (hence a fresh worker),
        and the old tag's worker goes once its abandoned call unwinds."""
        if getattr(self._threads, "tag", None) == tag:
            self._threads.tag = None
            self._threads.farewell.detach()
            self._ended.put(tag)

    def _dispose_ended_threads(self) -> None:
        """Tell the proxy about each client thread that ended (see ``_thread_tag``)."""
        while (tag := self._ended.get()) is not None:
            self._endpoint.dispose(tag)
            self._exits.output.forget(tag)

    def _call(
        self,
        kind: CallKind,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        timeout: float | None,
    ) -> Any:
        if self._closed:
            raise ClientClosedError(
                f"enclave {self._name!r} was destroyed; load it again to make new calls"
            )
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive (or None to wait as long as it takes)")
        tag = self._thread_tag()
        tracer = tracing.TRACER
        try:
            if tracer is None:
                return self._endpoint.call(tag, kind, name, args, kwargs, timeout=timeout)
            method = name or kind.name.lower()
            attributes = {"farside.enclave": self._name}
            with tracer.client_span(tracing.ENTRY_SERVICE, method, attributes) as trace:
                return self._endpoint.call(
                    tag, kind, name, args, kwargs, timeout=timeout, trace=trace
                )
        except (DeadlineExceededError, KeyboardInterrupt):
            # The abandoned worker finishes in the background; this thread gets a fresh one.
            if self._endpoint.core.is_abandoned(tag):
                self._give_up_tag(tag)
            raise
        finally:
            self._exits.output.flush(tag)  # the call's output, ending mid-line or not

    def enter_and_run(self, input: Any = None, *, timeout: float | None = None) -> Any:
        """Run the enclave's ``TrustedApplication.run(input)`` and return its output.

        Raises ``EnclaveCallError`` if it raised, ``DeadlineExceededError`` after
        ``timeout`` seconds, ``EnclaveUnavailableError`` if the enclave is gone.
        """
        return self._call(CallKind.RUN, "", (input,), None, timeout)

    def call(self, name: str, /, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call the enclave's ``@ecall`` entry point ``name`` and return its result."""
        if not isinstance(name, str) or not name:
            raise ValueError("call() needs the entry point's name as its first argument")
        return self._call(CallKind.ECALL, name, args, kwargs, timeout)

    def register_exit_handler(self, name: str, fn: Callable[..., Any]) -> None:
        """Serve the enclave's ``host.call(name, ...)`` (and ``host.notify``) with ``fn``.

        ``fn`` runs on the client thread whose entry call is waiting; it may call
        into the enclave again (a nested call). Whatever it raises is raised in
        the enclave as ``HostCallError``.
        """
        self._exits.register(name, fn)

    # ------------------------------------------------------------- ending

    def _destroy(self, final_input: Any, skip_finalize: bool) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        finalize_error: EnclaveError | None = None
        try:
            if not skip_finalize and self._endpoint.failure is None:
                try:
                    self._endpoint.call(
                        self._thread_tag(),
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
                self._endpoint.run_locked(lambda core: core.close())
            self._transport.close()
            self._exits.output.flush()
            self._endpoint.fail(ClientClosedError(f"enclave {self._name!r} was destroyed"))
            self._provisioner.release(self._lease)
            self._exits.files.close_all()
            self._ended.put(None)  # the disposer's end
            self._on_destroyed(self)
        if finalize_error is not None:
            raise finalize_error

    def __enter__(self) -> EnclaveClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._destroy(None, False)
        except Exception:
            if exc_type is None:
                raise
            log.exception("destroying enclave %r after an error in its block failed", self._name)
