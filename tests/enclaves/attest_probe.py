"""The attestation tests' witness: it reports whether its code ran and what it was given.

Module-level code (which the proxy runs only once the client accepted the evidence
and calls initialize) writes ``<pid>.loaded`` into the directory named by the
environment variable ``FARSIDE_TEST_PROBE_DIR`` (from the ``EnclaveConfig``: the
enclave's environment is its configuration's); ``initialize`` writes
``<pid>.initialized`` with the configuration it received and hands that
configuration (less the markers directory) to the client's exit handler ``seen``. A
refused load must leave no marker at all: no code of the enclave ran.

``TAG`` is what the tampering test changes by one byte.
"""

from __future__ import annotations

import os
import posix
from typing import Any

from farside.trusted import EnclaveConfig, TrustedApplication, ecall, host

TAG = "attest-probe original"
MARKER_VAR = "FARSIDE_TEST_PROBE_DIR"
MARKERS = os.environ.get(MARKER_VAR, "")


def _mark(suffix: str, text: str) -> None:
    """Write one marker file on the trusted host's filesystem (``posix``: around the
    enclave's view, where ``os`` and ``open`` mean the client's files)."""
    if not MARKERS:
        return
    path = os.path.join(MARKERS, f"{os.getpid()}.{suffix}")
    fd = posix.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        posix.write(fd, text.encode("utf-8"))
    finally:
        posix.close(fd)


_mark("loaded", TAG)


class Probe(TrustedApplication):
    def initialize(self, config: EnclaveConfig) -> None:
        seen = {
            "user": config.user,
            "environment": {k: v for k, v in config.environment.items() if k != MARKER_VAR},
            "tag": TAG,
        }
        _mark("initialized", repr(seen))
        host.call("seen", seen)

    def run(self, input: Any) -> Any:
        _mark("input", repr(input))
        return input

    @ecall
    def tag(self) -> str:
        return TAG


def build_trusted_application() -> TrustedApplication:
    return Probe()
