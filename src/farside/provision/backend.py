"""The provision server's backend seam: where its proxies run.

``ProvisionServer`` authenticates callers, keeps the table of enclaves and their
limits, and drives one ``ProvisionBackend``: ``SingleHostBackend`` starts proxies on
this machine, ``RayPlacer`` (fleet mode) places them on the hosts of a Ray cluster.
For each admitted request the server asks the backend to ``place`` a proxy, then
watches it from a thread with ``wait`` (which returns once the proxy exited and was
reaped, whatever the reason) and frees its slot with ``end``. A backend refuses a
request with ``RefusedError``, the one refusal every layer of the server raises.

Only the server's own settings and the validated enclave name reach a backend
(``ProxySpec``): nothing else of a client's request does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .._errors import StatusCode
from .._proto.v1 import provision_pb2 as pb
from ..metrics.report import ProxyReport
from ..transport.factory import DEFAULT_TRANSPORT

__all__ = ["Placement", "ProvisionBackend", "ProxySpec", "RefusedError", "Started"]


class RefusedError(Exception):
    """A request the server turns down, with the status code to answer it with."""

    def __init__(self, code: StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxySpec:
    """What the server asks of a backend about the proxy to start: its own settings only.

    Built by the server from its configuration, the enclave id it chose and the
    *validated* enclave name.
    """

    enclave_id: str
    name: str
    tls: bool
    client_ca_pem: bytes = b""
    idle_timeout: float = 30.0
    start_timeout: float = 30.0
    transport: str = DEFAULT_TRANSPORT  # validated by the server against TRANSPORTS
    sandbox_args: tuple[str, ...] = ()  # the server's --sandbox and limit flags
    attester_args: tuple[str, ...] = ()  # the server's --attester flags (single host only)
    report_metrics: bool = False  # the server keeps metrics: the proxy reports its counters
    log_format: str = "text"  # the server's own --log-format, for the proxies' logs

    def proxy_flags(self) -> list[str]:
        """The status, metrics, log and sandbox flags every backend gives its proxies."""
        flags = ["--report-status", *self.sandbox_args]
        if self.report_metrics:
            flags.append("--report-metrics")
        if self.log_format != "text":
            flags += ["--log-format", self.log_format]
        return flags


@dataclass(frozen=True, slots=True, kw_only=True)
class Started:
    """A proxy that listens: what the client is told (all but ``pid`` and ``node_id``)."""

    address: str
    token: str
    certificate: bytes  # PEM of the proxy's own TLS certificate, b"" without TLS
    host: str
    node_id: str = ""
    pid: int = 0

    def __repr__(self) -> str:  # never print the token
        return f"Started(address={self.address!r}, host={self.host!r}, pid={self.pid})"


@dataclass(slots=True)
class Placement:
    """A proxy a backend started: what it started, and the backend's own handle on it."""

    started: Started
    handle: Any


class ProvisionBackend(Protocol):
    """What the provision server drives; see the module docstring."""

    def connect(self) -> None:
        """Get ready to place proxies (fleet: join the cluster); ``OSError`` if it cannot."""
        ...

    def place(self, spec: ProxySpec, label: tuple[str, str] | None, timeout: float) -> Placement:
        """Start a proxy (on a host with ``label``) within ``timeout`` s, or ``RefusedError``."""
        ...

    def wait(self, placement: Placement) -> str:
        """Block until the proxy exited and was reaped; say how it ended (for the log)."""
        ...

    def release(self, placement: Placement) -> None:
        """Ask the proxy to finalize and exit, without waiting; ``wait`` then returns."""
        ...

    def end(self, placement: Placement) -> None:
        """Free the placement's slot, ending its proxy if it still runs."""
        ...

    def reports(self, placements: Sequence[Placement]) -> list[ProxyReport]:
        """What each proxy last reported (measurement, calls served, counters); an empty
        report for one that cannot be asked now."""
        ...

    def hosts(self, placements: Sequence[Placement]) -> list[pb.HostInfo]:
        """The hosts and their slots; ``RefusedError`` if they cannot be listed now."""
        ...

    def close(self) -> None:
        """Release what ``connect`` took."""
        ...
