"""The bouncing circles server as its README starts it, for the end-to-end tests.

``circles_server(*flags)`` runs ``python -m farside.examples.bouncing_circles
--port 0 FLAGS`` and yields a ``Server`` (its URL, its output files); it is
stopped with SIGTERM on the way out, and killed if it does not stop. ``get``
fetches a route's JSON. ``trusted_machine(root)`` is a loopback provision server
with mTLS and a platform key, and the client flags that reach it.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVING = re.compile(r"bouncing circles: serving on (http://\S+)/circles")
# As the README starts it, on a free port.
PROVISION_SERVER = (
    "provision-server --port 0 --tls-cert tls/server.pem --tls-key tls/server.key "
    "--client-ca tls/ca.pem --platform-dir platform"
)
CLIENT_FLAGS = (
    "--tls-ca tls/ca.pem --tls-cert tls/client.pem --tls-key tls/client.key "
    "--platform-key platform/platform.pub"
)
PROVISION_READY = re.compile(r"farside provision-server listening on (\S+:\d+)")


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    stdout: Path
    stderr: Path

    def output(self) -> tuple[str, str]:
        return self.stdout.read_text(errors="replace"), self.stderr.read_text(errors="replace")


def get(url: str, timeout: float = 30) -> Any:
    """GET ``url``; its JSON."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def stop(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM, wait: float = 20) -> int:
    """Signal ``process`` and reap it (killing it if it does not end); its return code."""
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextlib.contextmanager
def circles_server(root: Path, *flags: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """``python -m farside.examples.bouncing_circles --port 0 FLAGS``, listening."""
    stdout, stderr = root / "circles.out", root / "circles.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "farside.examples.bouncing_circles", "--port", "0", *flags],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
        )
    try:
        deadline = time.monotonic() + 30
        while not (match := SERVING.search(stdout.read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start:\n{stderr.read_text()}")
            time.sleep(0.05)
        yield Server(process, match.group(1), stdout, stderr)
    finally:
        stop(process)


def farside(root: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "farside", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@contextlib.contextmanager
def trusted_machine(root: Path) -> Iterator[tuple[str, list[str]]]:
    """A provision server on loopback (mTLS, a platform key): its address and client flags."""
    farside(root, "certs", "--out", "tls", "--host", "127.0.0.1")
    farside(root, "platform", "init", "--dir", "platform")
    log = root / "provision.out"
    with log.open("wb") as out, (root / "provision.err").open("wb") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "farside", *PROVISION_SERVER.split()],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 30
        while not (match := PROVISION_READY.search(log.read_text(errors="replace"))):
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    "provision-server did not start:\n" + (root / "provision.err").read_text()
                )
            time.sleep(0.05)
        address = match.group(1)
        yield address, ["--remote", address, *CLIENT_FLAGS.split()]
    finally:
        stop(server)
