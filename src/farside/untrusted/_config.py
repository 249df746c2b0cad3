"""The load configuration objects, shaped like Asylo's and spelled for Python."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .._config import EnclaveConfig, SandboxConfig
from ..attestation.evidence import AttestationPolicy
from ..provision.base import Provisioner
from ..provision.local import LocalProvision
from ._fileservice import DEFAULT_MAX_OPEN_FILES

__all__ = [
    "EnclaveLoadConfig",
    "RemoteLoadConfig",
    "RemoteProxyClientConfig",
    "SimLoadConfig",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class SimLoadConfig:
    """Which enclave bundle to load in sim mode, and whether it is a debug enclave.

    Debug enclaves send tracebacks of their exceptions to the client.
    """

    enclave_path: str | os.PathLike[str]
    debug: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteProxyClientConfig:
    """How the client gets and talks to its proxy.

    ``load_timeout`` bounds provisioning and loading (seconds); ``max_depth``
    bounds how deeply entry and exit calls may nest; ``policy`` is what the enclave
    must prove before the client sends it anything (None: exactly the bundle sent,
    on a platform the provisioner vouches for; remote platforms need ``platform_keys``);
    ``max_value_size`` bounds one encoded argument list or result, both ways (values
    travel in 1 MiB chunks; a larger one is a ``ValueError`` before anything is sent);
    ``sandbox`` is what the client asks of the proxy's sandbox (a stricter mode, resource
    limits; None: the proxy's own settings). To *require* layers, use
    ``AttestationPolicy(require_sandbox=...)``: the evidence lists those applied.
    """

    provision: Provisioner
    load_timeout: float = 30.0
    max_depth: int = 64
    policy: AttestationPolicy | None = None
    max_value_size: int = 256 * 2**20
    sandbox: SandboxConfig | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.provision, Provisioner):
            raise TypeError(
                f"provision must be a Provisioner such as LocalProvision(), "
                f"not {type(self.provision).__name__}"
            )
        if self.load_timeout <= 0 or self.max_depth < 1:
            raise ValueError("load_timeout must be positive and max_depth at least 1")
        if not 0 < self.max_value_size <= 2**30:
            raise ValueError("max_value_size must be in (0, 1 GiB]")
        if self.sandbox is not None and not isinstance(self.sandbox, SandboxConfig):
            raise TypeError(f"sandbox must be a SandboxConfig, not {type(self.sandbox).__name__}")

    @classmethod
    def defaults_with_provision(
        cls, provision: Provisioner | None = None
    ) -> RemoteProxyClientConfig:
        """Asylo's ``DefaultsWithProvision``: defaults, with this provisioner."""
        return cls(provision=provision if provision is not None else LocalProvision())


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteLoadConfig:
    """Load an enclave in a remote proxy: how to reach it, and what to load there."""

    proxy_config: RemoteProxyClientConfig
    sim_load_config: SimLoadConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class EnclaveLoadConfig:
    """Everything ``EnclaveManager.load_enclave`` needs.

    ``exit_handlers`` are registered before ``initialize`` runs (handlers can also
    be added later with ``EnclaveClient.register_exit_handler``). ``files_root`` is
    the directory that is the enclave's file system (default ``"."``: the working
    directory at load time; None: no files at all, every file call is refused), and
    ``files_root_readonly`` lets the enclave only read it; ``max_open_files`` is how
    many files there the enclave may hold open at once (each is a descriptor of this
    process). ``stdin``: the enclave's ``input()`` and ``sys.stdin`` read this process's
    standard input (otherwise reading them raises ``PermissionError``).
    """

    name: str
    remote_load_config: RemoteLoadConfig
    config: EnclaveConfig = field(default_factory=EnclaveConfig)
    exit_handlers: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    files_root: str | os.PathLike[str] | None = "."
    files_root_readonly: bool = False
    max_open_files: int = DEFAULT_MAX_OPEN_FILES
    stdin: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("EnclaveLoadConfig.name must be a non-empty str")
        if type(self.max_open_files) is not int or self.max_open_files < 1:
            raise ValueError(f"max_open_files must be a positive int, not {self.max_open_files!r}")
        for flag in ("files_root_readonly", "stdin"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"EnclaveLoadConfig.{flag} must be a bool")
        object.__setattr__(self, "exit_handlers", MappingProxyType(dict(self.exit_handlers)))
