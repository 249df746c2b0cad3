"""``EnclaveManager`` and ``load``: loading enclaves and keeping track of them."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .._config import EnclaveConfig, SandboxConfig
from .._errors import (
    AttestationError,
    EnclaveCallError,
    EnclaveError,
    EnclaveLoadError,
    EnclaveNameError,
)
from ..attestation import BundleError, load_bundle
from ..attestation.evidence import AttestationPolicy, channel_binding, verify_evidence
from ..attestation.identity import EnclaveIdentity
from ..protocol import CallKind, Limits, LoadedReceived, RemoteError, Role, SessionCore
from ..provision import Provisioner, ProxyLease
from ..transport import Endpoint
from ..transport.grpc import GrpcClientTransport
from ..transport.stream import StreamClientTransport
from ._client import ClientTransport, EnclaveClient
from ._config import (
    EnclaveLoadConfig,
    RemoteLoadConfig,
    RemoteProxyClientConfig,
    SimLoadConfig,
)
from ._exits import DEFAULT_MAX_OPEN_FILES, ExitHandlers

__all__ = ["EnclaveManager", "load"]

log = logging.getLogger("farside")


def _client_error(exc: BaseException) -> RemoteError:
    return RemoteError.from_exception(exc, debug=False)


class EnclaveManager:
    """The process's registry of loaded enclaves (Asylo's EnclaveManager).

    There is one per process: get it with ``EnclaveManager.instance()``.
    """

    _instance: EnclaveManager | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, EnclaveClient | None] = {}  # None: being loaded

    @classmethod
    def instance(cls) -> EnclaveManager:
        """The process-wide manager."""
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
                atexit.register(cls._instance._destroy_all)
            return cls._instance

    def load_enclave(self, load_config: EnclaveLoadConfig) -> EnclaveClient:
        """Provision a proxy, load the enclave there, run its ``initialize``; return its client.

        Raises ``EnclaveLoadError`` (nothing is left running) or ``EnclaveNameError``
        if the name is in use.
        """
        if not isinstance(load_config, EnclaveLoadConfig):
            raise TypeError("load_enclave takes an EnclaveLoadConfig")
        name = load_config.name
        with self._lock:
            if name in self._clients:
                raise EnclaveNameError(
                    f"an enclave named {name!r} is already loaded; destroy "
                    "it first or choose another name"
                )
            self._clients[name] = None
        try:
            client = _open_session(load_config, on_destroyed=self._forget)
        except BaseException:
            with self._lock:
                del self._clients[name]
            raise
        with self._lock:
            self._clients[name] = client
        return client

    def get_client(self, name: str) -> EnclaveClient:
        """The client of the loaded enclave ``name``; ``EnclaveNameError`` if there is none."""
        with self._lock:
            client = self._clients.get(name)
            known = sorted(n for n, c in self._clients.items() if c is not None)
        if client is None:
            raise EnclaveNameError(
                f"no enclave named {name!r} is loaded "
                f"(loaded: {', '.join(map(repr, known)) or 'none'})"
            )
        return client

    def destroy_enclave(
        self, client: EnclaveClient, final_input: Any = None, skip_finalize: bool = False
    ) -> None:
        """Run ``finalize(final_input)`` (unless skipped) and release everything.

        Destroying an enclave that is already gone is not an error; one destroyed
        twice is a no-op. Raises ``EnclaveCallError`` if ``finalize`` raised (the
        enclave is released all the same).
        """
        if not isinstance(client, EnclaveClient):
            raise TypeError("destroy_enclave takes the EnclaveClient that load_enclave returned")
        client._destroy(final_input, skip_finalize)

    def _forget(self, client: EnclaveClient) -> None:
        with self._lock:
            if self._clients.get(client.name) is client:
                del self._clients[client.name]

    def _destroy_all(self) -> None:
        with self._lock:
            clients = [c for c in self._clients.values() if c is not None]
        for client in clients:
            try:
                self.destroy_enclave(client)
            except Exception:
                log.exception("destroying enclave %r at exit failed", client.name)


def _attest(
    load_config: EnclaveLoadConfig,
    sent: bytes,
    loaded: LoadedReceived,
    lease: ProxyLease,
    nonce: bytes,
    client_key: bytes,
) -> EnclaveIdentity:
    """Verify the proxy's evidence before anything else is sent; raise AttestationError."""
    proxy_config = load_config.remote_load_config.proxy_config
    policy = proxy_config.policy
    if policy is None:  # expect exactly the bundle we sent, debug as we asked
        debug = load_config.remote_load_config.sim_load_config.debug
        policy = AttestationPolicy(measurements=(sent,), allow_debug=debug)
    policy = policy.with_platform_keys(lease.platform_keys)
    binding = channel_binding(
        tls_public_key=lease.tls_public_key, client_key=client_key, proxy_key=loaded.proxy_key
    )
    identity = verify_evidence(loaded.evidence, policy, nonce=nonce, binding=binding)
    if identity.measurement != sent or loaded.measurement != sent:
        raise AttestationError(
            "attestation failed (measurement): the proxy loaded a different bundle than "
            f"the one sent ({identity.measurement.hex()} instead of {sent.hex()})",
            check="measurement",
        )
    return identity


def client_transport(lease: ProxyLease) -> ClientTransport:
    """The client end of the wire the lease's proxy serves."""
    if lease.transport == "stream":
        try:
            context = lease.tls.client_ssl_context() if lease.tls is not None else None
        except ValueError as exc:
            raise EnclaveLoadError(str(exc)) from exc
        return StreamClientTransport(lease.address, token=lease.token, tls=context)
    return GrpcClientTransport(lease.address, token=lease.token, credentials=lease.credentials)


def _open_session(
    load_config: EnclaveLoadConfig, on_destroyed: Callable[[EnclaveClient], None]
) -> EnclaveClient:
    remote = load_config.remote_load_config
    proxy_config = remote.proxy_config
    sim = remote.sim_load_config
    try:
        bundle = load_bundle(sim.enclave_path, debug=sim.debug)
    except BundleError as exc:
        raise EnclaveLoadError(str(exc)) from exc
    root = Path(load_config.files_root if load_config.files_root is not None else os.getcwd())
    if not root.is_dir():
        raise EnclaveLoadError(f"files_root {str(root)!r} is not a directory")
    exits = ExitHandlers(
        root, dict(load_config.exit_handlers), max_open_files=load_config.max_open_files
    )
    provisioner = proxy_config.provision
    timeout = proxy_config.load_timeout
    try:
        lease = provisioner.provision(name=load_config.name, timeout=timeout)
    except EnclaveError:
        raise
    except Exception as exc:
        raise EnclaveLoadError(f"provisioning a proxy with {provisioner!r} failed: {exc}") from exc
    transport = client_transport(lease)
    core = SessionCore(
        Role.CLIENT,
        limits=Limits(max_depth=proxy_config.max_depth, max_value_size=proxy_config.max_value_size),
    )
    endpoint = Endpoint(core, transport, exits, error_from_exception=_client_error)
    try:
        transport.start(endpoint.feed, endpoint.fail)
        nonce = os.urandom(32)
        client_key = (
            X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        signature = getattr(bundle, "signature", None)
        endpoint.run_locked(
            lambda c: c.open(
                bundle,
                nonce=nonce,
                client_key=client_key,
                signature=(signature.public_key, signature.signature) if signature else None,
                sandbox=proxy_config.sandbox,
            )
        )
        loaded = endpoint.wait_loaded(timeout)
        if loaded.error is not None:
            detail = f"{loaded.error.type}: {loaded.error.message}"
            if loaded.error.traceback:
                detail += "\n" + loaded.error.traceback.rstrip()
            raise EnclaveLoadError(
                f"the enclave bundle {str(sim.enclave_path)!r} failed to load: {detail}",
                code=loaded.error.code,
            )
        identity = _attest(load_config, bundle.measurement(), loaded, lease, nonce, client_key)
        try:
            endpoint.call(
                1, CallKind.INITIALIZE, "", (load_config.config.to_wire(),), timeout=timeout
            )
        except EnclaveCallError as exc:
            raise EnclaveLoadError(
                f"the enclave's initialize() failed: {exc}", code=exc.code
            ) from exc
    except BaseException as exc:
        with contextlib.suppress(EnclaveError):
            endpoint.run_locked(lambda c: c.close())
        transport.close(timeout=1.0)
        endpoint.fail(EnclaveLoadError("the enclave failed to load"))
        provisioner.release(lease)
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


def load(
    enclave_path: str | os.PathLike[str],
    *,
    name: str | None = None,
    provision: Provisioner | None = None,
    config: EnclaveConfig | None = None,
    debug: bool = True,
    exit_handlers: Mapping[str, Callable[..., Any]] | None = None,
    files_root: str | os.PathLike[str] | None = None,
    load_timeout: float = 30.0,
    policy: AttestationPolicy | None = None,
    sandbox: SandboxConfig | None = None,
    max_open_files: int = DEFAULT_MAX_OPEN_FILES,
) -> EnclaveClient:
    """Load the enclave bundle at ``enclave_path`` and return its client: the short form.

    ``provision`` defaults to ``LocalProvision()``; ``name`` defaults to a unique
    one. ``policy`` is what the enclave must prove before it gets anything (default:
    exactly this bundle, on a platform the provisioner vouches for, debug allowed as
    ``debug`` says); ``AttestationError`` names the check that failed. ``sandbox`` asks
    the proxy for a stricter sandbox or resource limits (see ``SandboxConfig``);
    ``max_open_files`` caps the files under ``files_root`` the enclave holds open. The
    client is registered in ``EnclaveManager.instance()`` like any other, and destroys
    the enclave when used as a context manager.
    """
    if name is None:
        name = f"{Path(enclave_path).stem or 'enclave'}-{secrets.token_hex(4)}"
    proxy_config = RemoteProxyClientConfig(
        provision=RemoteProxyClientConfig.defaults_with_provision(provision).provision,
        load_timeout=load_timeout,
        policy=policy,
        sandbox=sandbox,
    )
    load_config = EnclaveLoadConfig(
        name=name,
        config=config if config is not None else EnclaveConfig(),
        remote_load_config=RemoteLoadConfig(
            proxy_config=proxy_config,
            sim_load_config=SimLoadConfig(enclave_path=enclave_path, debug=debug),
        ),
        exit_handlers=exit_handlers or {},
        files_root=files_root,
        max_open_files=max_open_files,
    )
    return EnclaveManager.instance().load_enclave(load_config)
