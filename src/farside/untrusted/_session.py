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

from .._errors import AttestationError, EnclaveCallError, EnclaveError, EnclaveLoadError
from ..attestation.bundle import Bundle, BundleError
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

__all__ = ["open_session"]


def _client_error(exc: BaseException) -> RemoteError:
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


def _provision(load_config: EnclaveLoadConfig) -> ProxyLease:
    provisioner = load_config.remote_load_config.proxy_config.provision
    timeout = load_config.remote_load_config.proxy_config.load_timeout
    try:
        return provisioner.provision(name=load_config.name, timeout=timeout)
    except EnclaveError:
        raise
    except Exception as exc:
        raise EnclaveLoadError(f"provisioning a proxy with {provisioner!r} failed: {exc}") from exc


def _load(
    endpoint: Endpoint, bundle: Bundle, load_config: EnclaveLoadConfig, lease: ProxyLease
) -> EnclaveIdentity:
    """Send the bundle and a nonce, wait for the proxy's answer, verify its evidence."""
    remote = load_config.remote_load_config
    proxy_config = remote.proxy_config
    nonce, client_nonce = os.urandom(32), os.urandom(32)
    signature = bundle.signature
    endpoint.run_locked(
        lambda c: c.open(
            bundle,
            nonce=nonce,
            client_nonce=client_nonce,
            signature=(signature.public_key, signature.signature) if signature else None,
            sandbox=proxy_config.sandbox,
        )
    )
    loaded = endpoint.wait_loaded(proxy_config.load_timeout)
    if loaded.error is not None:
        detail = f"{loaded.error.type}: {loaded.error.message}"
        if loaded.error.traceback:
            detail += "\n" + loaded.error.traceback.rstrip()
        raise EnclaveLoadError(
            f"the enclave bundle {str(remote.sim_load_config.enclave_path)!r} failed to load: "
            f"{detail}",
            code=loaded.error.code,
        )
    identity = _attest(load_config, bundle.measurement(), loaded, lease, nonce, client_nonce)
    endpoint.run_locked(lambda c: c.accept_evidence())  # only now may the proxy reach us
    return identity


def open_session(
    load_config: EnclaveLoadConfig, on_destroyed: Callable[[EnclaveClient], None]
) -> EnclaveClient:
    """Load ``load_config``'s enclave and return its client (see the module docstring)."""
    remote = load_config.remote_load_config
    proxy_config = remote.proxy_config
    sim = remote.sim_load_config
    try:
        bundle = load_bundle(sim.enclave_path, debug=sim.debug)
    except BundleError as exc:
        raise EnclaveLoadError(str(exc)) from exc
    root = Path(load_config.files_root) if load_config.files_root is not None else None
    if root is not None and not root.is_dir():
        raise EnclaveLoadError(f"files_root {str(root)!r} is not a directory")
    try:
        exits = ExitHandlers(
            root,
            dict(load_config.exit_handlers),
            max_open_files=load_config.max_open_files,
            files_readonly=load_config.files_root_readonly,
            stdin=load_config.stdin,
        )
    except OSError as exc:  # the root went away, or we may not open it
        raise EnclaveLoadError(f"files_root {str(root)!r} cannot be opened: {exc}") from exc
    provisioner = proxy_config.provision
    try:
        lease = _provision(load_config)
    except BaseException:
        exits.files.close_all()
        raise
    try:
        transport = factory.connect(
            lease.transport, lease.address, token=lease.token, tls=lease.tls
        )
    except BaseException:
        provisioner.release(lease)
        exits.files.close_all()
        raise
    core = SessionCore(
        Role.CLIENT,
        limits=Limits(max_depth=proxy_config.max_depth, max_value_size=proxy_config.max_value_size),
    )
    counters = client_metrics.COUNTERS  # opted in (farside.metrics.enable): count the bytes
    sender = transport if counters is None else CountingSender(transport, counters.add_sent)
    endpoint = Endpoint(core, sender, exits, error_from_exception=_client_error)
    sink = (
        endpoint.feed if counters is None else counting_sink(endpoint.feed, counters.add_received)
    )
    try:
        transport.start(sink, endpoint.fail)
        identity = _load(endpoint, bundle, load_config, lease)
        try:
            endpoint.call(
                1,
                CallKind.INITIALIZE,
                "",
                (load_config.config.to_wire(),),
                timeout=proxy_config.load_timeout,
            )
        except EnclaveCallError as exc:  # importing the bundle, or its initialize()
            raise EnclaveLoadError(
                f"the enclave bundle {str(sim.enclave_path)!r} did not start: {exc}",
                code=exc.code,
            ) from exc
    except BaseException as exc:
        with contextlib.suppress(EnclaveError):
            endpoint.run_locked(lambda c: c.close())
        transport.close(timeout=1.0)
        endpoint.fail(EnclaveLoadError("the enclave failed to load"))
        provisioner.release(lease)
        exits.files.close_all()
        if isinstance(exc, EnclaveError) and not isinstance(exc, EnclaveLoadError):
            raise EnclaveLoadError(
                f"loading enclave {load_config.name!r} failed: {exc}", code=exc.code
            ) from exc
        raise
    return EnclaveClient(
        name=load_config.name,
        endpoint=endpoint,
        transport=transport,
        lease=lease,
        provisioner=provisioner,
        exits=exits,
        identity=identity,
        debug=sim.debug,
        on_destroyed=on_destroyed,
    )
