"""The sans-IO session core: frames in, frames and events out.

``SessionCore`` is the one place that knows what a frame means, which client
thread it belongs to and what state the session is in. It has no sockets,
threads or clocks: its driver feeds it received frames (``receive``), tells it
what the local side wants to send (``start_call``, ``send_result``, ...) and
moves ``frames_to_send()`` to the peer. It is not thread-safe; the driver
serializes access.

Per client thread, the core keeps the stack of calls in flight. Calls nest by
alternating direction (entry, exit, entry, ...), and results come back in LIFO
order, so the stack decides what is legal:

    who          may start a call on thread T when the top of T's stack is
    client       empty, or an exit call it received        (a nested entry call)
    proxy        an entry call it received                  (an exit call)

and a result is legal only for the call on top. Anything else from the peer is a
``ProtocolError``: the session moves to a sticky error state, tells the peer
with a Close frame, and every later use raises the same error.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .. import _values
from .._config import SANDBOX_MODES, SandboxConfig
from .._errors import EnclaveError, EnclaveUnavailableError, ProtocolError, StatusCode
from .._proto.v1 import session_pb2 as pb
from ..attestation.bundle import Bundle, BundleError, Manifest
from ._events import (
    BundleReceived,
    CallKind,
    CallReceived,
    CancelReceived,
    CloseReceived,
    DisposeReceived,
    Event,
    LoadedReceived,
    OutputReceived,
    RemoteError,
    ResultReceived,
    Stream,
)

__all__ = ["PROTOCOL_VERSION", "Limits", "Role", "SessionCore", "State"]

PROTOCOL_VERSION = 1
MAX_VALUE_SIZE_CAP = 2**30
"""No peer can make a proxy accept values larger than this."""


class Role(enum.Enum):
    """Which end of the session a core drives."""

    CLIENT = "client"
    PROXY = "proxy"


class State(enum.Enum):
    """The session's state; ``CLOSED`` and ``ERROR`` are final."""

    IDLE = "idle"  # client before open(); proxy waiting for Open
    RECEIVING_BUNDLE = "receiving bundle"  # proxy: Open arrived, chunks follow
    LOADING = "loading"  # bundle complete, Loaded not yet sent/received
    ATTESTING = "attesting"  # client: Loaded arrived; its evidence is not yet accepted
    READY = "ready"
    CLOSED = "closed"
    ERROR = "error"


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds the core enforces; the defaults suit most enclaves."""

    max_depth: int = 64
    max_value_size: int = 256 * 2**20
    value_chunk_size: int = 2**20
    max_bundle_size: int = 64 * 2**20
    max_bundle_files: int = 10_000
    bundle_chunk_size: int = 2**20
    output_chunk_size: int = 64 * 2**10


@dataclass(slots=True)
class _InFlight:
    call_id: int
    outgoing: bool
    kind: CallKind


@dataclass(slots=True)
class _PendingOutput:
    thread: int
    stream: Stream
    data: bytearray


def _remote_error_from_pb(error: pb.Error) -> RemoteError:
    return RemoteError(
        code=StatusCode.coerce(error.code),
        type=error.type,
        message=error.message,
        traceback=error.traceback,
    )


MAX_ERROR_TEXT = 64 * 2**10
MAX_TRACE = 1024
"""The most bytes of trace context a call carries; a peer's longer context is dropped."""


_CALL_KINDS = {int(kind): kind for kind in CallKind}
"""The call kinds by their wire number (a dict lookup, not an enum call, per call)."""


def _call_frame(
    call_id: int, thread: int, kind: CallKind, name: str, args: bytes, oneway: bool, trace: bytes
) -> pb.Frame:
    """A Call frame, built in place (a Call built apart is copied into its Frame); the
    same bytes as ``pb.Frame(call=pb.Call(...))``. Protobuf refuses a bad ``name`` with
    ``TypeError`` or ``ValueError``."""
    frame = pb.Frame()
    call = frame.call
    call.SetInParent()
    call.call_id = call_id
    call.thread = thread
    call.kind = int(kind)  # type: ignore[assignment]
    if name is not None:  # as the constructor: None leaves the field empty
        call.name = name
    call.args = args
    if oneway:
        call.oneway = True
    if trace:
        call.trace = trace[:MAX_TRACE]
    return frame


def _trace_of(frame: pb.Call) -> bytes:
    """A call's trace context, or nothing when it is too long (tracing never fails a call)."""
    trace = frame.trace
    return trace if len(trace) <= MAX_TRACE else b""


def _text(value: str, limit: int = MAX_ERROR_TEXT) -> str:
    """Text protobuf accepts (valid UTF-8), bounded so errors cannot balloon."""
    if len(value) > limit:
        value = value[: limit // 2] + "\n[... truncated ...]\n" + value[-limit // 2 :]
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _remote_error_to_pb(error: RemoteError) -> pb.Error:
    return pb.Error(
        code=int(error.code),
        type=_text(error.type, 512),
        message=_text(error.message),
        traceback=_text(error.traceback),
    )


def _sandbox_to_pb(sandbox: SandboxConfig) -> pb.SandboxRequest:
    return pb.SandboxRequest(
        mode=sandbox.mode or "",
        memory_bytes=sandbox.memory or 0,
        open_files=sandbox.open_files or 0,
        cpu_seconds=sandbox.cpu_seconds or 0,
    )


def _sandbox_from_pb(request: pb.SandboxRequest) -> SandboxConfig:
    if request.mode and request.mode not in SANDBOX_MODES:
        raise ProtocolError(f"peer asked for an unknown sandbox mode {_text(request.mode)!r}")
    return SandboxConfig(
        mode=request.mode or None,  # checked just above
        memory=request.memory_bytes or None,
        open_files=request.open_files or None,
        cpu_seconds=request.cpu_seconds or None,
    )


class SessionCore:
    """The state of one enclave session, as seen from one end (``role``)."""

    def __init__(self, role: Role, *, limits: Limits | None = None) -> None:
        self.role = role
        self._handlers = _ROLE_HANDLERS[role]  # keyed by frame kind: no enum hashed per frame
        self.limits = limits or Limits()
        self.state = State.IDLE
        self.error: ProtocolError | None = None
        self.closed_by_peer: RemoteError | None = None
        self._outbox: list[pb.Frame] = []
        self._output: list[_PendingOutput] = []
        self._output_size = 0
        self._stacks: dict[int, list[_InFlight]] = {}
        self._outgoing: dict[int, int] = {}  # call id -> thread, for our calls in flight
        self._abandoned: set[int] = set()
        self._abandoned_calls: dict[int, int] = {}  # call id -> thread, results still due
        self._abandoned_stacks: dict[int, list[_InFlight]] = {}
        self._next_id = 1 if role is Role.CLIENT else 2
        self._last_peer_id = 0
        self._max_depth = self.limits.max_depth
        self._max_value_size = self.limits.max_value_size
        self._chunks = bytearray()  # a value arriving in Chunk frames
        self._in_blobs: list[bytes] = []  # its large bytes, arriving in Blob frames
        self._in_blob_bytes = 0
        self._oob: Iterator[bytes] = iter(())  # receive()'s out-of-band blobs
        self._blob_part: bytearray | None = None  # an inline blob, until it is whole
        self._blob_need = 0
        self._out_blobs: list[bytes | memoryview] = []  # the bytes of the Blob frames queued
        # proxy: bundle being received
        self._manifest: Manifest | None = None
        self._files: list[tuple[str, int]] = []
        self._bundle = bytearray()
        self._bundle_size = 0
        self._open_nonce = b""
        self._open_client_nonce = b""
        self._open_signature: tuple[bytes, bytes] | None = None
        self._open_sandbox: SandboxConfig | None = None

    # ------------------------------------------------------------------ queries

    @property
    def max_value_size(self) -> int:
        """The most bytes one call's arguments or result may take (after the Open)."""
        return self._max_value_size

    def depth(self, thread: int) -> int:
        """Number of calls in flight on ``thread`` (0 when it is idle)."""
        return len(self._stacks.get(thread, ()))

    def is_abandoned(self, thread: int) -> bool:
        """True if the client gave up on ``thread`` (see ``abandon_thread``)."""
        return thread in self._abandoned

    def busy_threads(self) -> list[int]:
        """Threads with at least one call in flight."""
        return list(self._stacks)

    @property
    def pending_output(self) -> int:
        """Bytes of output buffered but not yet moved to the outbox."""
        return self._output_size

    # --------------------------------------------------------------- local side

    def _check_usable(self) -> None:
        if self.error is not None:
            raise self.error
        if self.state is State.CLOSED:
            raise EnclaveUnavailableError("the enclave session is closed")

    def _emit(self, frame: pb.Frame) -> None:
        self.flush_output()
        self._outbox.append(frame)

    def open(
        self,
        bundle: Bundle,
        *,
        nonce: bytes = b"",
        client_nonce: bytes = b"",
        signature: tuple[bytes, bytes] | None = None,
        sandbox: SandboxConfig | None = None,
    ) -> None:
        """(client) Start the session: manifest, file index, attestation nonce, bundle bytes.

        ``signature`` is the bundle signer's (public key, signature), if it is signed;
        ``sandbox`` is what the client asks of the proxy's sandbox.
        """
        self._require_role(Role.CLIENT, "open")
        self._check_usable()
        if self.state is not State.IDLE:
            raise RuntimeError("open() may be called only once")
        m = bundle.manifest
        paths = sorted(bundle.files)
        self._emit(
            pb.Frame(
                open=pb.Open(
                    protocol_version=PROTOCOL_VERSION,
                    manifest=pb.Manifest(
                        name=m.name,
                        entry=m.entry,
                        product_id=m.product_id,
                        security_version=m.security_version,
                        debug=m.debug,
                    ),
                    files=[pb.FileEntry(path=p, size=len(bundle.files[p])) for p in paths],
                    max_depth=self._max_depth,
                    max_value_size=self._max_value_size,
                    nonce=nonce,
                    client_nonce=client_nonce,
                    signature=pb.BundleSignature(public_key=signature[0], signature=signature[1])
                    if signature is not None
                    else None,
                    sandbox=_sandbox_to_pb(sandbox) if sandbox is not None else None,
                )
            )
        )
        blob = b"".join(bundle.files[p] for p in paths)
        step = self.limits.bundle_chunk_size
        for start in range(0, len(blob), step):
            self._emit(pb.Frame(bundle=pb.BundleChunk(data=blob[start : start + step])))
        self.state = State.LOADING

    def loaded(
        self,
        measurement: bytes = b"",
        error: RemoteError | None = None,
        *,
        evidence: Any = None,
        proxy_nonce: bytes = b"",
    ) -> None:
        """(proxy) Report the outcome of loading the bundle, with its evidence."""
        self._require_role(Role.PROXY, "loaded")
        self._check_usable()
        if self.state is not State.LOADING:
            raise RuntimeError(f"loaded() in state {self.state.value}")
        if error is not None:
            self._emit(pb.Frame(loaded=pb.Loaded(error=_remote_error_to_pb(error))))
            self.close()
            return
        self._emit(
            pb.Frame(
                loaded=pb.Loaded(
                    measurement=measurement, evidence=evidence, proxy_nonce=proxy_nonce
                )
            )
        )
        self.state = State.READY

    def accept_evidence(self) -> None:
        """(client) The proxy's evidence verified: from now on the session carries calls.

        Until then (``ATTESTING``) the client accepts nothing from the proxy but Close:
        an exit call, output or result is a ``ProtocolError``.
        """
        self._require_role(Role.CLIENT, "accept_evidence")
        self._check_usable()
        if self.state is not State.ATTESTING:
            raise RuntimeError(f"accept_evidence() in state {self.state.value}")
        self.state = State.READY

    def start_call(
        self,
        thread: int,
        kind: CallKind,
        name: str = "",
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        oneway: bool = False,
        trace: bytes = b"",
    ) -> int:
        """Send a call on ``thread`` and return its id (0 for a one-way call).

        ``trace`` is the caller's trace context, carried opaquely (``MAX_TRACE`` bytes).

        Raises ``TypeError`` for values that cannot be sent (nothing is sent),
        ``EnclaveError(RESOURCE_EXHAUSTED)`` beyond the nesting limit, and
        ``RuntimeError`` when the thread is not in a state to make this call.
        """
        self._check_usable()
        if self.state is not State.READY:
            raise RuntimeError(f"cannot call in state {self.state.value}")
        if kind.is_entry != (self.role is Role.CLIENT):
            raise RuntimeError(f"the {self.role.value} cannot make a {kind.name} call")
        stack = self._stacks.get(thread)
        if thread <= 0 or thread in self._abandoned:
            raise RuntimeError(f"thread tag {thread} cannot make calls")
        if oneway:
            if kind is not CallKind.EXIT:
                raise RuntimeError("only exit calls can be one-way")
            if not stack or stack[-1].outgoing:
                raise RuntimeError("one-way exit calls can be made only while an entry call runs")
        elif stack and stack[-1].outgoing:
            raise RuntimeError(f"thread {thread} is already waiting for call {stack[-1].call_id}")
        elif not stack and self.role is Role.PROXY:
            raise RuntimeError("exit calls can be made only while an entry call runs")
        elif stack and len(stack) >= self._max_depth:
            raise EnclaveError(
                f"call nesting depth would exceed the limit of {self._max_depth}",
                code=StatusCode.RESOURCE_EXHAUSTED,
            )
        kw = dict(kwargs or {})
        try:
            payload, blobs = self._encode_args(args, kw)
        except TypeError:
            # Name the bad value as the caller wrote it, not inside our [args, kwargs].
            _values.encode(list(args), what="args")
            _values.encode(kw, what="kwargs")
            raise
        call_id = 0 if oneway else self._next_id
        chunks, payload = self._split(payload)
        try:  # build the frame before touching any state: protobuf may refuse the name
            frame = _call_frame(call_id, thread, kind, name, payload, oneway, trace)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid call name {name!r}: {exc}") from None
        if not oneway:
            self._next_id += 2
            self._stacks.setdefault(thread, []).append(_InFlight(call_id, True, kind))
            self._outgoing[call_id] = thread
        self._emit_blobs(blobs)
        self._emit_chunks(chunks)
        self._emit(frame)
        return call_id

    def send_result(
        self, thread: int, call_id: int, value: Any = None, error: RemoteError | None = None
    ) -> None:
        """Answer the peer's call ``call_id``, which must be the top of ``thread``'s stack.

        A value that cannot be encoded is sent as an error result instead, and the
        ``TypeError`` is not raised: the caller's answer is still owed to the peer.
        """
        self._check_usable()
        stack = self._stacks.get(thread)
        if not stack or stack[-1].outgoing or stack[-1].call_id != call_id:
            raise RuntimeError(f"call {call_id} is not the innermost call on thread {thread}")
        blobs, chunks, frame = self._result(call_id, value, error)
        self._emit_blobs(blobs)
        self._emit_chunks(chunks)
        self._emit(frame)
        stack.pop()
        if not stack:
            del self._stacks[thread]

    def _result(
        self, call_id: int, value: Any, error: RemoteError | None
    ) -> tuple[list[bytes | memoryview], list[bytes], pb.Frame]:
        """The blobs, chunks and Result frame that answer ``call_id``."""
        if error is None:
            try:
                payload, blobs = self._encode(value, "result")
                chunks, last = self._split(payload)
                frame = pb.Frame()  # built in place: a Result built apart is copied into it
                result = frame.result
                result.SetInParent()
                result.call_id = call_id
                result.value = last
                return blobs, chunks, frame
            except (TypeError, ValueError) as exc:
                error = RemoteError(
                    code=StatusCode.INVALID_ARGUMENT, type=type(exc).__name__, message=str(exc)
                )
        return [], [], pb.Frame(result=pb.Result(call_id=call_id, error=_remote_error_to_pb(error)))

    def _split(self, payload: bytes) -> tuple[list[bytes], bytes]:
        """Cut a payload into leading chunks and the last piece that rides in its frame."""
        step = self.limits.value_chunk_size
        if len(payload) <= step:
            return [], payload
        cut = len(payload) - ((len(payload) - 1) % step + 1)
        view = memoryview(payload)
        chunks = [bytes(view[start : start + step]) for start in range(0, cut, step)]
        return chunks, bytes(view[cut:])

    def _emit_chunks(self, chunks: list[bytes]) -> None:
        for data in chunks:
            self._emit(pb.Frame(chunk=pb.Chunk(data=data)))

    def _emit_blobs(self, blobs: list[bytes | memoryview]) -> None:
        """Blob frames carry sizes only: the bytes wait in ``blobs_to_send`` for the
        transport, which sends them beside the frames (or inlines them)."""
        for data in blobs:
            self._emit(pb.Frame(blob=pb.Blob(size=len(data))))
            self._out_blobs.append(data)

    def blobs_to_send(self) -> list[bytes | memoryview]:
        """The bytes of the Blob frames ``frames_to_send`` returned, in order (the
        transport sends them with those frames; a sender must take both together)."""
        blobs, self._out_blobs = self._out_blobs, []
        return blobs

    def _encode_args(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[bytes, list[bytes | memoryview]]:
        if not args and not kwargs and len(_values.EMPTY_ARGS_BYTES) <= self._max_value_size:
            return _values.EMPTY_ARGS_BYTES, []  # a call without arguments: nothing to walk
        return self._encode([list(args), kwargs], "arguments")

    def _encode(self, value: Any, what: str) -> tuple[bytes, list[bytes | memoryview]]:
        blobs: list[bytes | memoryview] = []
        data = _values.encode(value, what=what, blobs=blobs)
        size = len(data) + sum(len(blob) for blob in blobs) if blobs else len(data)
        if size > self._max_value_size:
            raise ValueError(
                f"the {what} encode to {size} bytes, more than the limit of "
                f"{self._max_value_size} bytes per call"
            )
        return data, blobs

    def write_output(self, thread: int, stream: Stream, data: bytes) -> None:
        """(proxy) Buffer one-way output; it leaves before any later frame.

        Consecutive writes to the same thread and stream are coalesced; the buffer
        moves to the outbox when it reaches ``output_chunk_size``, when another frame
        is sent, or when the driver calls ``flush_output``.
        """
        self._require_role(Role.PROXY, "write_output")
        self._check_usable()
        if not data:
            return
        last = self._output[-1] if self._output else None
        if last is not None and last.thread == thread and last.stream == stream:
            last.data += data
        else:
            self._output.append(_PendingOutput(thread, stream, bytearray(data)))
        self._output_size += len(data)
        if self._output_size >= self.limits.output_chunk_size:
            self.flush_output()

    def flush_output(self) -> None:
        """Move buffered output into the outbox, in order."""
        for item in self._output:
            self._outbox.append(
                pb.Frame(
                    output=pb.Output(
                        thread=item.thread,
                        stream=int(item.stream),  # type: ignore[arg-type]
                        data=bytes(item.data),
                    )
                )
            )
        self._output.clear()
        self._output_size = 0

    def abandon_thread(self, thread: int) -> list[int]:
        """(client) Give up on every call in flight on ``thread``; return their ids.

        The outermost entry call is cancelled on the proxy. Later frames for the
        thread are tolerated: results are dropped, new exit calls are refused with
        ``CANCELLED``, and the exit calls the thread was serving are answered with
        ``CANCELLED`` as the calls nested in them finish, so the proxy's worker
        unwinds; exit calls on top of the stack (the client gave up while serving one,
        with no call of its own nested in it: an asyncio task cancelled in an async exit
        handler) are answered with ``CANCELLED`` at once, after the ``Cancel``. The
        thread's tag must not be used again.
        """
        self._require_role(Role.CLIENT, "abandon_thread")
        stack = self._stacks.pop(thread, [])
        self._abandoned.add(thread)
        ids = [entry.call_id for entry in stack if entry.outgoing]
        for call_id in ids:
            del self._outgoing[call_id]
            self._abandoned_calls[call_id] = thread
        if stack:
            self._abandoned_stacks[thread] = stack
        if ids and self.state is State.READY and self.error is None:
            self._emit(pb.Frame(cancel=pb.Cancel(call_id=ids[0])))
            self._answer_cancelled(stack)
        return ids

    def dispose_thread(self, thread: int) -> None:
        """(client) The client thread ``thread`` ended: tell the proxy its worker may go.

        Nothing is sent for a thread with calls in flight (it has not ended), or once the
        session is not ready; the tag must not be used again.
        """
        self._require_role(Role.CLIENT, "dispose_thread")
        if self.state is not State.READY or self.error is not None or thread <= 0:
            return
        if self._stacks.get(thread):
            return
        self._emit(pb.Frame(dispose=pb.Dispose(thread=thread)))

    def close(self, error: RemoteError | None = None) -> None:
        """End the session from this side; idempotent."""
        if self.state in (State.CLOSED, State.ERROR):
            return
        frame = pb.Close(error=_remote_error_to_pb(error)) if error else pb.Close()
        self._emit(pb.Frame(close=frame))
        self.state = State.CLOSED

    def connection_lost(self) -> None:
        """The transport is gone; the session is closed (not an error of the peer)."""
        if self.state is not State.ERROR:
            self.state = State.CLOSED
        self._output.clear()
        self._output_size = 0

    def frames_to_send(self) -> list[pb.Frame]:
        """Take the frames queued for the peer, in order (buffered output stays)."""
        frames, self._outbox = self._outbox, []
        return frames

    # -------------------------------------------------------------- peer side

    def receive(self, frames: Iterable[pb.Frame], blobs: Iterable[bytes] = ()) -> list[Event]:
        """Process frames from the peer and return the events they produce.

        ``blobs`` are the bytes of the frames' Blob frames that carry none, in order
        (the stream transport receives them out of band). Raises ``ProtocolError`` (and
        stays broken) if the peer broke the protocol.
        """
        if self.error is not None:
            raise self.error
        events: list[Event] = []
        self._oob = iter(blobs)
        for frame in frames:
            if self.state is State.CLOSED:
                break  # nothing after Close (or after we closed) matters
            try:
                self._receive_one(frame, events)
            except ProtocolError as exc:
                self.error = exc
                self.state = State.ERROR
                self._outbox.append(
                    pb.Frame(
                        close=pb.Close(
                            error=pb.Error(
                                code=int(StatusCode.INTERNAL),
                                type="ProtocolError",
                                message=str(exc),
                            )
                        )
                    )
                )
                raise
        return events

    def _receive_one(self, frame: pb.Frame, events: list[Event]) -> None:
        kind = frame.WhichOneof("kind")
        in_value = self._chunks or self._in_blob_bytes
        if in_value and kind not in ("chunk", "blob", "call", "result"):
            raise ProtocolError(f"peer sent a {kind or 'empty'} frame in the middle of a value")
        handler = self._handlers.get(kind)
        if handler is None:
            raise ProtocolError(
                f"peer sent a {kind or 'empty'} frame, which a {self.role.value} never receives"
            )
        handler(self, getattr(frame, kind), events)

    def _expect_state(self, *states: State, what: str) -> None:
        if self.state not in states:
            raise ProtocolError(f"peer sent {what} while the session is {self.state.value}")

    def _on_open(self, frame: pb.Open, events: list[Event]) -> None:
        self._expect_state(State.IDLE, what="Open")
        if frame.protocol_version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"peer speaks protocol version {frame.protocol_version}, "
                f"this proxy speaks {PROTOCOL_VERSION}"
            )
        if len(frame.files) > self.limits.max_bundle_files:
            raise ProtocolError(
                f"bundle has {len(frame.files)} files, more than the limit "
                f"of {self.limits.max_bundle_files}"
            )
        try:
            m = frame.manifest
            self._manifest = Manifest(
                name=m.name,
                entry=m.entry,
                product_id=m.product_id,
                security_version=m.security_version,
                debug=m.debug,
            )
        except BundleError as exc:
            raise ProtocolError(f"peer sent an invalid manifest: {exc}") from None
        if len(frame.nonce) > 64 or len(frame.client_nonce) > 64:
            raise ProtocolError("peer sent an oversized nonce")
        self._open_nonce = frame.nonce
        self._open_client_nonce = frame.client_nonce
        self._open_signature = (
            (frame.signature.public_key, frame.signature.signature)
            if frame.HasField("signature")
            else None
        )
        self._open_sandbox = _sandbox_from_pb(frame.sandbox) if frame.HasField("sandbox") else None
        self._files = [(f.path, f.size) for f in frame.files]
        self._bundle_size = sum(size for _, size in self._files)
        if self._bundle_size > self.limits.max_bundle_size:
            raise ProtocolError(
                f"bundle of {self._bundle_size} bytes exceeds the limit of "
                f"{self.limits.max_bundle_size}"
            )
        if frame.max_value_size:
            self._max_value_size = min(frame.max_value_size, MAX_VALUE_SIZE_CAP)
        if frame.max_depth:
            self._max_depth = min(frame.max_depth, self.limits.max_depth)
        self.state = State.RECEIVING_BUNDLE
        if self._bundle_size == 0:
            self._finish_bundle(events)

    def _on_bundle(self, frame: pb.BundleChunk, events: list[Event]) -> None:
        self._expect_state(State.RECEIVING_BUNDLE, what="a bundle chunk")
        if len(self._bundle) + len(frame.data) > self._bundle_size:
            raise ProtocolError("peer sent more bundle bytes than its Open declared")
        self._bundle += frame.data
        if len(self._bundle) == self._bundle_size:
            self._finish_bundle(events)

    def _finish_bundle(self, events: list[Event]) -> None:
        assert self._manifest is not None
        files: dict[str, bytes] = {}
        view = memoryview(self._bundle)
        offset = 0
        for path, size in self._files:
            if path in files:
                raise ProtocolError(f"peer sent bundle path {path!r} twice")
            files[path] = bytes(view[offset : offset + size])
            offset += size
        view.release()
        self._bundle = bytearray()
        try:
            bundle = Bundle(manifest=self._manifest, files=files)
        except BundleError as exc:
            raise ProtocolError(f"peer sent an invalid bundle: {exc}") from None
        self.state = State.LOADING
        events.append(
            BundleReceived(
                bundle=bundle,
                max_depth=self._max_depth,
                nonce=self._open_nonce,
                client_nonce=self._open_client_nonce,
                signature=self._open_signature,
                sandbox=self._open_sandbox,
            )
        )

    def _on_loaded(self, frame: pb.Loaded, events: list[Event]) -> None:
        self._expect_state(State.LOADING, what="Loaded")
        if frame.WhichOneof("outcome") == "error":
            events.append(LoadedReceived(error=_remote_error_from_pb(frame.error)))
            self.state = State.CLOSED
            return
        if len(frame.measurement) != 32:
            raise ProtocolError("peer sent a measurement that is not 32 bytes")
        # Nothing but Close is accepted until the client has checked the evidence and
        # called accept_evidence(): no exit call, output or result reaches anything.
        self.state = State.ATTESTING
        events.append(
            LoadedReceived(
                measurement=frame.measurement,
                evidence=frame.evidence if frame.HasField("evidence") else None,
                proxy_nonce=frame.proxy_nonce,
            )
        )

    def _decode(self, payload: bytes, what: str) -> Any:
        blobs = None
        if self._blob_part is not None:
            raise ProtocolError(f"peer sent {what} before the bytes of its blob")
        if self._in_blobs:
            blobs, self._in_blobs, self._in_blob_bytes = self._in_blobs, [], 0
        try:
            return _values.decode(payload, blobs=blobs)
        except ValueError as exc:
            raise ProtocolError(f"peer sent {what} that does not decode: {exc}") from None

    def _on_blob(self, frame: pb.Blob, events: list[Event]) -> None:
        """A large bytes value of the next Call or Result: whole from the transport
        (``receive``'s blobs), or inline, its bytes in this frame and the next ones
        (``size`` 0: more of the blob being received)."""
        self._expect_state(State.READY, what="a blob")
        size, data = frame.size, frame.data
        part = self._blob_part
        if size == 0:
            if part is None or not data:
                raise ProtocolError("peer sent more of a blob it never started")
            if len(part) + len(data) > self._blob_need:
                raise ProtocolError("peer sent more blob bytes than it declared")
            part += data
        else:
            if part is not None:
                raise ProtocolError("peer started a blob before the last one was complete")
            if len(self._chunks) + self._in_blob_bytes + size > self._max_value_size:
                raise ProtocolError(
                    f"peer sent a value larger than the limit of {self._max_value_size} bytes"
                )
            self._in_blob_bytes += size
            if not data:
                whole = next(self._oob, None)
                if whole is None:
                    raise ProtocolError("peer sent a blob frame without its bytes")
                if len(whole) != size:
                    raise ProtocolError(
                        f"peer sent a blob of {len(whole)} bytes declared as {size}"
                    )
                self._in_blobs.append(whole if type(whole) is bytes else bytes(whole))
                return
            if len(data) > size:
                raise ProtocolError("peer sent more blob bytes than it declared")
            self._blob_need = size
            part = self._blob_part = bytearray(data)
        if len(part) == self._blob_need:
            self._in_blobs.append(bytes(part))
            self._blob_part = None

    def _on_chunk(self, frame: pb.Chunk, events: list[Event]) -> None:
        self._expect_state(State.READY, what="a value chunk")
        if len(self._chunks) + self._in_blob_bytes + len(frame.data) > self._max_value_size:
            raise ProtocolError(
                f"peer sent a value larger than the limit of {self._max_value_size} bytes"
            )
        self._chunks += frame.data

    def _take_chunks(self, last: bytes) -> bytes:
        if not self._chunks:
            return last
        if len(self._chunks) + len(last) > self._max_value_size:
            raise ProtocolError(
                f"peer sent a value larger than the limit of {self._max_value_size} bytes"
            )
        self._chunks += last
        data = bytes(self._chunks)  # one copy of the whole value, not two
        self._chunks = bytearray()
        return data

    def _on_call(self, frame: pb.Call, events: list[Event]) -> None:
        self._expect_state(State.READY, what="a call")
        kind = _CALL_KINDS.get(frame.kind)
        if kind is None:
            raise ProtocolError(f"peer sent a call of unknown kind {frame.kind}")
        if kind.is_entry == (self.role is Role.CLIENT):
            raise ProtocolError(
                f"peer sent a {kind.name} call, which a {self.role.value} never receives"
            )
        decoded = self._decode(self._take_chunks(frame.args), "call arguments")
        if (
            not isinstance(decoded, list)
            or len(decoded) != 2
            or not isinstance(decoded[0], list)
            or not isinstance(decoded[1], dict)
            or (decoded[1] and not all(isinstance(k, str) for k in decoded[1]))
        ):
            raise ProtocolError("peer sent call arguments that are not [args, kwargs]")
        args, kwargs = tuple(decoded[0]), decoded[1]
        thread = frame.thread
        if frame.oneway:
            self._on_oneway(frame, kind, args, kwargs, events)
            return
        self._check_peer_id(frame.call_id)
        if thread in self._abandoned:
            # The client gave up on this thread; refuse its exit calls at once.
            self._outbox.append(
                pb.Frame(
                    result=pb.Result(
                        call_id=frame.call_id,
                        error=pb.Error(
                            code=int(StatusCode.CANCELLED),
                            type="CancelledError",
                            message="the entry call was cancelled by the client",
                        ),
                    )
                )
            )
            return
        stack = self._stacks.get(thread)
        if self.role is Role.CLIENT:
            if not stack or not stack[-1].outgoing:
                raise ProtocolError(
                    f"peer sent an exit call on thread {thread}, "
                    "which is not waiting for an entry call"
                )
        elif stack and not stack[-1].outgoing:
            raise ProtocolError(
                f"peer sent an entry call on thread {thread} while that thread is running another"
            )
        if thread == 0:
            raise ProtocolError("peer sent a call on thread 0")
        if stack and len(stack) >= self._max_depth:
            self._outbox.append(
                pb.Frame(
                    result=pb.Result(
                        call_id=frame.call_id,
                        error=pb.Error(
                            code=int(StatusCode.RESOURCE_EXHAUSTED),
                            type="RecursionError",
                            message=f"call nesting depth exceeds the limit of {self._max_depth}",
                        ),
                    )
                )
            )
            return
        stack = self._stacks.setdefault(thread, [])
        stack.append(_InFlight(frame.call_id, False, kind))
        events.append(
            CallReceived(
                thread=thread,
                call_id=frame.call_id,
                kind=kind,
                name=frame.name,
                args=args,
                kwargs=kwargs,
                depth=len(stack),
                trace=_trace_of(frame),
            )
        )

    def _on_oneway(
        self,
        frame: pb.Call,
        kind: CallKind,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        events: list[Event],
    ) -> None:
        """A one-way exit call: legal only for a thread waiting for its entry call."""
        thread = frame.thread
        if frame.call_id != 0 or kind is not CallKind.EXIT:
            raise ProtocolError("peer sent a malformed one-way call")
        if thread in self._abandoned:
            return  # the client gave up on that thread: nobody is there to serve it
        waiting = self._stacks.get(thread)
        if not waiting or not waiting[-1].outgoing:
            raise ProtocolError(
                f"peer sent a one-way call on thread {thread}, which is not waiting "
                "for an entry call"
            )
        events.append(
            CallReceived(
                thread=thread,
                call_id=0,
                kind=kind,
                name=frame.name,
                args=args,
                kwargs=kwargs,
                oneway=True,
                trace=_trace_of(frame),
            )
        )

    def _check_peer_id(self, call_id: int) -> None:
        peer_parity = 0 if self.role is Role.CLIENT else 1
        if call_id % 2 != peer_parity or call_id <= self._last_peer_id:
            raise ProtocolError(f"peer sent call id {call_id}, which is not a fresh id of its own")
        self._last_peer_id = call_id

    def _on_result(self, frame: pb.Result, events: list[Event]) -> None:
        self._expect_state(State.READY, what="a result")
        own_parity = 1 if self.role is Role.CLIENT else 0
        call_id = frame.call_id
        if call_id % 2 != own_parity or call_id >= self._next_id:
            raise ProtocolError(f"peer sent a result for call {call_id}, which was never made")
        outcome = frame.WhichOneof("outcome")
        if outcome != "value" and (self._chunks or self._in_blob_bytes):
            raise ProtocolError("peer sent value chunks followed by an error result")
        payload = self._take_chunks(frame.value)
        thread = self._outgoing.get(call_id)
        if thread is None:
            self._in_blobs, self._in_blob_bytes = [], 0  # a dropped value's blobs too
            if call_id in self._abandoned_calls:
                self._unwind_abandoned(call_id)
                return
            raise ProtocolError(
                f"peer sent a result for call {call_id}, which is not waiting for one"
            )
        stack = self._stacks[thread]
        if stack[-1].call_id != call_id:
            raise ProtocolError(
                f"peer sent the result of call {call_id} before that of "
                f"call {stack[-1].call_id} nested in it"
            )
        stack.pop()
        del self._outgoing[call_id]
        if not stack:
            del self._stacks[thread]
        if outcome == "error":
            events.append(
                ResultReceived(
                    thread=thread, call_id=call_id, error=_remote_error_from_pb(frame.error)
                )
            )
        else:
            value = self._decode(payload, "a result") if outcome == "value" else None
            events.append(ResultReceived(thread=thread, call_id=call_id, value=value))

    def _unwind_abandoned(self, call_id: int) -> None:
        """A late result of an abandoned call: answer the exit calls it was nested in."""
        thread = self._abandoned_calls.pop(call_id)
        stack = self._abandoned_stacks.get(thread, [])
        index = next((i for i, e in enumerate(stack) if e.call_id == call_id and e.outgoing), None)
        if index is not None:
            del stack[index:]
        self._answer_cancelled(stack)
        if not stack:
            self._abandoned_stacks.pop(thread, None)

    def _answer_cancelled(self, stack: list[_InFlight]) -> None:
        """Answer the peer's calls on top of an abandoned ``stack`` with ``CANCELLED``."""
        while stack and not stack[-1].outgoing:
            entry = stack.pop()
            error = RemoteError(
                code=StatusCode.CANCELLED,
                type="CancelledError",
                message="the entry call was cancelled by the client",
            )
            self._emit(
                pb.Frame(result=pb.Result(call_id=entry.call_id, error=_remote_error_to_pb(error)))
            )

    def _on_output(self, frame: pb.Output, events: list[Event]) -> None:
        self._expect_state(State.READY, what="output")
        try:
            stream = Stream(frame.stream)
        except ValueError:
            raise ProtocolError(f"peer sent output for unknown stream {frame.stream}") from None
        events.append(OutputReceived(thread=frame.thread, stream=stream, data=frame.data))

    def _on_cancel(self, frame: pb.Cancel, events: list[Event]) -> None:
        self._expect_state(State.READY, what="a cancel")
        for thread, stack in self._stacks.items():
            if stack[0].call_id == frame.call_id and not stack[0].outgoing:
                events.append(CancelReceived(thread=thread, call_id=frame.call_id))
                return
        # The call may have finished while the cancel was on its way: nothing to do.

    def _on_dispose(self, frame: pb.Dispose, events: list[Event]) -> None:
        self._expect_state(State.READY, what="a dispose")
        if frame.thread == 0:
            raise ProtocolError("peer disposed of thread 0, the session itself")
        events.append(DisposeReceived(thread=frame.thread))

    def _on_close(self, frame: pb.Close, events: list[Event]) -> None:
        error = _remote_error_from_pb(frame.error) if frame.HasField("error") else None
        self.closed_by_peer = error
        self.state = State.CLOSED
        events.append(CloseReceived(error=error))

    def _require_role(self, role: Role, what: str) -> None:
        if self.role is not role:
            raise RuntimeError(f"{what}() is for the {role.value} side")


_HANDLERS: dict[tuple[Role, str | None], Any] = {
    (Role.PROXY, "open"): SessionCore._on_open,
    (Role.PROXY, "bundle"): SessionCore._on_bundle,
    (Role.CLIENT, "loaded"): SessionCore._on_loaded,
    (Role.CLIENT, "call"): SessionCore._on_call,
    (Role.PROXY, "call"): SessionCore._on_call,
    (Role.CLIENT, "result"): SessionCore._on_result,
    (Role.PROXY, "result"): SessionCore._on_result,
    (Role.CLIENT, "output"): SessionCore._on_output,
    (Role.PROXY, "cancel"): SessionCore._on_cancel,
    (Role.PROXY, "dispose"): SessionCore._on_dispose,
    (Role.CLIENT, "chunk"): SessionCore._on_chunk,
    (Role.PROXY, "chunk"): SessionCore._on_chunk,
    (Role.CLIENT, "blob"): SessionCore._on_blob,
    (Role.PROXY, "blob"): SessionCore._on_blob,
    (Role.CLIENT, "close"): SessionCore._on_close,
    (Role.PROXY, "close"): SessionCore._on_close,
}
"""The transition table: which frames each role accepts (states are checked inside)."""

_ROLE_HANDLERS = {
    role: {kind: handler for (side, kind), handler in _HANDLERS.items() if side is role}
    for role in Role
}
"""``_HANDLERS`` by role, then frame kind (what ``_receive_one`` looks up per frame)."""
