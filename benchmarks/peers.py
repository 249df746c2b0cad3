"""The peer servers of the side-by-side benchmarks, each in its own subprocess.

    python -m benchmarks.peers KIND [--listen 127.0.0.1:0 | --listen unix:PATH] [--tls-dir DIR]

serves one peer (``socket``: a raw echo; ``grpc``: a raw gRPC echo; ``rpyc``;
``pyro5``) on 127.0.0.1 on a free TCP port or on the Unix socket ``PATH``, prints
``ADDRESS <address>`` on stdout and serves until its stdin closes (so it also dies
with the harness). An address is ``127.0.0.1:<port>`` or ``unix:<path>``.
``PeerServer`` starts and stops one. The servers and their clients live in
``raw_peers`` (the floors) and ``rpc_peers`` (rpyc, Pyro5).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from . import raw_peers, rpc_peers

KINDS = ("socket", "grpc", "rpyc", "pyro5")
FAMILIES = ("unix", "tcp")
HOW = {**raw_peers.HOW, **rpc_peers.HOW}


def serve(kind: str, address: str, tls_dir: Path | None = None) -> None:
    """Serve ``kind`` on ``address`` until stdin closes; print ``ADDRESS <a>`` once listening."""

    def ready(bound: str) -> None:
        print(f"ADDRESS {bound}", flush=True)

    def watch_stdin() -> None:
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    if kind == "socket":
        raw_peers.serve_socket(address, ready)
    elif kind == "grpc":
        raw_peers.serve_grpc(address, ready, tls_dir)
    elif kind == "rpyc":
        rpc_peers.serve_rpyc(address, ready)
    elif kind == "pyro5":
        rpc_peers.serve_pyro5(address, ready)
    else:
        raise SystemExit(f"unknown peer kind {kind!r}; one of {', '.join(KINDS)}")


class PeerServer:
    """A peer server in a subprocess, on TCP or a Unix socket; ``stop()`` reaps it."""

    def __init__(
        self,
        kind: str,
        family: str = "tcp",
        tls_dir: Path | None = None,
    ) -> None:
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
        self.kind = kind
        self.family = family
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if family == "unix":
            self._tmp = tempfile.TemporaryDirectory(prefix="farside-peer-")
            listen = f"unix:{Path(self._tmp.name) / f'{kind}.sock'}"
        else:
            listen = raw_peers.tcp_address(0)
        command = [sys.executable, "-m", "benchmarks.peers", kind, "--listen", listen]
        if tls_dir is not None:
            command += ["--tls-dir", str(tls_dir)]
        root = Path(__file__).resolve().parent.parent
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=root, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("ADDRESS "):
            self.stop()
            raise RuntimeError(f"{kind} peer server did not start (said {line!r})")
        self.address = line.split(maxsplit=1)[1].strip()
        self.pid = self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.close()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> PeerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="serve one benchmark peer")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument(
        "--listen", default=raw_peers.tcp_address(0), help="127.0.0.1:PORT or unix:PATH"
    )
    parser.add_argument("--tls-dir", type=Path)
    args = parser.parse_args(argv)
    serve(args.kind, args.listen, args.tls_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
