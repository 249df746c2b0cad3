"""The event-loop driver of the client's ``SessionCore``: ``transport.Endpoint``'s twin.

Everything runs on one loop, so there is no lock: the transport's sink (``feed``)
and the tasks making calls take turns. Each session thread tag (one per asyncio task,
see ``AsyncEnclaveClient``) has a mailbox: a deque and the future its task sleeps on.
A task waiting for its call's result reads its mailbox; when an exit call arrives
there instead, the task serves it right where it is (a sync handler runs on the loop,
an ``async def`` handler is awaited, a built-in service that may block runs in a
thread) and goes back to waiting. A nested call the handler makes is a call of the
same tag: the same enclave worker.

What each frame means, what is legal, and how a given-up thread unwinds is the core's
business; this module only moves events to the right task.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ... import tracing
from ..._errors import (
    DeadlineExceededError,
    EnclaveCallError,
    EnclaveError,
    EnclaveUnavailableError,
    ProtocolError,
)
from ..._proto.v1 import session_pb2 as pb
from ...protocol import (
    CallKind,
    CallReceived,
    CloseReceived,
    Event,
    LoadedReceived,
    RemoteError,
    ResultReceived,
    SessionCore,
)
from ...transport.aio import AsyncClientTransport
from .._exits import ExitHandlers

__all__ = ["AsyncEndpoint"]

_DRAIN_ABOVE = 2**20
"""After a call's frames are queued, a backlog above this many bytes is drained first."""


@dataclass(frozen=True, slots=True)
class _Failure:
    error: BaseException


Mail = CallReceived | ResultReceived | LoadedReceived | _Failure


class _Mailbox:
    __slots__ = ("mail", "waiter")

    def __init__(self) -> None:
        self.mail: deque[Mail] = deque()
        self.waiter: asyncio.Future[bool] | None = None

    def put(self, item: Mail) -> None:
        self.mail.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(True)


class AsyncEndpoint:
    """Drive the client's ``core`` on ``loop``; see the module docstring."""

    def __init__(
        self,
        core: SessionCore,
        transport: AsyncClientTransport,
        exits: ExitHandlers,
        *,
        error_from_exception: Callable[[BaseException], RemoteError],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.core = core
        self._transport = transport
        self._exits = exits
        self._error_from_exception = error_from_exception
        self._loop = loop
        self._boxes: dict[int, _Mailbox] = {0: _Mailbox()}  # 0: the session's own
        self._failure: BaseException | None = None

    @property
    def failure(self) -> BaseException | None:
        """Why the session ended abnormally, or None while it is healthy."""
        return self._failure

    # ----------------------------------------------------------------- sending

    def _send_queued(self) -> None:
        frames = self.core.frames_to_send()
        if frames:
            self._transport.send(frames)

    def run(self, action: Callable[[SessionCore], Any]) -> Any:
        """Run ``action(core)`` and send what it queued; raise the failure if it ended."""
        self._raise_if_failed()
        try:
            return action(self.core)
        finally:
            self._send_queued()

    async def call(
        self,
        thread: int,
        kind: CallKind,
        name: str = "",
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        trace: bytes = b"",
    ) -> Any:
        """Make a call on ``thread`` and wait for its result, serving nested calls."""
        deadline = None if timeout is None else self._loop.time() + timeout
        self._raise_if_failed()
        box = self._boxes.get(thread)
        if box is None:
            box = self._boxes[thread] = _Mailbox()
        try:
            call_id = self.core.start_call(thread, kind, name, args, kwargs, trace=trace)
        finally:
            self._send_queued()
        if self._transport.backlog > _DRAIN_ABOVE:  # a large value: let it go out first
            try:
                await self._transport.drain()
            except asyncio.CancelledError:
                self._abandon(thread, box)
                raise
        return await self._wait(thread, box, call_id, deadline)

    def dispose(self, thread: int) -> None:
        """The task that used ``thread`` ended: let the proxy's worker for it go."""
        if self._failure is None:
            try:
                self.core.dispose_thread(thread)
            finally:
                self._send_queued()
        self._boxes.pop(thread, None)

    # ----------------------------------------------------------------- waiting

    async def wait_loaded(self, timeout: float) -> LoadedReceived:
        """Wait for the proxy's answer to the bundle; raise on failure or timeout."""
        box = self._boxes[0]
        mail = await self._next(0, box, self._loop.time() + timeout, abandon=False)
        if isinstance(mail, LoadedReceived):
            return mail
        box.put(mail)
        if isinstance(mail, _Failure):
            raise mail.error
        raise ProtocolError(f"unexpected {type(mail).__name__} while waiting for the bundle")

    async def _next(
        self, thread: int, box: _Mailbox, deadline: float | None, *, abandon: bool = True
    ) -> Mail:
        while not box.mail:
            waiter = self._loop.create_future()
            box.waiter = waiter
            timer = None if deadline is None else self._loop.call_at(deadline, _expire, waiter)
            try:
                expired = await waiter
            except asyncio.CancelledError:
                if abandon:
                    self._abandon(thread, box)
                raise
            finally:
                box.waiter = None
                if timer is not None:
                    timer.cancel()
            if expired and not box.mail:
                if not abandon:
                    raise DeadlineExceededError("the enclave proxy did not load the bundle in time")
                self._abandon(thread, box)
                raise DeadlineExceededError(
                    "the call's timeout passed; it was cancelled in the enclave"
                )
        return box.mail.popleft()

    async def _wait(self, thread: int, box: _Mailbox, call_id: int, deadline: float | None) -> Any:
        while True:
            mail = await self._next(thread, box, deadline)
            if isinstance(mail, ResultReceived):
                if mail.call_id != call_id:  # the core routes results by call id
                    raise ProtocolError(f"result {mail.call_id} reached the wrong waiter")
                if mail.error is not None:
                    raise self._to_exception(mail.error)
                return mail.value
            if isinstance(mail, CallReceived):
                await self._serve_call(thread, box, mail)
            elif isinstance(mail, LoadedReceived):
                raise ProtocolError("a Loaded frame reached a call's waiter")
            else:  # sticky, so every waiter on this thread sees it
                box.put(mail)
                raise mail.error

    def _abandon(self, thread: int, box: _Mailbox) -> None:
        if self.core.is_abandoned(thread) or self._failure is not None:
            return
        ids = self.core.abandon_thread(thread)
        self._send_queued()
        # Outer calls of this task, waiting further up the stack, fail the same way.
        for _ in ids[:-1]:
            box.put(
                _Failure(
                    DeadlineExceededError(
                        "an inner call was given up; the task's calls were cancelled in the enclave"
                    )
                )
            )

    async def _serve_call(self, thread: int, box: _Mailbox, event: CallReceived) -> None:
        value: Any = None
        error: RemoteError | None = None
        try:
            value = await self._run_handler(event)
        except asyncio.CancelledError:
            # The task was cancelled while serving: give the thread up (the core answers
            # this exit call with CANCELLED after the Cancel of the outermost call).
            self._abandon(thread, box)
            raise
        except BaseException as exc:  # the peer must get an answer whatever happened
            error = self._error_from_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            if (
                not event.oneway
                and self.core.error is None
                and self._failure is None
                and not self.core.is_abandoned(event.thread)
            ):
                self.core.send_result(event.thread, event.call_id, value, error)
                self._send_queued()

    async def _run_handler(self, event: CallReceived) -> Any:
        fn, builtin = self._exits.lookup(event.name)
        tracer = tracing.TRACER
        if tracer is None:
            return await self._invoke(fn, builtin, event)
        method = event.name if fn is not None else "other"  # names the enclave made up
        with tracer.server_span(tracing.EXIT_SERVICE, method, event.trace):
            return await self._invoke(fn, builtin, event)

    async def _invoke(
        self, fn: Callable[..., Any] | None, builtin: bool, event: CallReceived
    ) -> Any:
        if fn is None:
            raise self._exits.missing(event.name)
        if builtin:  # files, stdin: they may block, so not on the loop
            return await asyncio.to_thread(fn, *event.args, **event.kwargs)
        result = fn(*event.args, **event.kwargs)
        if inspect.isawaitable(result):  # an async def handler
            result = await result
        return result

    def _to_exception(self, error: RemoteError) -> EnclaveError:
        return EnclaveCallError(
            error.message,
            remote_type=error.type,
            remote_traceback=error.traceback or None,
            code=error.code,
        )

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    # ----------------------------------------------------------------- receiving

    def feed(self, frames: list[pb.Frame]) -> None:
        """Process frames from the proxy (the transport calls it on the loop)."""
        if self._failure is not None:
            return
        try:
            events = self.core.receive(frames)
        except ProtocolError as exc:
            self._send_queued()  # the Close that tells the peer why
            self.fail(exc)
            return
        self._send_queued()
        for event in events:
            self._dispatch(event)

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, ResultReceived | CallReceived):
            # The core passes results and exit calls (one-way ones too) only for a thread
            # whose call is waiting: its task serves them, in order with the rest.
            box = self._boxes.get(event.thread)
            if box is not None:
                box.put(event)
        elif isinstance(event, CloseReceived):
            self._exits.handle_event(event)
            if event.error is not None and event.error.type == "ProtocolError":
                error: EnclaveError = ProtocolError(
                    f"peer closed the session: {event.error.message}"
                )
            else:
                error = EnclaveUnavailableError(
                    "the enclave session was closed by the peer"
                    + (f": {event.error.message}" if event.error else "")
                )
            self.fail(error)
        elif isinstance(event, LoadedReceived):
            self._boxes[0].put(event)
        else:  # output
            self._exits.handle_event(event)

    # ----------------------------------------------------------------- ending

    def fail(self, error: BaseException) -> None:
        """End the session abnormally: every waiting and later call raises ``error``."""
        if self._failure is not None:
            return
        self._failure = error
        self.core.connection_lost()
        for box in self._boxes.values():
            box.put(_Failure(error))
