"""Opening a session: provision a proxy, send the bundle, attest, then initialize.

The order is the security argument: the client sends its bundle and a fresh nonce,
the proxy answers with evidence, and only once that evidence verifies against the
client's policy does the client send anything else (the ``EnclaveConfig``, any
input) or accept anything from the proxy but its evidence: until then the session
core refuses every exit call, output and result (``SessionCore.accept_evidence``),
so nothing reaches the client's handlers, files or terminal. The proxy runs no
enclave code before the client's ``initialize`` call. Whatever fails on the way
leaves nothing running.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._errors import AttestationError, EnclaveCallError, EnclaveError, EnclaveLoadError
from ..attestation.bundle import BundleError
from ..attestation.bundle_files import load_bundle
from ..attestation.evidence import AttestationPolicy, channel_binding, verify_session_evidence
from ..attestation.identity import EnclaveIdentity
from ..metrics import client as client_metrics
from ..metrics.frames import CountingSender, counting_sink
from ..protocol import CallKind, Limits, LoadedReceived, RemoteError, Role, SessionCore
from ..provision.base import ProxyLease
from ..transport import factory
from ..transport.endpoint import Endpoint
from ._client import EnclaveClient
from ._config import EnclaveLoadConfig
from ._exits import ExitHandlers

__all__ = ["Opening", "client_error", "open_session"]


def client_error(exc: BaseException) -> RemoteError:
    """How an exit handler's exception crosses to the enclave (never with a traceback)."""
    return RemoteError.from_exception(exc, debug=False)


def _policy(load_config: EnclaveLoadConfig, sent: bytes, lease: ProxyLease) -> AttestationPolicy:
    """The client's policy; None means exactly the bundle sent, debug as asked. Either way
    the platform keys the provisioner itself vouches for are trusted too."""
    remote = load_config.remote_load_config
    policy = remote.proxy_config.policy
    if policy is None:
        policy = AttestationPolicy(measurements=(sent,), allow_debug=remote.sim_load_config.debug)
    return policy.with_platform_keys(lease.platform_keys)


def _attest(
    load_config: EnclaveLoadConfig,
    sent: bytes,
    loaded: LoadedReceived,
    lease: ProxyLease,
    nonce: bytes,
    client_nonce: bytes,
) -> EnclaveIdentity:
    """Verify the proxy's evidence before anything else is sent; ``AttestationError`` if not."""
    binding = channel_binding(
        tls_public_key=lease.tls_public_key,
        client_nonce=client_nonce,
        proxy_nonce=loaded.proxy_nonce,
    )
    try:
        return verify_session_evidence(
            loaded.evidence,
            _policy(load_config, sent, lease),
            nonce=nonce,
            binding=binding,
            sent=sent,
            reported=loaded.measurement,
        )
    except AttestationError as exc:
        counters = client_metrics.COUNTERS
        if counters is not None:
            counters.attestation_failed(exc.check or "evidence")
        raise


class Opening:
    """The steps of opening a session that do not depend on how its frames move.

    The sync client (``open_session``, on its endpoint's threads) and ``farside.aio``
    (on an event loop) run them in the same order, so the security argument of the
    module docstring is written once: ``__init__`` reads the bundle and opens the
    files root, ``provision`` gets a proxy, ``send_open`` queues the bundle and the
    nonces on the core, ``verify`` checks the proxy's answer (nothing else is accepted
    before ``core.accept_evidence()``), ``initialize_args`` is what the ``INITIALIZE``
    call carries, and ``failed``/``release`` clean up. Everything here may block (files,
    process starts, signatures): an event loop runs it off the loop.
    """

    def __init__(self, load_config: EnclaveLoadConfig) -> None:
        self.load_config = load_config
        remote = load_config.remote_load_config
        self.proxy_config = remote.proxy_config
        self.sim = remote.sim_load_config
        self.provisioner = self.proxy_config.provision
        try:
            self.bundle = load_bundle(self.sim.enclave_path, debug=self.sim.debug)
        except BundleError as exc:
            raise EnclaveLoadError(str(exc)) from exc
        root = Path(load_config.files_root) if load_config.files_root is not None else None
        if root is not None and not root.is_dir():
            raise EnclaveLoadError(f"files_root {str(root)!r} is not a directory")
        try:
            self.exits = ExitHandlers(
                root,
                dict(load_config.exit_handlers),
                max_open_files=load_config.max_open_files,
                files_readonly=load_config.files_root_readonly,
                stdin=load_config.stdin,
            )
        except OSError as exc:  # the root went away, or we may not open it
            raise EnclaveLoadError(f"files_root {str(root)!r} cannot be opened: {exc}") from exc
        self.lease: ProxyLease | None = None
        self._nonce = self._client_nonce = b""

    def provision(self) -> ProxyLease:
        """Get a proxy from the provisioner (closing the files root if that fails)."""
        timeout = self.proxy_config.load_timeout
        try:
            self.lease = self.provisioner.provision(name=self.load_config.name, timeout=timeout)
        except EnclaveError:
            self.exits.files.close_all()
            raise
        except BaseException as exc:
            self.exits.files.close_all()
            if not isinstance(exc, Exception):
                raise
            raise EnclaveLoadError(
                f"provisioning a proxy with {self.provisioner!r} failed: {exc}"
            ) from exc
        return self.lease

    def new_core(self) -> SessionCore:
        """The client's session core, with the limits the load config asks for."""
        return SessionCore(
            Role.CLIENT,
            limits=Limits(
                max_depth=self.proxy_config.max_depth,
                max_value_size=self.proxy_config.max_value_size,
            ),
        )

    def send_open(self, core: SessionCore) -> None:
        """Queue the bundle and two fresh nonces on ``core`` (under its driver's lock)."""
        self._nonce, self._client_nonce = os.urandom(32), os.urandom(32)
        signature = self.bundle.signature
        core.open(
            self.bundle,
            nonce=self._nonce,
            client_nonce=self._client_nonce,
            signature=(signature.public_key, signature.signature) if signature else None,
            sandbox=self.proxy_config.sandbox,
        )

    def verify(self, loaded: LoadedReceived) -> EnclaveIdentity:
        """The proxy's answer to the bundle: its identity if the evidence verifies.

        ``EnclaveLoadError`` if the bundle did not load, ``AttestationError`` if the
        evidence does not satisfy the policy. Only after this may the driver call
        ``core.accept_evidence()``.
        """
        if loaded.error is not None:
            detail = f"{loaded.error.type}: {loaded.error.message}"
            if loaded.error.traceback:
                detail += "\n" + loaded.error.traceback.rstrip()
            raise EnclaveLoadError(
                f"the enclave bundle {str(self.sim.enclave_path)!r} failed to load: {detail}",
                code=loaded.error.code,
            )
        assert self.lease is not None, "verify() comes after provision()"
        return _attest(
            self.load_config,
            self.bundle.measurement(),
            loaded,
            self.lease,
            self._nonce,
            self._client_nonce,
        )

    def initialize_args(self) -> tuple[Any, ...]:
        """The arguments of the ``INITIALIZE`` call (the enclave's configuration)."""
        return (self.load_config.config.to_wire(),)

    def not_started(self, exc: EnclaveCallError) -> EnclaveLoadError:
        """The error for an ``INITIALIZE`` call that failed (the import, or ``initialize``)."""
        return EnclaveLoadError(
            f"the enclave bundle {str(self.sim.enclave_path)!r} did not start: {exc}",
            code=exc.code,
        )

    def failed(self, exc: BaseException) -> BaseException:
        """What loading raises for ``exc``: any farside error becomes an ``EnclaveLoadError``."""
        if isinstance(exc, EnclaveError) and not isinstance(exc, EnclaveLoadError):
            error = EnclaveLoadError(
                f"loading enclave {self.load_config.name!r} failed: {exc}", code=exc.code
            )
            error.__cause__ = exc
            return error
        return exc

    def release(self) -> None:
        """Give the proxy back and close the files root (after a failure, or the end)."""
        if self.lease is not None:
            self.provisioner.release(self.lease)
        self.exits.files.close_all()


def open_session(
    load_config: EnclaveLoadConfig, on_destroyed: Callable[[EnclaveClient], None]
) -> EnclaveClient:
    """Load ``load_config``'s enclave and return its client (see the module docstring)."""
    opening = Opening(load_config)
    lease = opening.provision()
    exits = opening.exits
    try:
        transport = factory.connect(
            lease.transport, lease.address, token=lease.token, tls=lease.tls
        )
    except BaseException:
        opening.release()
        raise
    core = opening.new_core()
    counters = client_metrics.COUNTERS  # opted in (farside.metrics.enable): count the bytes
    sender = transport if counters is None else CountingSender(transport, counters.add_sent)
    endpoint = Endpoint(core, sender, exits, error_from_exception=client_error)
    sink = (
        endpoint.feed if counters is None else counting_sink(endpoint.feed, counters.add_received)
    )
    load_timeout = opening.proxy_config.load_timeout
    try:
        transport.start(sink, endpoint.fail)
        endpoint.run_locked(opening.send_open)
        identity = opening.verify(endpoint.wait_loaded(load_timeout))
        endpoint.run_locked(lambda c: c.accept_evidence())  # only now may the proxy reach us
        try:
            endpoint.call(
                1, CallKind.INITIALIZE, "", opening.initialize_args(), timeout=load_timeout
            )
        except EnclaveCallError as exc:  # importing the bundle, or its initialize()
            raise opening.not_started(exc) from exc
    except BaseException as exc:
        with contextlib.suppress(EnclaveError):
            endpoint.run_locked(lambda c: c.close())
        transport.close(timeout=1.0)
        endpoint.fail(EnclaveLoadError("the enclave failed to load"))
        opening.release()
        error = opening.failed(exc)
        if error is exc:
            raise
        raise error from exc
    return EnclaveClient(
        name=load_config.name,
        endpoint=endpoint,
        transport=transport,
        lease=lease,
        provisioner=opening.provisioner,
        exits=exits,
        identity=identity,
        debug=opening.sim.debug,
        on_destroyed=on_destroyed,
    )
