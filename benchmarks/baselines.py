"""The baselines of ``python -m benchmarks``: the floors (raw socket, raw gRPC) and the peers.

Every function starts its peer servers (each in its own subprocess), measures and
stops them, and returns rows (``benchmarks._rows``). ``family`` is "unix" or "tcp":
local farside sessions run on a Unix socket, so the targets compare them with the
Unix-socket baselines; over TLS they run on TCP loopback.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from . import raw_peers, rpc_peers
from ._rows import FAMILY_NAMES, PAYLOAD, Row, latency_row, size_name, throughput_row
from ._timing import Latency, timings
from .peers import PeerServer


def socket_floors(
    calls: int, warmup: int, values: dict[int, bytes], reps: dict[int, int]
) -> list[Row]:
    """Raw socket ping-pong (section a) and streaming (section f), on Unix and TCP."""
    rows = []
    for family in ("unix", "tcp"):
        where = FAMILY_NAMES[family]
        with PeerServer("socket", family) as server:
            call, close = raw_peers.socket_client(server.address, PAYLOAD)
            try:
                samples = timings(call, calls, warmup)
            finally:
                close()
            rows.append(
                latency_row(
                    "a", f"socket.pingpong.{family}", f"raw socket ping-pong ({where})", samples
                )
            )
            for size, value in values.items():
                once = raw_peers.socket_stream(server.address, value)
                seconds = statistics.median(once() for _ in range(reps[size]))
                rows.append(
                    throughput_row(
                        "f",
                        f"socket.stream.{family}.{size}",
                        f"raw socket streaming, {size_name(size)} up and back ({where})",
                        size,
                        seconds,
                    )
                )
    return rows


def grpc_floors(
    calls: int,
    warmup: int,
    families: tuple[str, ...],
    values: dict[int, bytes],
    reps: dict[int, int],
    tls_dir: Path | None = None,
) -> list[Row]:
    """Raw gRPC bidi ping-pong, sync and aio clients, a unary call (a) and streaming (f)."""
    rows = []
    tls = " (TLS)" if tls_dir else ""
    for family in families:
        where = FAMILY_NAMES[family] + tls
        with PeerServer("grpc", family, tls_dir=tls_dir) as server:
            for kind, name, client in (
                ("sync", "raw gRPC bidi ping-pong, sync client", raw_peers.grpc_sync_client),
                ("unary", "raw gRPC unary call", raw_peers.grpc_unary_client),
            ):
                call, close = client(server.address, PAYLOAD, tls_dir)
                try:
                    samples = timings(call, calls, warmup)
                finally:
                    close()
                rows.append(latency_row("a", f"grpc.{kind}.{family}", f"{name} ({where})", samples))
            aio = raw_peers.grpc_aio_samples(server.address, PAYLOAD, calls, warmup, tls_dir)
            rows.append(
                latency_row(
                    "a", f"grpc.aio.{family}", f"raw gRPC bidi ping-pong, aio client ({where})", aio
                )
            )
            for size, value in values.items():
                once, close = raw_peers.grpc_stream(server.address, value, tls_dir)
                try:
                    seconds = statistics.median(once() for _ in range(reps[size]))
                finally:
                    close()
                rows.append(
                    throughput_row(
                        "f",
                        f"grpc.stream.{family}.{size}",
                        f"raw gRPC streaming, {size_name(size)} up and back in "
                        f"{size_name(raw_peers.GRPC_CHUNK)} messages ({where})",
                        size,
                        seconds,
                    )
                )
    return rows


def rpyc_rows(calls: int, warmup: int, families: tuple[str, ...]) -> list[Row]:
    """rpyc's empty call and callback (section d); the lookup-per-call reference on the first."""
    rows = []
    for index, family in enumerate(families):
        where = FAMILY_NAMES[family]
        with PeerServer("rpyc", family) as server:
            client = rpc_peers.rpyc_client(server.address, PAYLOAD)
            try:
                empty = timings(client.empty, calls, warmup)
                nested = timings(client.nested, calls, warmup)
                lookup = (
                    timings(client.nested_lookup, calls, warmup)
                    if index == 0 and client.nested_lookup
                    else None
                )
            finally:
                client.close()
        rows.append(latency_row("d", f"rpyc.empty.{family}", f"rpyc empty call ({where})", empty))
        rows.append(
            latency_row(
                "d",
                f"rpyc.nested.{family}",
                f"rpyc call with one server->client callback ({where})",
                nested,
            )
        )
        if lookup is not None:
            rows.append(
                latency_row(
                    "d",
                    f"rpyc.nested_lookup.{family}",
                    f"rpyc callback, method looked up and callback passed per call ({where}; "
                    "reference)",
                    lookup,
                )
            )
    return rows


def pyro5_serializer(address: str, calls: int, warmup: int) -> tuple[str, dict[str, float]]:
    """The serializer whose callback call is fastest here, and each one's median (µs)."""
    medians = {}
    for serializer in rpc_peers.PYRO5_SERIALIZERS:
        client = rpc_peers.pyro5_client(address, PAYLOAD, serializer)
        try:
            medians[serializer] = Latency.of(timings(client.nested, calls, warmup)).median_us
        finally:
            client.close()
    return min(medians, key=medians.__getitem__), medians


def pyro5_rows(
    calls: int, warmup: int, families: tuple[str, ...], probe: int
) -> tuple[list[Row], dict[str, Any]]:
    """Pyro5's empty call and callback (section d) with the serializer a short probe picks.

    The probe (``probe`` callback calls per serializer) runs on the first family;
    returns the rows and ``{"serializer": ..., "probe_us": {...}}``.
    """
    rows = []
    chosen: dict[str, Any] = {}
    for family in families:
        where = FAMILY_NAMES[family]
        with PeerServer("pyro5", family) as server:
            if not chosen:
                best, medians = pyro5_serializer(server.address, probe, max(20, probe // 10))
                chosen = {"serializer": best, "probe_us": medians}
            client = rpc_peers.pyro5_client(server.address, PAYLOAD, chosen["serializer"])
            try:
                empty = timings(client.empty, calls, warmup)
                nested = timings(client.nested, calls, warmup)
            finally:
                client.close()
        serializer = chosen["serializer"]
        rows.append(
            latency_row(
                "d",
                f"pyro5.empty.{family}",
                f"Pyro5 empty call ({where})",
                empty,
                serializer=serializer,
            )
        )
        rows.append(
            latency_row(
                "d",
                f"pyro5.nested.{family}",
                f"Pyro5 call with one callback to a client daemon ({where})",
                nested,
                serializer=serializer,
            )
        )
    return rows, chosen
