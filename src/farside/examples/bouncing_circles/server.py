"""The command line: flags, the server's life, and the enclaves' end with it.

    python -m farside.examples.bouncing_circles [--host 127.0.0.1] [--port 8888]
        [--remote HOST:PORT --tls-ca FILE --tls-cert FILE --tls-key FILE
         --platform-key FILE] [--transport grpc|stream] [--call-timeout S] [--sequential]
        [--once]

It prints ``bouncing circles: serving on http://HOST:PORT/circles`` once it listens
(``--port 0`` picks a free port) and runs until SIGINT or SIGTERM; then it destroys
the four enclaves (each says so from inside, through its ``finalize``) and exits 0.
``--once`` serves nothing: it loads, moves and prints the four circles, and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import farside

if TYPE_CHECKING:
    from .circles import Circles

__all__ = ["main", "parser", "provisioner"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m farside.examples.bouncing_circles",
        description="Four bouncing circles, each held by its own enclave, drawn in a browser "
        "(open /circles).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--port", type=int, default=8888, help="port to listen on; 0 picks a free one")
    p.add_argument(
        "--call-timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="an enclave that has not answered a call within this is shown grey (default 2)",
    )
    p.add_argument(
        "--load-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up loading an enclave after this long (default 30)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="no web server: load the four enclaves, move the circles one tick, print "
        "each one's state, destroy them, and exit (1 if any circle is grey)",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="call the four enclaves one after another, as Asylo's original does",
    )
    p.add_argument(
        "--transport",
        choices=("grpc", "stream"),
        default=None,
        help="the sessions' wire (default: gRPC, or $FARSIDE_TRANSPORT)",
    )
    group = p.add_argument_group("remote provisioning (default: local proxy processes)")
    group.add_argument("--remote", metavar="HOST:PORT", help="the provision server to use")
    group.add_argument("--tls-ca", metavar="FILE", help="CA bundle that signed the server's cert")
    group.add_argument("--tls-cert", metavar="FILE", help="client certificate (mTLS)")
    group.add_argument("--tls-key", metavar="FILE", help="client key (mTLS)")
    group.add_argument("--token-file", metavar="FILE", help="the server's bearer token")
    group.add_argument(
        "--platform-key",
        metavar="FILE",
        action="append",
        default=[],
        help="the trusted machine's platform.pub: only its evidence is accepted (repeatable)",
    )
    return p


def provisioner(args: argparse.Namespace) -> farside.Provisioner:
    """``RemoteProvision`` from the flags, or ``LocalProvision`` without ``--remote``."""
    if not args.remote:
        if args.tls_ca or args.tls_cert or args.tls_key or args.token_file:
            raise ValueError("--tls-ca, --tls-cert, --tls-key and --token-file need --remote")
        return farside.LocalProvision(transport=args.transport)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    tls = None
    if args.tls_ca or args.tls_cert:
        tls = farside.TLSConfig(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    token = None
    if args.token_file:
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"the token file {args.token_file!r} is empty")
    return farside.RemoteProvision(args.remote, tls=tls, token=token, transport=args.transport)


def _circles(args: argparse.Namespace) -> Circles:
    from .circles import Circles

    return Circles(
        provision=provisioner(args),
        platform_keys=args.platform_key,
        call_timeout=args.call_timeout,
        load_timeout=args.load_timeout,
        concurrent=not args.sequential,
    )


async def once(args: argparse.Namespace) -> bool:
    """Load, set up and move the four circles once; print them; True if all are alive."""
    circles = _circles(args)
    try:
        await circles.start(700, 500)
        snapshot = await circles.tick()
    finally:
        await circles.close()
    for circle in snapshot["circles"]:
        where = f"({circle['x']}, {circle['y']}) r={circle['radius']}"
        print(f"{circle['name']}: {circle['state']}, {circle['fill']} at {where}")
        print(f"  measurement {circle['measurement'] or '-'}")
        print(f"  attestation {circle['attestation']}")
        if circle["error"]:
            print(f"  error {circle['error']}")
    same = "one measurement" if snapshot["same_measurement"] else "DIFFERENT measurements"
    print(f"{len(snapshot['circles'])} enclaves, {same}")
    return all(circle["alive"] for circle in snapshot["circles"])


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM, then destroy the enclaves."""
    from aiohttp import web

    from .web import make_app

    circles = _circles(args)
    runner = web.AppRunner(make_app(circles), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"bouncing circles: serving on http://{shown}:{port}/circles", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        print("bouncing circles: stopping, destroying the enclaves", file=sys.stderr, flush=True)
    finally:
        await runner.cleanup()  # the app's cleanup destroys the enclaves


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        if args.once:
            return 0 if asyncio.run(once(args)) else 1
        import aiohttp  # noqa: F401
    except ImportError:
        print("bouncing circles needs aiohttp: pip install 'farside[circles]'", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"bouncing circles: error: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(args))
    except (ValueError, OSError) as exc:
        print(f"bouncing circles: error: {exc}", file=sys.stderr)
        return 1
    return 0
