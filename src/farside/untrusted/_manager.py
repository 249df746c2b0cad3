"""``EnclaveManager`` and ``load``: loading enclaves and keeping track of them."""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._config import EnclaveConfig, SandboxConfig
from .._errors import EnclaveNameError
from ..attestation.evidence import AttestationPolicy
from ..provision.base import Provisioner
from ._client import EnclaveClient
from ._config import (
    EnclaveLoadConfig,
    RemoteLoadConfig,
    RemoteProxyClientConfig,
    SimLoadConfig,
)
from ._fileservice import DEFAULT_MAX_OPEN_FILES
from ._session import open_session

__all__ = ["EnclaveManager", "load", "load_config_for"]

log = logging.getLogger("farside")


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
            client = open_session(load_config, on_destroyed=self._forget)
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
) -> EnclaveClient:
    """Load the enclave bundle at ``enclave_path`` and return its client: the short form.

    ``provision`` defaults to ``LocalProvision()``; ``name`` defaults to a unique
    one. ``policy`` is what the enclave must prove before it gets anything (default:
    exactly this bundle, on a platform the provisioner vouches for, debug allowed as
    ``debug`` says); ``AttestationError`` names the check that failed. ``sandbox`` asks
    the proxy for a stricter sandbox or resource limits (see ``SandboxConfig``).
    ``files_root`` is the enclave's file system (default ``"."``, the working directory;
    None: no files, every file call is refused), ``files_root_readonly`` lets the
    enclave only read it, and ``max_open_files`` caps the files there the enclave holds
    open. ``stdin=True`` gives the enclave's ``input()`` and ``sys.stdin`` this process's
    standard input. The client is registered in ``EnclaveManager.instance()`` like any
    other, and destroys the enclave when used as a context manager.
    """
    load_config = load_config_for(
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
    return EnclaveManager.instance().load_enclave(load_config)


def load_config_for(
    enclave_path: str | os.PathLike[str],
    *,
    name: str | None,
    provision: Provisioner | None,
    config: EnclaveConfig | None,
    debug: bool,
    exit_handlers: Mapping[str, Callable[..., Any]] | None,
    files_root: str | os.PathLike[str] | None,
    load_timeout: float,
    policy: AttestationPolicy | None,
    sandbox: SandboxConfig | None,
    max_open_files: int,
    files_root_readonly: bool,
    stdin: bool,
) -> EnclaveLoadConfig:
    """The ``EnclaveLoadConfig`` that ``load``'s arguments stand for (``farside.aio.load``
    takes the same)."""
    if name is None:
        name = f"{Path(enclave_path).stem or 'enclave'}-{secrets.token_hex(4)}"
    proxy_config = RemoteProxyClientConfig(
        provision=RemoteProxyClientConfig.defaults_with_provision(provision).provision,
        load_timeout=load_timeout,
        policy=policy,
        sandbox=sandbox,
    )
    return EnclaveLoadConfig(
        name=name,
        config=config if config is not None else EnclaveConfig(),
        remote_load_config=RemoteLoadConfig(
            proxy_config=proxy_config,
            sim_load_config=SimLoadConfig(enclave_path=enclave_path, debug=debug),
        ),
        exit_handlers=exit_handlers or {},
        files_root=files_root,
        files_root_readonly=files_root_readonly,
        max_open_files=max_open_files,
        stdin=stdin,
    )
