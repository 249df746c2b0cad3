"""Fleet mode: a provision server that places each enclave on one of many trusted hosts.

We do not schedule: Ray does. Each trusted host joins a Ray cluster offering N
units of a custom ``enclave`` resource (``farside fleet join``, in ``join_command``)
and, optionally, node labels such as ``tee=sgx``. For each ``Provision`` the
server (a Ray driver) asks Ray for an ``EnclaveSlot`` actor needing one
``enclave`` unit (and the request's label); Ray picks the host, enforces the
capacity, and the actor spawns the proxy there (``_fleet_host``). The reply to the
client is the same as a single host's: the proxy's address, token and certificate.

``RayPlacer`` is the provision server's backend in fleet mode
(``farside.provision.backend.ProvisionBackend``): ``place`` (RESOURCE_EXHAUSTED when
no slot frees up in time; an actor whose host died before it ran is placed again),
``wait`` (until the proxy exited or its host died), ``release``, ``end`` (frees the
slot), ``hosts`` and ``statuses`` for listings, ``close``. Ray is imported lazily:
the core package never needs it.

Ray gives code execution to whoever reaches its ports, so ``check_ray_security``
refuses a fleet without Ray's token authentication, and without TLS unless a
development flag says otherwise. Only the server's own settings and the
validated enclave name (``ProxySpec``) and label (a ``label_selector``) reach Ray.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import StatusCode
from .._proto.v1 import provision_pb2 as pb
from ..metrics.report import ProxyReport
from ._fleet_host import PLATFORM_DIR_VAR, WORKDIR_VAR, RayEnclaveSlot, running_proxies
from ._spawn import MAX_LINE
from .backend import Placement, ProxySpec, RefusedError, Started
from .base import parse_node_label

__all__ = [
    "ENCLAVE_RESOURCE",
    "FleetConfigError",
    "RayPlacer",
    "check_ray_security",
    "join_command",
    "serve_host_metrics",
]

log = logging.getLogger("farside.provision.fleet")

MAX_REPORT_LINES = 1024  # a slot's report: status, bytes, session, calls and exits
ENCLAVE_RESOURCE = "enclave"
NAMESPACE = "farside"
_RAY_ADDRESS = re.compile(r"[A-Za-z0-9.\-\[\]:]{1,255}:\d{1,5}")
_TLS_FILES = ("RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT")


class FleetConfigError(ValueError):
    """Fleet mode is not configured safely (or Ray is missing); the message says what to do."""


# ----------------------------------------------------------------- validation


def _token_configured(environ: Mapping[str, str]) -> bool:
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return True
    path = environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    try:
        return bool(Path(path).read_text(encoding="utf-8").strip())
    except OSError:
        return False


def check_ray_security(environ: Mapping[str, str], *, allow_plaintext: bool) -> list[str]:
    """Refuse (``FleetConfigError``) a Ray setup that lets strangers in; return warnings.

    Token authentication is always required. TLS is required unless
    ``allow_plaintext`` (a development fleet on one machine), which is warned about.
    """
    if environ.get("RAY_AUTH_MODE", "").lower() != "token" or not _token_configured(environ):
        raise FleetConfigError(
            "fleet mode requires Ray's token authentication, because anyone who reaches "
            "Ray's ports can run code on every trusted host: set RAY_AUTH_MODE=token and "
            "RAY_AUTH_TOKEN_PATH=FILE (or RAY_AUTH_TOKEN) here and on every node "
            "(see docs/fleet.md)"
        )
    if environ.get("RAY_USE_TLS", "0").lower() not in ("1", "true"):
        if not allow_plaintext:
            raise FleetConfigError(
                "fleet mode requires Ray's TLS: set RAY_USE_TLS=1 and "
                f"{', '.join(_TLS_FILES)} here and on every node (farside fleet certs makes "
                "development certificates), or pass --ray-allow-plaintext for a "
                "development fleet on one machine"
            )
        return [
            "the fleet's Ray traffic is NOT encrypted (--ray-allow-plaintext): tokens and "
            "enclave handles cross the network in the clear; development only"
        ]
    for name in _TLS_FILES:
        value = environ.get(name, "")
        if not value or not os.access(value, os.R_OK):
            raise FleetConfigError(
                f"RAY_USE_TLS is set but {name} ({value or 'unset'}) is not a readable file"
            )
    return []


def check_ray_address(address: str) -> str:
    """A Ray cluster's GCS address ``host:port`` (not a ``ray://`` client address)."""
    if not _RAY_ADDRESS.fullmatch(address):
        raise FleetConfigError(
            f"--ray-address takes the head node's HOST:PORT (as ray start printed it), "
            f"not {address!r}"
        )
    return address


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise FleetConfigError(
            "fleet mode needs Ray on this machine: pip install 'farside[fleet]'"
        ) from None
    return ray


# ----------------------------------------------------------------- joining


def join_command(
    *,
    ray_address: str,
    slots: int,
    platform_dir: Path,
    labels: Sequence[str] = (),
    node_ip: str | None = None,
    num_cpus: int = 1,
    temp_dir: str | None = None,
    object_store_memory: int | None = None,
    workdir: str | None = None,
    block: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """The ``ray start`` command (and its environment) that offers this host's slots.

    Checks everything it can first: the address, the slot count, the labels and
    that the platform key is readable (the slots sign evidence with it); makes
    ``workdir`` (0700) if it is missing.
    """
    from ..attestation.platform import PLATFORM_KEY, load_platform_key

    check_ray_address(ray_address)
    if slots < 1:
        raise FleetConfigError("--slots must be at least 1")
    pairs = [parse_node_label(label) for label in labels]
    key_path = platform_dir.resolve() / PLATFORM_KEY
    try:
        load_platform_key(key_path)
    except (OSError, ValueError) as exc:
        raise FleetConfigError(
            f"cannot use {key_path} as this host's platform key ({exc}); "
            "run farside platform init --dir DIR first"
        ) from None
    search = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    ray = shutil.which("ray", path=search)
    if ray is None:
        raise FleetConfigError("the ray command is not installed: pip install 'farside[fleet]'")
    command = [
        ray,
        "start",
        "--address",
        ray_address,
        "--resources",
        f'{{"{ENCLAVE_RESOURCE}": {slots}}}',
        "--num-cpus",
        str(num_cpus),
        "--disable-usage-stats",
    ]
    if pairs:
        command += ["--labels", ",".join(f"{k}={v}" for k, v in pairs)]
    if node_ip:
        command += ["--node-ip-address", node_ip]
    if temp_dir:
        command += ["--temp-dir", temp_dir]
    if object_store_memory:
        command += ["--object-store-memory", str(object_store_memory)]
    if block:
        command.append("--block")
    env = {
        **os.environ,
        PLATFORM_DIR_VAR: str(platform_dir.resolve()),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if workdir:
        path = Path(workdir).resolve()
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise FleetConfigError(f"cannot make --workdir {path}: {exc.strerror}") from None
        env[WORKDIR_VAR] = str(path)
    return command, env


def serve_host_metrics(address: str, *, slots: int, workdir: str | None = None) -> Any:
    """``fleet join --metrics-address``: this host's slots and running enclaves on
    ``/metrics`` (a ``farside.metrics.exporter.MetricsServer``)."""
    import tempfile

    from ..metrics.exporter import host_families, serve_metrics

    root = Path(workdir or tempfile.gettempdir())
    return serve_metrics(address, lambda: host_families(running_proxies(root), slots))


# ----------------------------------------------------------------- placing


@dataclass(slots=True)
class _Slot:
    """A placement's handle: the slot actor, and the ObjectRef of its ``wait()``."""

    actor: Any
    done: Any


class RayPlacer:
    """Place proxies on the fleet's hosts through the Ray cluster at ``address``.

    The provision server's backend in fleet mode; a Kubernetes placer would provide
    the same interface (docs/fleet.md sketches it).
    """

    def __init__(
        self,
        address: str,
        *,
        node_ip: str | None = None,
        allow_plaintext: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.address = check_ray_address(address)
        for warning in check_ray_security(
            os.environ if environ is None else environ, allow_plaintext=allow_plaintext
        ):
            log.warning("%s", warning)
        self._node_ip = node_ip
        self._ray: Any = None
        self._slot_class: Any = None

    def _probe(self, timeout: float) -> None:
        """``OSError`` unless the head's GCS port accepts a connection within ``timeout`` s.

        Ray itself retries an absent head for minutes (and then ends the driver's
        process); a plain connect says at once that the head is down or wrong.
        """
        host, _, port = self.address.rpartition(":")
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass

    def connect(self) -> None:
        """Join the cluster as a driver; ``OSError`` naming the address if it cannot."""
        try:
            self._probe(5.0)
        except OSError as exc:
            raise OSError(
                f"cannot reach the Ray cluster's head at {self.address}: {exc.strerror or exc}"
            ) from exc
        ray = _import_ray()
        kwargs: dict[str, Any] = {}
        if self._node_ip:
            kwargs["_node_ip_address"] = self._node_ip
        try:
            ray.init(
                address=self.address,
                namespace=NAMESPACE,
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=False,
                **kwargs,
            )
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, its own errors
            raise OSError(f"cannot join the Ray cluster at {self.address}: {exc}") from exc
        self._ray = ray
        self._slot_class = ray.remote(RayEnclaveSlot)

    def close(self) -> None:
        """Leave the cluster (the actors this driver owns end with it)."""
        if self._ray is not None:
            self._ray.shutdown()
            self._ray = None

    def _nodes(self) -> list[dict[str, Any]]:
        try:
            self._probe(2.0)
            nodes: list[dict[str, Any]] = self._ray.nodes()
        except Exception as exc:
            raise RefusedError(
                StatusCode.UNAVAILABLE,
                f"the fleet's Ray cluster at {self.address} is unreachable: {exc}",
            ) from exc
        return nodes

    def _check_feasible(self, label: tuple[str, str] | None) -> None:
        for node in self._nodes():
            labels = node.get("Labels") or {}
            if (
                node.get("Alive")
                and node.get("Resources", {}).get(ENCLAVE_RESOURCE, 0) >= 1
                and (label is None or labels.get(label[0]) == label[1])
            ):
                return
        wanted = f" labelled {label[0]}={label[1]}" if label else ""
        raise RefusedError(
            StatusCode.RESOURCE_EXHAUSTED,
            f"no live host in the fleet offers enclave slots{wanted}",
        )

    def place(self, spec: ProxySpec, label: tuple[str, str] | None, timeout: float) -> Placement:
        """Start a proxy on a host with a free slot (and ``label``) within ``timeout`` s."""
        ray = self._ray
        exceptions = ray.exceptions
        deadline = time.monotonic() + timeout
        wanted = f" labelled {label[0]}={label[1]}" if label else ""
        options: dict[str, Any] = {
            "resources": {ENCLAVE_RESOURCE: 1},
            "num_cpus": 0,
            "max_restarts": 0,
            "max_concurrency": 4,  # wait() blocks; stop() and status() must still run
            "scheduling_strategy": "SPREAD",
        }
        if label is not None:
            options["label_selector"] = {label[0]: label[1]}
        while True:
            self._check_feasible(label)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            actor = self._slot_class.options(**options).remote()
            try:
                started: Started = ray.get(actor.start.remote(spec), timeout=remaining)
            except exceptions.GetTimeoutError:
                self._kill(actor)
                break
            except exceptions.RayTaskError as exc:
                self._kill(actor)
                log.error("a slot could not start the proxy for %s: %s", spec.name, exc.cause)
                raise RefusedError(
                    StatusCode.INTERNAL,
                    "the enclave proxy failed to start on the host Ray chose",
                ) from None
            except exceptions.RayActorError as exc:
                self._kill(actor)  # its host died before it ran: place it again
                log.warning("a slot actor for %s died before it ran (%s); retrying", spec.name, exc)
                continue
            except exceptions.RayError as exc:
                self._kill(actor)
                raise RefusedError(
                    StatusCode.UNAVAILABLE,
                    f"the fleet's Ray cluster at {self.address} failed: {exc}",
                ) from None
            return Placement(started, _Slot(actor, actor.wait.remote()))
        raise RefusedError(
            StatusCode.RESOURCE_EXHAUSTED,
            f"no enclave slot{wanted} came free in the fleet within {timeout:.3g} s; "
            "try again later",
        )

    def wait(self, placement: Placement) -> str:
        """Block until the enclave ended; say how. The slot is not free until ``end``."""
        try:
            code = self._ray.get(placement.handle.done)
        except Exception as exc:  # RayActorError: the host died; others: we left the cluster
            return f"its host or slot died ({type(exc).__name__})"
        return f"its proxy exited with code {code}"

    def release(self, placement: Placement) -> None:
        """Ask the proxy to finalize and exit; ``wait`` returns once it did."""
        try:
            placement.handle.actor.stop.remote()
        except Exception as exc:  # the actor or the cluster is gone: nothing to stop
            log.info("releasing the enclave at %s: %s", placement.started.address, exc)

    def end(self, placement: Placement) -> None:
        """End the slot actor (its proxy dies with it): the slot is free again."""
        self._kill(placement.handle.actor)

    def _kill(self, actor: Any) -> None:
        try:
            self._ray.kill(actor, no_restart=True)
        except Exception as exc:  # already gone, or the cluster is
            log.debug("ending a slot actor: %s", exc)

    def reports(self, placements: Sequence[Placement]) -> list[ProxyReport]:
        """What each placement's proxy last reported (empty if its slot does not answer).

        The slot hands over the lines its proxy wrote; they are read with the same strict
        grammar as a local proxy's, so nothing but that grammar crosses.
        """
        refs = [p.handle.actor.status.remote() for p in placements]
        results: list[ProxyReport] = []
        for ref in refs:
            report = ProxyReport()
            try:
                lines = self._ray.get(ref, timeout=2.0)
            except Exception:  # that slot is gone or slow: list it without a status
                lines = []
            if isinstance(lines, list):
                for line in lines[:MAX_REPORT_LINES]:
                    if isinstance(line, bytes) and len(line) <= MAX_LINE:
                        report.read(line)
            results.append(report)
        return results

    def hosts(self, placements: Sequence[Placement]) -> list[pb.HostInfo]:
        """Every host that offers enclave slots, with what this server runs there."""
        used: dict[str, int] = {}
        for placement in placements:
            used[placement.started.node_id] = used.get(placement.started.node_id, 0) + 1
        hosts = []
        for node in self._nodes():
            total = int(node.get("Resources", {}).get(ENCLAVE_RESOURCE, 0))
            if total < 1:
                continue
            node_id = str(node.get("NodeID", ""))
            alive = bool(node.get("Alive"))
            labels = {
                str(k): str(v)
                for k, v in (node.get("Labels") or {}).items()
                if not str(k).startswith("ray.io/")
            }
            hosts.append(
                pb.HostInfo(
                    address=str(node.get("NodeManagerAddress", "")),
                    node_id=node_id,
                    alive=alive,
                    slots_total=total,
                    slots_free=max(0, total - used.get(node_id, 0)) if alive else 0,
                    labels=labels,
                )
            )
        return hosts
