"""Helpers shared by the integration tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import farside

ENCLAVES = Path(__file__).resolve().parent.parent / "enclaves"
WORKER = ENCLAVES / "worker.py"
PACKAGE = ENCLAVES / "pkg_enclave"
NO_BUILD = ENCLAVES / "no_build.py"
INIT_RAISES = ENCLAVES / "init_raises.py"
QUICKSTART = Path(farside.__file__).resolve().parent / "examples" / "quickstart" / "demo_enclave.py"


def proxy_pid(client: farside.EnclaveClient) -> int:
    """The pid of the proxy process hosting ``client``'s enclave (LocalProvision only)."""
    pid: int = client._lease.handle.process.pid
    return pid


def process_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (it does not exist, or it is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return True
    fields = stat.rpartition(")")[2].split()
    return not fields or fields[0] in ("Z", "X")


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def registered(name: str) -> farside.EnclaveClient | None:
    """The client registered under ``name``, or None."""
    try:
        return farside.EnclaveManager.instance().get_client(name)
    except farside.EnclaveNameError:
        return None


def long_form_config(
    path: str | os.PathLike[str],
    name: str,
    *,
    provision: farside.Provisioner | None = None,
    config: farside.EnclaveConfig | None = None,
    debug: bool = True,
    max_depth: int = 64,
    exit_handlers: dict[str, Callable[..., Any]] | None = None,
    files_root: str | os.PathLike[str] | None = ".",
) -> farside.EnclaveLoadConfig:
    """An ``EnclaveLoadConfig`` spelled out the Asylo way."""
    proxy_config = farside.RemoteProxyClientConfig(
        provision=provision if provision is not None else farside.LocalProvision(),
        max_depth=max_depth,
    )
    return farside.EnclaveLoadConfig(
        name=name,
        config=config if config is not None else farside.EnclaveConfig(),
        remote_load_config=farside.RemoteLoadConfig(
            proxy_config=proxy_config,
            sim_load_config=farside.SimLoadConfig(enclave_path=path, debug=debug),
        ),
        exit_handlers=exit_handlers or {},
        files_root=files_root,
    )


class RecordingProvision(farside.LocalProvision):
    """A ``LocalProvision`` that remembers every lease it handed out."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.leases: list[farside.ProxyLease] = []

    def provision(self, *, name: str, timeout: float) -> farside.ProxyLease:
        lease = super().provision(name=name, timeout=timeout)
        self.leases.append(lease)
        return lease

    def pids(self) -> list[int]:
        return [lease.handle.process.pid for lease in self.leases]
