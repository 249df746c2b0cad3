"""Fleet mode's half of the provision server: placing, watching, listing and stopping.

``ProvisionServer`` keeps one table of enclaves and its limits for both modes; in
fleet mode it hands each admitted request to ``FleetEnclaves``, which has its
``Placer`` put the proxy on a host of the fleet, watches it from a thread until
the proxy exited or its host died, and then ends the slot actor (freeing the
slot) and forgets the enclave. Enclaves here belong to the server's Ray driver:
``stop`` asks each proxy to finalize, waits the grace period, and ends them all.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from .._proto.v1 import provision_pb2 as pb
from ._fleet_host import ProxySpec
from .fleet import Placement, PlacementError, Placer
from .server import RefusedError

if TYPE_CHECKING:
    from .server import ProvisionServer, _Enclave

__all__ = ["FleetEnclaves"]

log = logging.getLogger("farside.provision")


class FleetEnclaves:
    """The enclaves ``server`` placed in the fleet through ``placer``."""

    def __init__(self, server: ProvisionServer, placer: Placer) -> None:
        self._server = server
        self.placer = placer

    def place(
        self,
        enclave: _Enclave,
        label: tuple[str, str] | None,
        timeout: float | None,
        transport: str = "grpc",
    ) -> tuple[str, str, str, bytes]:
        """``provision`` in fleet mode: (enclave id, address, token, proxy cert PEM).

        ``enclave`` is already in the server's table (it holds the server's limits
        while it is placed); it leaves the table if it cannot be placed.
        """
        server, config = self._server, self._server.config
        limit = config.placement_timeout
        spec = ProxySpec(
            name=enclave.name,
            tls=config.tls is not None,
            client_ca_pem=self._client_ca_pem(),
            idle_timeout=config.proxy_idle_timeout,
            start_timeout=config.proxy_start_timeout,
            transport=transport,
            sandbox_args=tuple(server._proxy_sandbox_args()),
        )
        try:
            placement = self.placer.place(
                spec, label, limit if timeout is None else max(0.1, min(timeout, limit))
            )
        except BaseException as exc:
            with server._lock:
                del server._enclaves[enclave.enclave_id]
            if isinstance(exc, PlacementError):
                raise RefusedError(exc.code, str(exc)) from None
            raise
        started = placement.started
        with server._lock:
            enclave.placement = placement
            enclave.started = time.monotonic()
            stopping = server._stopping
        if stopping:  # stop() ran while we placed it: it must not outlive the server
            self.placer.end(placement)
            raise RefusedError(grpc.StatusCode.UNAVAILABLE, "the provision server is shutting down")
        threading.Thread(
            target=self._watch,
            args=(enclave, placement),
            daemon=True,
            name=f"farside-slot-{enclave.enclave_id}",
        ).start()
        log.info(
            "placed %s (%s) for %s on %s at %s",
            enclave.enclave_id,
            enclave.name,
            enclave.client,
            started.host,
            started.address,
        )
        return enclave.enclave_id, started.address, started.token, started.certificate

    def _client_ca_pem(self) -> bytes:
        """The CA the proxies require client certificates from (public; sent to the slot)."""
        tls = self._server.config.tls
        if tls is None or tls.client_ca is None:
            return b""
        if isinstance(tls.client_ca, bytes):
            return tls.client_ca
        return Path(tls.client_ca).read_bytes()

    def _watch(self, enclave: _Enclave, placement: Placement) -> None:
        """Wait until the placed enclave ended, then free its slot and forget it."""
        how = self.placer.wait(placement)
        self.placer.end(placement)
        with self._server._lock:
            self._server._enclaves.pop(enclave.enclave_id, None)
        log.info("enclave %s on %s ended: %s", enclave.enclave_id, placement.started.host, how)

    def release(self, placement: Placement) -> None:
        """The client is done: the proxy finalizes and exits; ``_watch`` frees the slot."""
        self.placer.release(placement)

    def stop(self, enclaves: list[_Enclave]) -> None:
        """Ask every placed proxy to finalize, wait the grace period, end every slot, leave."""
        server = self._server
        placements = [e.placement for e in enclaves if e.placement is not None]
        for placement in placements:
            self.placer.release(placement)
        deadline = time.monotonic() + server.config.grace
        while time.monotonic() < deadline:
            with server._lock:
                if not any(e.placement is not None for e in server._enclaves.values()):
                    break
            time.sleep(0.1)
        for placement in placements:
            self.placer.end(placement)
        self.placer.close()

    def _placed(self) -> list[tuple[_Enclave, Placement]]:
        with self._server._lock:
            return [
                (e, e.placement) for e in self._server._enclaves.values() if e.placement is not None
            ]

    def list_enclaves(self) -> list[pb.EnclaveInfo]:
        """The placed enclaves, with what their proxies last reported."""
        placed = self._placed()
        statuses = self.placer.statuses([p for _, p in placed])
        now = time.monotonic()
        return [
            pb.EnclaveInfo(
                enclave_id=e.enclave_id,
                name=e.name,
                client=e.client,
                measurement=measurement,
                uptime_seconds=now - e.started,
                calls_served=calls,
                address=p.started.address,
                pid=p.started.pid,
                host=p.started.host,
            )
            for (e, p), (measurement, calls) in zip(placed, statuses, strict=True)
        ]

    def hosts(self) -> list[pb.HostInfo]:
        """The fleet's hosts; ``RefusedError`` (UNAVAILABLE) if the cluster is unreachable."""
        try:
            return self.placer.hosts([p for _, p in self._placed()])
        except PlacementError as exc:
            raise RefusedError(exc.code, str(exc)) from None
