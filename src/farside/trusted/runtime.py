"""The trusted runtime: runs one enclave's code inside the proxy process.

It loads the bundle it received, builds the ``TrustedApplication``, serves the
client's entry calls on one worker thread per client thread, and gives enclave
code its ways out (``host``, ``print``, ``input``, its file system), all as exit
calls over the session. It owns the process-wide redirection of ``sys.stdout``,
``sys.stderr``, ``sys.stdin``, the file functions (``_redirect``: the enclave's
view of the client's files, ``_fsview``) and ``os.environ`` (from ``initialize``
on, exactly the ``EnclaveConfig``'s environment), which is why a proxy hosts
exactly one enclave.

This module is the proxy's (``farside.proxy`` builds an ``EnclaveRuntime`` per
session); enclave code uses ``farside.trusted``'s names, not this module.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from .. import tracing
from .._config import EnclaveConfig, SandboxConfig
from .._errors import EnclaveError, HostCallError, StatusCode
from ..attestation.attester import Attester, KeyAttester
from ..attestation.bundle import Bundle, measure_bundle
from ..attestation.evidence import channel_binding, report_data
from ..attestation.identity import UNSIGNED, EnclaveIdentity, SealingKeys, verify_signature
from ..metrics.counters import NAME, OTHER, ProxyCounters
from ..protocol import (
    BundleReceived,
    CallKind,
    CallReceived,
    CancelReceived,
    CloseReceived,
    DisposeReceived,
    Event,
    RemoteError,
    Stream,
)
from ..transport.endpoint import Endpoint
from . import _redirect
from ._app import TrustedApplication, is_ecall
from ._files import open_file
from ._fsrule import interpreter_paths
from ._fsvalues import Mount
from ._fsview import EnclaveFiles
from ._loader import load_package

__all__ = ["EnclaveRuntime", "current_runtime"]

_local = threading.local()
_current: EnclaveRuntime | None = None
_CONTROL = {CallKind.RUN: "run", CallKind.INITIALIZE: "initialize", CallKind.FINALIZE: "finalize"}

MAX_STDIN_READ = 2**20  # bytes of the client's standard input per exit call


def current_runtime() -> EnclaveRuntime:
    """The runtime of the enclave this process hosts; fails outside an enclave."""
    if _current is None:
        raise RuntimeError("farside.trusted.host works only inside an enclave run by a proxy")
    return _current


class _OutputRaw(io.RawIOBase):
    """``sys.stdout``/``sys.stderr`` of the enclave: bytes become one-way output frames."""

    def __init__(self, runtime: EnclaveRuntime, stream: Stream) -> None:
        super().__init__()
        self._runtime = runtime
        self._stream = stream

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._runtime.write_output(self._stream, chunk)
        return len(chunk)


class _InputRaw(io.RawIOBase):
    """``sys.stdin`` of the enclave: reads are exit calls for the client's standard input."""

    def __init__(self, runtime: EnclaveRuntime) -> None:
        super().__init__()
        self._runtime = runtime

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._runtime.read_stdin(len(view))
        view[: len(data)] = data
        return len(data)


class EnclaveRuntime:
    """Serves one session's entry calls; the endpoint's handler on the proxy side."""

    def __init__(
        self,
        *,
        attester: Attester | None = None,
        tls_public_key: bytes = b"",
        max_workers: int = 256,
        worker_idle_timeout: float = 30.0,
        confine: Callable[[SandboxConfig | None], tuple[str, ...]] | None = None,
        counters: ProxyCounters | None = None,
    ) -> None:
        # Confines the process and the calling thread before enclave code runs; returns
        # the layers applied (they go into the evidence). None: no sandbox (tests).
        self._confine = confine
        # Counts entry and exit calls when the proxy reports metrics; None: nothing is.
        self.counters = counters
        self._thread_starts: queue.SimpleQueue[tuple[Callable[[], None], str]] = queue.SimpleQueue()
        self.max_workers = max_workers  # enclave worker threads at once (one per client thread)
        self.worker_idle_timeout = worker_idle_timeout  # an idle worker exits after this
        self.workers = 0
        # Makes this session's evidence and sealing keys; None: a throwaway key (tests).
        self._attester: Attester = attester if attester is not None else KeyAttester(None)
        self.tls_public_key = tls_public_key  # DER SubjectPublicKeyInfo of our TLS key, if any
        self._sealing_keys: SealingKeys | None = None
        self._sealing_unavailable = ""  # why this platform cannot seal at all (hardware)
        self.identity: EnclaveIdentity | None = None  # set once the bundle is loaded
        self.calls_served = 0
        self._calls_lock = threading.Lock()
        self.endpoint: Endpoint | None = None
        self.files: EnclaveFiles | None = None  # the enclave's file system, from initialize
        self.app: TrustedApplication | None = None
        self.bundle: Bundle | None = None
        self.measurement = b""
        self.debug = False
        self.initializing = False  # the initialize call arrived (it runs at most once)
        self.initialized = False
        self.finalized = False
        self.ended = threading.Event()
        self.close_received = False
        self._cancelled: set[int] = set()

    # ------------------------------------------------------------- setup

    def install(self, endpoint: Endpoint) -> None:
        """Bind to the session's endpoint and take over this process's standard streams
        and file functions (the latter only act differently on threads running enclave
        code: ``_redirect``)."""
        global _current  # noqa: PLW0603 (one enclave per process, by design)
        self.endpoint = endpoint
        _current = self
        sys.stdout = io.TextIOWrapper(
            _OutputRaw(self, Stream.STDOUT),
            encoding="utf-8",
            errors="backslashreplace",
            write_through=True,
        )
        sys.stderr = io.TextIOWrapper(
            _OutputRaw(self, Stream.STDERR),
            encoding="utf-8",
            errors="backslashreplace",
            write_through=True,
        )
        sys.stdin = io.TextIOWrapper(io.BufferedReader(_InputRaw(self)), encoding="utf-8")
        _redirect.install()

    def _endpoint(self) -> Endpoint:
        assert self.endpoint is not None
        return self.endpoint

    def _attest(self, event: BundleReceived, sandbox: tuple[str, ...]) -> tuple[Any, bytes]:
        """Measure the bundle, check its signature, register the identity, make evidence.

        Runs before any enclave code: the identity the attester vouches for is the one
        measured here, and enclave code cannot register another.
        """
        bundle = event.bundle
        self.measurement = measure_bundle(bundle)
        signer = UNSIGNED
        if event.signature is not None:
            signer = verify_signature(self.measurement, *event.signature)
        manifest = bundle.manifest
        self.identity = EnclaveIdentity(
            measurement=self.measurement,
            signer=signer,
            product_id=manifest.product_id,
            security_version=manifest.security_version,
            debug=manifest.debug,
        )
        self._attester.register(self.identity, sandbox)
        proxy_nonce = os.urandom(32)
        binding = channel_binding(
            tls_public_key=self.tls_public_key,
            client_nonce=event.client_nonce,
            proxy_nonce=proxy_nonce,
        )
        evidence = self._attester.evidence(report_data(event.nonce, binding))
        try:
            self._sealing_keys = self._attester.sealing_keys()
        except NotImplementedError as exc:  # a hardware attester: no farside sealing there
            self._sealing_unavailable = str(exc)
        self._attester.close()  # enclave code must hold no way to the platform
        return evidence, proxy_nonce

    def _start_enclave_home(self, event: BundleReceived) -> None:
        """Load the bundle on the thread every thread that runs enclave code descends from.

        That thread confines itself first (Landlock binds a thread and its future
        children, not its siblings), then signs the evidence naming the layers in force,
        then runs the bundle's code, then starts the enclave's worker threads on request.
        """
        threading.Thread(
            target=self._enclave_home, args=(event,), daemon=True, name="farside-enclave"
        ).start()

    def _enclave_home(self, event: BundleReceived) -> None:
        try:
            loaded = self._load(event)
        except EnclaveError:  # the session ended while loading: the proxy shuts down
            return
        if not loaded:
            return
        while True:
            target, name = self._thread_starts.get()
            try:
                threading.Thread(target=target, daemon=True, name=name).start()
            except RuntimeError as exc:  # "can't start new thread": out of memory or threads
                # A call would wait forever for a worker that never comes: end the session.
                self._endpoint().fail(
                    EnclaveError(
                        f"the proxy cannot start an enclave thread: {exc}",
                        code=StatusCode.RESOURCE_EXHAUSTED,
                    )
                )
                self.ended.set()
                return

    def start_enclave_thread(self, target: Callable[[], None], name: str) -> None:
        """Start ``target`` on a thread inside the sandbox (a descendant of the enclave home)."""
        self._thread_starts.put((target, name))

    def _refuse_load(self, error: RemoteError) -> bool:
        self._endpoint().run_locked(lambda core: core.loaded(error=error))
        self.ended.set()
        return False

    def _load(self, event: BundleReceived) -> bool:
        """Confine, measure and attest; answer ``Loaded``. True if it did.

        No code of the bundle runs here: it is imported by the client's ``initialize``
        call, which comes only once the client has accepted the evidence.
        """
        bundle = event.bundle
        self.bundle = bundle
        self.debug = bundle.manifest.debug
        try:
            layers = self._confine(event.sandbox) if self._confine is not None else ()
        except Exception as exc:  # a strict sandbox that lacks a layer, or a failing layer
            return self._refuse_load(
                RemoteError(
                    code=StatusCode.FAILED_PRECONDITION,
                    type=type(exc).__name__,
                    message=f"the proxy's sandbox: {exc}",
                )
            )
        try:
            evidence, proxy_nonce = self._attest(event, layers)
        except ValueError as exc:  # a bad bundle signature
            return self._refuse_load(
                RemoteError(code=StatusCode.PERMISSION_DENIED, type="BundleError", message=str(exc))
            )
        except Exception as exc:  # the platform agent is gone or refused
            return self._refuse_load(
                RemoteError(
                    code=StatusCode.UNAVAILABLE,
                    type=type(exc).__name__,
                    message=f"the proxy cannot attest: {exc}",
                )
            )
        self._endpoint().run_locked(
            lambda core: core.loaded(self.measurement, evidence=evidence, proxy_nonce=proxy_nonce)
        )
        return True

    def _build_app(self) -> TrustedApplication:
        """Import the bundle and build its ``TrustedApplication`` (the enclave's code runs)."""
        bundle = self.bundle
        assert bundle is not None
        module = load_package(bundle)
        build = getattr(module, "build_trusted_application", None)
        if not callable(build):
            raise LookupError(
                f"the bundle {bundle.manifest.entry!r} defines no "
                "build_trusted_application() function"
            )
        app = build()
        if not isinstance(app, TrustedApplication):
            raise TypeError(
                f"build_trusted_application() returned {type(app).__name__}, "
                "not a TrustedApplication"
            )
        if self.counters is not None:  # the measured bundle's entry points label the calls
            self.counters.set_entry_points(_ecall_names(app))
        return app

    # ------------------------------------------------------------- Handler

    def handle_event(self, event: Event) -> None:
        """Events not bound for a waiting thread (the endpoint's reader calls this)."""
        if isinstance(event, BundleReceived):
            self._start_enclave_home(event)
        elif isinstance(event, CancelReceived):
            self._cancelled.add(event.thread)
        elif isinstance(event, DisposeReceived):
            pass  # the endpoint tells the worker; _work forgets the thread as it exits
        elif isinstance(event, CloseReceived):
            self.close_received = True
            self.ended.set()

    def start_thread(self, thread: int, kind: CallKind) -> bool:
        """Start the enclave worker that serves client thread ``thread``, if one may start.

        ``finalize`` (and ``initialize``) always get a worker: destroying an enclave
        must not depend on how busy it is.
        """
        with self._calls_lock:
            control = kind in (CallKind.INITIALIZE, CallKind.FINALIZE)
            if self.workers >= self.max_workers and not control:
                return False
            self.workers += 1
        self.start_enclave_thread(
            lambda: self._work(thread), name=f"farside-enclave-worker-{thread}"
        )
        return True

    def _work(self, thread: int) -> None:
        _local.thread = thread
        try:
            with contextlib.suppress(EnclaveError):  # the session ended: the proxy shuts down
                self._endpoint().serve(thread, idle_timeout=self.worker_idle_timeout)
        finally:
            with self._calls_lock:
                self.workers -= 1
                self._cancelled.discard(thread)

    def cancelled(self) -> bool:
        """True if the client cancelled the entry call this thread is running."""
        return getattr(_local, "thread", None) in self._cancelled

    def handle_call(self, event: CallReceived) -> Any:
        """Run one entry call on the current (worker) thread (counted and traced if asked)."""
        counters, tracer = self.counters, tracing.TRACER
        if counters is None and tracer is None:
            return self._run_call(event)
        label = _CONTROL.get(event.kind)
        if counters is not None:
            label = counters.entry_label(label, event.name)
        elif label is None:
            label = event.name if NAME.fullmatch(event.name) else OTHER
        outcome = "error"
        start = time.perf_counter()
        try:
            if tracer is None:
                value = self._run_call(event)
            else:
                with tracer.server_span(tracing.ENTRY_SERVICE, label, event.trace):
                    value = self._run_call(event)
            outcome = "ok"
            return value
        finally:
            if counters is not None:
                if event.thread in self._cancelled:
                    outcome = "cancelled"
                counters.record_call(label, outcome, time.perf_counter() - start)

    def _run_call(self, event: CallReceived) -> Any:
        with self._calls_lock:
            self.calls_served += 1
        kind, args = event.kind, event.args
        if kind is CallKind.INITIALIZE:
            with self._calls_lock:
                if self.initializing:
                    raise EnclaveError(
                        "initialize() already ran", code=StatusCode.FAILED_PRECONDITION
                    )
                self.initializing = True
            config = EnclaveConfig.from_wire(*args)
            # The enclave's environment is its configuration's, nothing of this host's
            # (the proxy read what it needs of its own before any enclave code).
            os.environ.clear()
            os.environ.update(config.environment)
            self.files = self._client_files()
            previous = _redirect.enter(self.files)
            try:
                self.app = self._build_app()
                self.app.initialize(config)
            finally:
                _redirect.leave(previous)
            self.initialized = True
            return None
        app = self.app
        if app is None or not self.initialized or self.finalized:
            raise EnclaveError(
                "the enclave is not initialized, or already finalized",
                code=StatusCode.FAILED_PRECONDITION,
            )
        method: Callable[..., Any]
        if kind is CallKind.RUN:
            method = app.run
        elif kind is CallKind.FINALIZE:
            self.finalized = True
            method = app.finalize
        else:
            found = None if event.name.startswith("_") else getattr(app, event.name, None)
            if found is None or not is_ecall(found):
                names = sorted(_ecall_names(app))
                raise EnclaveError(
                    f"the enclave has no entry point named {event.name!r} "
                    f"(its @ecall entry points: {', '.join(names) or 'none'})",
                    code=StatusCode.NOT_FOUND,
                )
            method = found
        previous = _redirect.enter(self.files)
        try:
            result = method(*args, **event.kwargs)
        finally:
            _redirect.leave(previous)
        return None if kind is CallKind.FINALIZE else result

    def _client_files(self) -> EnclaveFiles:
        """Ask the client how it presents its files (one exit call), and make the view."""
        mount = Mount.from_client(self.exit_call("farside.client.describe", (), {}))
        return EnclaveFiles(
            self._fs_call,
            mount,
            interpreter_paths(),
            read_stdin=self.read_stdin,
            write_output=lambda fd, data: self.write_output(
                Stream.STDOUT if fd == 1 else Stream.STDERR, data
            ),
        )

    @property
    def sealing_keys(self) -> SealingKeys:
        """This enclave's sealing keys; ``RuntimeError`` if the proxy has no platform key,
        ``NotImplementedError`` (a ``RuntimeError``) under a hardware attester."""
        if self._sealing_unavailable:
            raise NotImplementedError(self._sealing_unavailable)
        if self._sealing_keys is None:
            raise RuntimeError("this proxy has no platform identity, so it cannot seal")
        return self._sealing_keys

    def error_from_exception(self, exc: BaseException) -> RemoteError:
        """Endpoint hook: describe an exception for the client (a debug enclave's
        ``SyntaxError`` shows the offending line, not the importer's frames)."""
        error = RemoteError.from_exception(exc, debug=self.debug)
        if isinstance(exc, SyntaxError) and self.debug:
            only = "".join(traceback.format_exception_only(exc))
            error = RemoteError(
                code=error.code, type=error.type, message=error.message, traceback=only
            )
        return error

    # ------------------------------------------------------------- ways out

    def _thread(self) -> int:
        thread: int | None = getattr(_local, "thread", None)
        if thread is None:
            raise RuntimeError(
                "exit calls can be made only from the thread running an "
                "entry call, not from threads the enclave started"
            )
        return thread

    def exit_call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call the client's exit handler ``name`` and return its result.

        Raises ``HostCallError`` (code ``CANCELLED``) at once if the client cancelled
        the entry call this thread runs: nobody waits for the answer any more.
        """
        thread = self._thread()
        if thread in self._cancelled:
            raise HostCallError(
                "the entry call was cancelled by the client",
                remote_type="CancelledError",
                code=StatusCode.CANCELLED,
            )
        if self.counters is not None:
            self.counters.record_exit(name)
        previous = _redirect.enter(None)  # farside's own machinery sees the real files
        try:
            tracer = tracing.TRACER
            if tracer is None:
                return self._endpoint().call(thread, CallKind.EXIT, name, args, kwargs)
            with tracer.client_span(tracing.EXIT_SERVICE, _span_name(name)) as trace:
                return self._endpoint().call(thread, CallKind.EXIT, name, args, kwargs, trace=trace)
        finally:
            _redirect.leave(previous)

    def notify(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """One-way exit call: no result, no waiting; only from a thread running an entry
        call (the client serves it on the thread waiting for that call)."""
        thread = self._thread()
        if self.counters is not None:
            self.counters.record_exit(name)
        previous = _redirect.enter(None)
        try:
            tracer = tracing.TRACER
            if tracer is None:
                self._endpoint().notify(thread, name, args, kwargs)
                return
            with tracer.client_span(tracing.EXIT_SERVICE, _span_name(name)) as trace:
                self._endpoint().notify(thread, name, args, kwargs, trace=trace)
        finally:
            _redirect.leave(previous)

    def write_output(self, stream: Stream, data: bytes) -> None:
        """Queue stdout/stderr bytes for the client."""
        endpoint = self.endpoint
        if endpoint is not None:
            endpoint.write_output(getattr(_local, "thread", 0), stream, data)

    def _fs_call(self, name: str, *args: Any) -> Any:
        """An exit call of the enclave's file system; failures of the call itself are
        ``OSError``s, except cancellation and a lost session, which must not be mistaken
        for a missing file (``os.path.exists`` swallows ``OSError``)."""
        if getattr(_local, "thread", None) is None:
            raise PermissionError(
                errno.EPERM,
                "the client's files and standard input can be reached only from the thread "
                "running an entry call, not from threads the enclave started",
            )
        try:
            return self.exit_call(name, args, {})
        except HostCallError as exc:
            if exc.code is StatusCode.CANCELLED:
                raise
            raise OSError(
                errno.EIO, f"the client's file service failed: {exc.remote_type}: {exc.message}"
            ) from None

    def read_stdin(self, size: int) -> bytes:
        """Up to ``size`` bytes of the client's standard input, if it gave it."""
        files = self.files
        if files is None or not files.mount.stdin:
            raise PermissionError(
                errno.EACCES,
                "the client did not give this enclave its standard input (load it with "
                "farside.load(..., stdin=True), or farside run --stdin)",
            )
        size = min(size, MAX_STDIN_READ)
        data = self._fs_call("farside.io.read_stdin", size)
        if not isinstance(data, bytes) or len(data) > size:
            raise OSError(errno.EIO, "the client returned an invalid read of its standard input")
        return data

    def open(
        self,
        file: Any,
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        """``host.open``: a file of the client's, by the enclave's file system's rule."""
        files = self.files
        if files is None:
            raise RuntimeError("the enclave's files are there once initialize() began")
        return open_file(files, file, mode, buffering, encoding, errors, newline, client_only=True)


def _ecall_names(app: TrustedApplication) -> list[str]:
    """The application's ``@ecall`` entry points (none if it will not say)."""
    try:
        return [n for n in dir(app) if not n.startswith("_") and is_ecall(getattr(app, n, None))]
    except Exception:  # enclave code: a __dir__ or a property may raise
        return []


def _span_name(name: str) -> str:
    """A span's method name: the call's name if it is of the label grammar, else other."""
    return name if NAME.fullmatch(name) else OTHER
