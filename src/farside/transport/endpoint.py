"""The threaded driver of a ``SessionCore``, shared by the client and the proxy.

An ``Endpoint`` serializes access to the core with one lock, sends what the core
queues through its transport, and routes each event to the thread it belongs
to. Every session thread (a client thread, or the enclave worker serving it)
has a mailbox; a thread waiting for its call's result reads its mailbox, and
when a nested call arrives there instead, it runs that call right where it is
(re-entrancy, with thread affinity on both sides) and goes back to waiting.

What runs an incoming call, and what happens to output and to the session's
end, is up to the ``Handler`` the owner supplies: the client serves exit calls,
the proxy serves entry calls. This module knows no transport: it sends through any
``FrameSender`` (``farside.transport.base``).

Leader/follower. A transport whose reading any thread may do (the stream transport)
offers it through ``share_reading(endpoint)``: then a thread waiting for its mail
(a client thread for its result, a proxy worker for its next call) reads the wire
itself while no other thread does (it *leads*), so one calling thread pays no thread
wake-up per crossing. What it reads for other threads goes to their mailboxes (and
wakes them); once its own mail is there, or its deadline passes, it gives up the
lead, waking one waiting thread (a *follower*) to take it. The transport's own
reader thread leads only when no thread has waited for ``READER_GRACE`` seconds, to
see what arrives unasked (output after a call, the peer's end). The endpoint counts
``reads`` (by waiting threads and by the reader) and ``wakeups`` (a waiting thread
woken with mail another thread read) in ``stats``, which tests read.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .._errors import (
    DeadlineExceededError,
    EnclaveCallError,
    EnclaveError,
    EnclaveUnavailableError,
    ProtocolError,
    StatusCode,
)
from .._proto.v1 import session_pb2 as pb
from ..protocol import (
    CallKind,
    CallReceived,
    CloseReceived,
    DisposeReceived,
    Event,
    LoadedReceived,
    RemoteError,
    ResultReceived,
    SessionCore,
    State,
    Stream,
)
from .base import FrameSender

__all__ = ["Endpoint", "EndpointStats", "Handler"]

_READER = -1  # the transport's reader thread, as the leader


def _nothing() -> None:
    pass


OUTPUT_BACKLOG = 8 * 2**20
"""Output waiting to leave beyond this many bytes blocks the thread that writes more."""


class Handler(Protocol):
    """What the owner of an endpoint does with the peer's requests."""

    def handle_call(self, event: CallReceived) -> Any:
        """Run an incoming call on the current thread and return its result (or raise)."""

    def handle_event(self, event: Event) -> None:
        """Deal with an event that is not routed to a waiting thread (runs on the reader)."""

    def start_thread(self, thread: int, kind: CallKind) -> bool:
        """(proxy) A ``kind`` call arrived for a thread nobody serves yet: start its worker.

        Return False to refuse (the call is answered with RESOURCE_EXHAUSTED). Runs
        under the endpoint's lock: start the thread, do not wait for it.
        """


@dataclass(frozen=True, slots=True)
class _Failure:
    error: BaseException


@dataclass(frozen=True, slots=True)
class _Stop:
    pass


@dataclass(frozen=True, slots=True)
class _Dispose:
    """(proxy) The client thread this worker serves ended: exit once idle."""


Mail = CallReceived | ResultReceived | LoadedReceived | _Failure | _Stop | _Dispose

READER_GRACE = 0.005
"""The transport's reader leads only after no thread has waited for this long (seconds)."""
LEAD_POLL = 0.1
"""A leading thread looks at its mailbox at least this often (mail other threads put)."""

Pump = Callable[[float | None], bool]
"""Read the wire once (waiting up to the timeout, None: forever) and feed what arrived;
False once the stream has ended (the transport has reported the loss)."""


class _Mailbox:
    """One session thread's mail, guarded by the endpoint's leader/follower lock."""

    __slots__ = ("cond", "items", "waiting")

    def __init__(self, lock: threading.Lock) -> None:
        self.items: deque[Mail] = deque()
        self.cond = threading.Condition(lock)
        self.waiting = False  # its thread is blocked in _take, as a follower


class EndpointStats:
    """What the leader/follower reading did (counters; read by tests and benchmarks)."""

    __slots__ = ("led_reads", "reader_reads", "wakeups")

    def __init__(self) -> None:
        self.led_reads = 0  # reads of the wire by a thread waiting for its own mail
        self.reader_reads = 0  # reads by the transport's reader thread
        self.wakeups = 0  # a blocked waiting thread woken with mail read by another

    def snapshot(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Endpoint:
    """Drive ``core`` from many threads; see the module docstring."""

    def __init__(
        self,
        core: SessionCore,
        sender: FrameSender,
        handler: Handler,
        *,
        error_type: type[EnclaveCallError] = EnclaveCallError,
        error_from_exception: Callable[[BaseException], RemoteError],
        output_delay: float = 0.002,
        reader_grace: float = READER_GRACE,
    ) -> None:
        self.core = core
        self._sender = sender
        self._handler = handler
        self._error_type = error_type
        self._error_from_exception = error_from_exception
        self._lock = threading.Lock()
        self._mailboxes: dict[int, _Mailbox] = {}
        # Leader/follower (see the module docstring): all under _lf, taken after _lock.
        self._lf = threading.Lock()
        self._pump: Pump | None = None  # set while a transport lets waiting threads read
        self._reading_over = False
        self._leader: int | None = None  # the thread reading the wire (_READER: the reader)
        self._followers: list[_Mailbox] = []  # blocked waiting threads, in arrival order
        self._active_at = 0.0  # when a thread last waited for mail
        self._reader_cond = threading.Condition(self._lf)
        self._reader_grace = reader_grace
        self.stats = EndpointStats()
        # A sender that can queue now and write after our lock is released (the stream).
        self._queue: Callable[[list[pb.Frame], Sequence[Any]], None] | None = getattr(
            sender, "queue", None
        )
        self._flush: Callable[[], None] = getattr(sender, "flush", _nothing)
        self._failure: BaseException | None = None
        self._output_delay = output_delay
        self._flush_wanted = threading.Event()
        self._flusher: threading.Thread | None = None
        self._mailbox(0)  # the session's own: LoadedReceived waits here
        share = getattr(sender, "share_reading", None)
        if share is not None:
            share(self)

    @property
    def failure(self) -> BaseException | None:
        """Why the session ended abnormally, or None while it is healthy."""
        return self._failure

    # ----------------------------------------------------------------- sending

    def _send_queued(self) -> None:
        frames = self.core.frames_to_send()
        if frames:
            blobs = self.core.blobs_to_send()
            if blobs:
                self._sender.send(frames, blobs)
            else:
                self._sender.send(frames)

    def _queue_queued(self) -> bool:
        """(under the lock) Queue what the core queued without writing it; True if the
        caller must ``_flush`` once it let go of the lock. Threads queueing while another
        writes have their frames written with its (one system call for the lot)."""
        if self._queue is None:
            self._send_queued()
            return False
        frames = self.core.frames_to_send()
        if not frames:
            return False
        self._queue(frames, self.core.blobs_to_send())
        return True

    def _mailbox(self, thread: int) -> _Mailbox:
        box = self._mailboxes.get(thread)
        if box is None:
            box = self._mailboxes[thread] = _Mailbox(self._lf)
        return box

    def _put(self, box: _Mailbox, mail: Mail) -> None:
        with self._lf:
            box.items.append(mail)
            if box.waiting:
                self.stats.wakeups += 1
                box.cond.notify()

    # ----------------------------------------------------------------- leader/follower

    @property
    def max_value_size(self) -> int:
        """The most bytes one value may hold in this session (as the core enforces it)."""
        return self.core.max_value_size

    def start_reading(self, pump: Pump) -> None:
        """(transport) Waiting threads may read the wire from now on with ``pump``."""
        with self._lf:
            if not self._reading_over:
                self._pump = pump

    def reading_over(self) -> None:
        """(transport) The stream ended: nobody reads any more; the reader may go."""
        with self._lf:
            self._reading_over = True
            self._pump = None
            self._reader_cond.notify_all()
            for box in self._followers:
                box.cond.notify()

    def reader_turn(self, urgent: Callable[[], bool] | None = None) -> bool:
        """(the transport's reader thread) Wait until it should read; False: stop reading.

        It reads when no thread leads and none has waited for ``READER_GRACE`` seconds,
        or (within ``LEAD_POLL``) as soon as no thread leads once ``urgent()`` is true
        (the transport is closing and waits for the peer's end).
        """
        with self._lf:
            while True:
                if self._reading_over:
                    return False
                if self._leader is None and not self._followers:
                    idle = time.monotonic() - self._active_at
                    if idle >= self._reader_grace or (urgent is not None and urgent()):
                        self._leader = _READER
                        return True
                    self._reader_cond.wait(min(self._reader_grace - idle, LEAD_POLL))
                else:
                    self._reader_cond.wait(min(self._reader_grace, LEAD_POLL))

    def reader_done(self) -> None:
        """(the transport's reader thread) One read is fed: let a waiting thread lead."""
        with self._lf:
            self.stats.reader_reads += 1
            self._leader = None
            if self._followers:
                self._followers[0].cond.notify()

    def _take(self, box: _Mailbox, deadline: float | None) -> Mail | None:
        """The next mail of ``box`` (None once ``deadline`` passed), reading the wire
        ourselves while nobody else does."""
        lf = self._lf
        lf.acquire()
        try:
            while True:
                if box.items:
                    return box.items.popleft()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                pump = self._pump
                if pump is not None and self._leader is None:
                    me = threading.get_ident()
                    self._leader = me
                    lf.release()
                    try:
                        self._lead(pump, box, deadline)
                    finally:
                        lf.acquire()
                        if self._leader == me:
                            self._leader = None
                    continue
                box.waiting = True
                self._followers.append(box)
                try:
                    box.cond.wait(left)
                finally:
                    box.waiting = False
                    self._followers.remove(box)
        finally:
            self._active_at = time.monotonic()
            if self._leader is None and self._followers:
                self._followers[0].cond.notify()  # pass the lead on
            lf.release()

    def _lead(self, pump: Pump, box: _Mailbox, deadline: float | None) -> None:
        """Read the wire until ``box`` has mail, ``deadline`` passes or the stream ends."""
        while not box.items:
            wait = LEAD_POLL
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return
            self.stats.led_reads += 1
            if not pump(wait):
                self.reading_over()
                return

    def run_locked(self, action: Callable[[SessionCore], Any]) -> Any:
        """Run ``action(core)`` under the lock and send what it queued.

        Raises the session's failure (which names its cause) if it already ended.
        """
        with self._lock:
            self._raise_if_failed()
            try:
                return action(self.core)
            finally:
                self._send_queued()

    def call(
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
        """Make a call on ``thread`` and wait for its result, serving nested calls.

        ``trace`` is the caller's trace context (``farside.tracing``), passed through.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._raise_if_failed()
            box = self._mailbox(thread)
            call_id = self.core.start_call(thread, kind, name, args, kwargs, trace=trace)
            queued = self._queue_queued()
        if queued:
            self._flush()
        return self._wait(thread, box, call_id, deadline)

    def dispose(self, thread: int) -> None:
        """(client) The client thread ``thread`` ended: let the proxy's worker for it go.

        Never raises: it runs from thread-exit finalizers, when the session may be gone.
        """
        with self._lock:
            if self.core.depth(thread) and not self.core.is_abandoned(thread):
                return  # a call of that thread still waits in its mailbox: not ended after all
            if self._failure is None:
                try:
                    self.core.dispose_thread(thread)
                finally:
                    self._send_queued()
            self._mailboxes.pop(thread, None)

    def notify(
        self,
        thread: int,
        name: str,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any] | None = None,
        *,
        trace: bytes = b"",
    ) -> None:
        """Send a one-way exit call (no result, no waiting)."""
        with self._lock:
            self._raise_if_failed()
            self.core.start_call(
                thread, CallKind.EXIT, name, args, kwargs, oneway=True, trace=trace
            )
            self._send_queued()

    def write_output(self, thread: int, stream: Stream, data: bytes) -> None:
        """Buffer one-way output; a background flusher sends it within ``output_delay``."""
        with self._lock:
            if self._failure is not None or self.core.state is not State.READY:
                return  # a dead session has nobody to tell (and none is READY before)
            self.core.write_output(thread, stream, data)
            self._send_queued()  # write_output may have flushed a full chunk
            if self.core.pending_output and self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_loop, name="farside-output-flusher", daemon=True
                )
                self._flusher.start()
        if not self._flush_wanted.is_set():  # a plain read; set() takes a lock
            self._flush_wanted.set()
        if self._sender.backlog > OUTPUT_BACKLOG:
            # Backpressure: a flood of output waits for the client instead of piling up.
            while self._failure is None and not self._sender.wait_below(OUTPUT_BACKLOG, 0.5):
                pass

    def flush_output(self) -> None:
        """Send buffered output now."""
        with self._lock:
            if self.core.error is None and self._failure is None:
                self.core.flush_output()
                self._send_queued()

    def _flush_loop(self) -> None:
        while self._failure is None:
            self._flush_wanted.wait()
            time.sleep(self._output_delay)  # let a burst of writes coalesce
            self._flush_wanted.clear()
            self.flush_output()

    def wait_loaded(self, timeout: float) -> LoadedReceived:
        """(client) Wait for the proxy's answer to the bundle; raise on failure or timeout."""
        box = self._mailboxes[0]
        mail = self._take(box, time.monotonic() + timeout)
        if mail is None:
            raise DeadlineExceededError(
                f"the enclave proxy did not load the bundle within {timeout:g} s"
            )
        if isinstance(mail, LoadedReceived):
            return mail
        self._put(box, mail)
        if isinstance(mail, _Failure):
            raise mail.error
        raise RuntimeError(f"unexpected {mail!r} while waiting for the bundle to load")

    def serve(self, thread: int, *, idle_timeout: float | None = None) -> None:
        """(proxy worker) Serve calls arriving for ``thread`` until the session ends.

        With ``idle_timeout``, return after that many idle seconds with nothing in
        flight on the thread (its mailbox is dropped; a later call starts a new worker).
        """
        box = self._mailboxes[thread]
        while True:
            deadline = None if idle_timeout is None else time.monotonic() + idle_timeout
            mail = self._take(box, deadline)
            if mail is None:
                with self._lock:
                    if self.core.depth(thread) == 0 and not box.items:
                        del self._mailboxes[thread]
                        return
                continue
            if isinstance(mail, CallReceived):
                self._serve_call(mail)
            elif isinstance(mail, _Dispose):
                with self._lock:
                    if self._mailboxes.get(thread) is box and not box.items:
                        del self._mailboxes[thread]
                        return
                # a call came after all (a peer that disposed too early): serve it
            elif isinstance(mail, _Failure | _Stop):
                self._put(box, mail)  # sticky
                if isinstance(mail, _Failure):
                    raise mail.error
                return
            else:
                raise ProtocolError(f"{type(mail).__name__} reached an idle worker")

    # ----------------------------------------------------------------- waiting

    def _next_mail(
        self, thread: int, box: _Mailbox, call_id: int | None, deadline: float | None
    ) -> Mail:
        try:
            mail = self._take(box, deadline)
        except KeyboardInterrupt:
            if call_id is not None:  # Ctrl-C: give the call up as if it timed out
                self._abandon(thread, box)
            raise
        if mail is None:
            self._abandon(thread, box)
            raise DeadlineExceededError(
                "the call's timeout passed; it was cancelled in the enclave"
            )
        return mail

    def _wait(self, thread: int, box: _Mailbox, call_id: int | None, deadline: float | None) -> Any:
        disposed = False  # the client thread ended while this call unwinds: serve() exits after
        try:
            while True:
                mail = self._next_mail(thread, box, call_id, deadline)
                if isinstance(mail, ResultReceived):
                    if mail.call_id != call_id:  # the core routes results by call id
                        raise ProtocolError(f"result {mail.call_id} reached the wrong waiter")
                    if mail.error is not None:
                        raise self._to_exception(mail.error)
                    return mail.value
                if isinstance(mail, CallReceived):
                    self._serve_call(mail)
                elif isinstance(mail, _Dispose):
                    disposed = True
                elif isinstance(mail, LoadedReceived):
                    raise ProtocolError("a Loaded frame reached a call's waiter")
                else:  # _Failure or _Stop: sticky, so every waiter on this thread sees it
                    self._put(box, mail)
                    if isinstance(mail, _Failure):
                        raise mail.error
                    return None
        finally:
            if disposed:
                self._put(box, _Dispose())

    def _abandon(self, thread: int, box: _Mailbox) -> None:
        with self._lock:
            ids = self.core.abandon_thread(thread)
            self._send_queued()
        # Outer calls of this thread, waiting further up the stack, fail the same way.
        for _ in ids[:-1]:
            self._put(
                box,
                _Failure(
                    DeadlineExceededError(
                        "an inner call timed out; the thread's calls were cancelled in the enclave"
                    )
                ),
            )

    def _serve_call(self, event: CallReceived) -> None:
        value: Any = None
        error: RemoteError | None = None
        try:
            value = self._handler.handle_call(event)
        except BaseException as exc:  # the peer must get an answer whatever happened
            error = self._error_from_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            if not event.oneway:
                queued = False
                with self._lock:
                    if (
                        self.core.error is None
                        and self._failure is None
                        and not self.core.is_abandoned(event.thread)
                    ):
                        self.core.send_result(event.thread, event.call_id, value, error)
                        queued = self._queue_queued()
                if queued:
                    self._flush()

    def _to_exception(self, error: RemoteError) -> EnclaveError:
        return self._error_type(
            error.message,
            remote_type=error.type,
            remote_traceback=error.traceback or None,
            code=error.code,
        )

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    # ----------------------------------------------------------------- receiving

    def feed(self, frames: list[pb.Frame], blobs: Sequence[bytes] = ()) -> None:
        """Process frames from the peer (called by whichever thread reads the wire, one
        at a time); ``blobs``: the bytes of Blob frames received out of band."""
        with self._lock:
            try:
                events = self.core.receive(frames, blobs)
            except ProtocolError as exc:
                self._send_queued()  # the Close that tells the peer why
                self._fail_locked(exc)
                events = []
            else:
                self._send_queued()
        for event in events:
            self._dispatch(event)

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, ResultReceived):
            self._put(self._mailboxes[event.thread], event)
        elif isinstance(event, CallReceived):
            self._route_call(event)
        elif isinstance(event, CloseReceived):
            self._handler.handle_event(event)
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
            self._put(self._mailboxes[0], event)
        elif isinstance(event, DisposeReceived):
            with self._lock:
                box = self._mailboxes.get(event.thread)
            if box is not None:
                self._put(box, _Dispose())  # after whatever it still has to serve
            self._handler.handle_event(event)
        else:
            self._handler.handle_event(event)

    def _route_call(self, event: CallReceived) -> None:
        if event.oneway:
            # The core passes one-way calls only for a thread waiting for its call: that
            # thread serves them, in order with the rest, never the reader thread.
            box = self._mailboxes.get(event.thread)
            if box is not None:
                self._put(box, event)
            return
        with self._lock:  # under the lock: an idle worker may be dropping this mailbox
            box = self._mailboxes.get(event.thread)
            if box is not None:
                self._put(box, event)
                return
            box = self._mailbox(event.thread)  # before the worker starts: it serves this box
            if not self._handler.start_thread(event.thread, event.kind):
                del self._mailboxes[event.thread]
                self.core.send_result(
                    event.thread,
                    event.call_id,
                    error=RemoteError(
                        code=StatusCode.RESOURCE_EXHAUSTED,
                        type="ResourceExhausted",
                        message="the enclave runs as many worker threads as it may; "
                        "retry when other client threads are done",
                    ),
                )
                self._send_queued()
                return
            self._put(box, event)

    # ----------------------------------------------------------------- ending

    def fail(self, error: BaseException) -> None:
        """End the session abnormally: every waiting and later call raises ``error``."""
        with self._lock:
            self._fail_locked(error)

    def _fail_locked(self, error: BaseException) -> None:
        if self._failure is not None:
            return
        self._failure = error
        self.core.connection_lost()
        for box in self._mailboxes.values():
            self._put(box, _Failure(error))
        self._flush_wanted.set()

    def stop_threads(self) -> None:
        """Tell every thread serving in ``serve`` to return."""
        with self._lock:
            for box in self._mailboxes.values():
                self._put(box, _Stop())
