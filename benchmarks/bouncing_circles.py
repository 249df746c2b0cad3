"""Ticks per second of the bouncing circles: local and remote enclaves, concurrent and in turn.

    python -m benchmarks.bouncing_circles [--seconds 5] [--transport grpc|stream]
        [--provisioning local|remote]

For each provisioning (local proxies; a provision server on loopback with mTLS and a
platform key, in this process), each transport and each way of calling the four
enclaves (all at once with ``asyncio.gather``, the example's way; one after another,
Asylo's way), it serves the example's app on a loopback port, GETs ``/start``, then
GETs ``/calc`` back to back for ``--seconds`` (one request at a time, as the page
does, but without the page's 60-per-second pacing) and reports ticks/s (``/calc``
answers per second) with the median and p99 of one ``/calc``. The HTTP client runs
on the server's own event loop, so the figures include its cost: a browser in another
process would see a little more. Without ``--transport`` or ``--provisioning``,
every combination in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import farside
from farside._devcerts import make_dev_certs
from farside.attestation.platform import init_platform
from farside.examples.bouncing_circles import Circles
from farside.provision.server import ProvisionServer, ProvisionServerConfig

TRANSPORTS = ("grpc", "stream")
PROVISIONING = ("local", "remote")


@dataclass
class Row:
    provisioning: str
    transport: str
    mode: str
    ticks_per_second: float
    median_ms: float
    p99_ms: float
    ticks: int

    def line(self) -> str:
        return (
            f"{self.provisioning:<7} {self.transport:<7} {self.mode:<11} "
            f"{self.ticks_per_second:9.1f} {self.median_ms:10.2f} {self.p99_ms:8.2f}"
        )


HEADER = f"{'provis.':<7} {'wire':<7} {'/calc':<11} {'ticks/s':>9} {'median ms':>10} {'p99 ms':>8}"


@contextlib.contextmanager
def trusted_machine() -> Iterator[tuple[str, farside.TLSConfig, Path]]:
    """A provision server on loopback (mTLS, a platform key): address, client TLS, key."""
    with tempfile.TemporaryDirectory(prefix="farside-bench-circles-") as tmp:
        certs, platform = Path(tmp) / "tls", Path(tmp) / "platform"
        make_dev_certs(certs, ["127.0.0.1"])
        init_platform(platform)
        server = ProvisionServer(
            ProvisionServerConfig(
                port=0,
                tls=farside.TLSConfig(
                    cert=certs / "server.pem", key=certs / "server.key", client_ca=certs / "ca.pem"
                ),
                platform_dir=platform,
            )
        )
        address = server.start()
        try:
            tls = farside.TLSConfig(
                ca=certs / "ca.pem", cert=certs / "client.pem", key=certs / "client.key"
            )
            yield address, tls, platform / "platform.pub"
        finally:
            server.stop()


async def measure(circles: Circles, seconds: float) -> tuple[list[float], int]:
    """/start, then /calc back to back for ``seconds``: each /calc's duration."""
    from aiohttp.test_utils import TestClient, TestServer

    from farside.examples.bouncing_circles.web import make_app

    async with TestClient(TestServer(make_app(circles))) as client:
        started = await (await client.get("/start?width=700&height=500")).json()
        dead = [c["name"] for c in started["circles"] if not c["alive"]]
        if dead:
            raise RuntimeError(f"enclaves did not load: {started['circles']}")
        for _ in range(20):  # warm-up
            await (await client.get("/calc")).read()
        samples: list[float] = []
        deadline = time.perf_counter() + seconds
        while (now := time.perf_counter()) < deadline:
            response = await client.get("/calc")
            body = await response.json()
            samples.append(time.perf_counter() - now)
            if not all(c["alive"] for c in body["circles"]):
                raise RuntimeError(f"an enclave failed during the run: {body['circles']}")
        return samples, len(samples)


def run(
    provisioning: str,
    transport: str,
    concurrent: bool,
    seconds: float,
    remote: tuple[str, farside.TLSConfig, Path] | None,
) -> Row:
    if provisioning == "remote":
        assert remote is not None
        address, tls, key = remote
        provision: farside.Provisioner = farside.RemoteProvision(
            address, tls=tls, transport=transport
        )
        keys: tuple[str, ...] = (str(key),)
    else:
        provision, keys = farside.LocalProvision(transport=transport), ()
    circles = Circles(provision=provision, platform_keys=keys, concurrent=concurrent)
    quiet = io.StringIO()  # the enclaves' goodbyes, and the app's
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        samples, ticks = asyncio.run(measure(circles, seconds))
    ordered = sorted(samples)
    return Row(
        provisioning=provisioning,
        transport=transport,
        mode="concurrent" if concurrent else "in turn",
        ticks_per_second=ticks / sum(samples),
        median_ms=statistics.median(ordered) * 1e3,
        p99_ms=ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1e3,
        ticks=ticks,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per row (default 5)")
    parser.add_argument("--transport", choices=TRANSPORTS, help="default: both")
    parser.add_argument("--provisioning", choices=PROVISIONING, help="default: both")
    args = parser.parse_args(argv)
    transports = (args.transport,) if args.transport else TRANSPORTS
    provisionings = (args.provisioning,) if args.provisioning else PROVISIONING
    rows: list[Row] = []
    print(HEADER, flush=True)
    with contextlib.ExitStack() as stack:
        remote = stack.enter_context(trusted_machine()) if "remote" in provisionings else None
        for provisioning in provisionings:
            for transport in transports:
                for concurrent in (True, False):
                    row = run(provisioning, transport, concurrent, args.seconds, remote)
                    rows.append(row)
                    print(row.line(), flush=True)
    print()
    for provisioning in provisionings:
        for transport in transports:
            pair = [r for r in rows if (r.provisioning, r.transport) == (provisioning, transport)]
            together, in_turn = pair
            print(
                f"{provisioning} {transport}: concurrent / in turn ticks/s = "
                f"{together.ticks_per_second / in_turn.ticks_per_second:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
