"""A hostile enclave that writes to every descriptor its proxy inherited from the server.

The review's enclave found the proxy's status pipe to the provision server and wrote
``status - ²`` (``'²'.isdigit()`` is True, ``int('²')`` raises): the server's monitor
thread died and the slot was never freed. ``forge`` writes what it is given to every
pipe the process can write to; ``flood_stderr`` writes to the proxy's log descriptor
until it is refused.
"""

from __future__ import annotations

import os
import posix
import stat
from typing import Any

from farside.trusted import TrustedApplication, ecall


def _writable_pipes() -> list[int]:
    found = []
    for fd in range(3, 256):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        if stat.S_ISFIFO(mode):
            found.append(fd)
    return found


class Forger(TrustedApplication):
    @ecall
    def forge(self, data: bytes, repeat: int = 1) -> list[int]:
        written = []
        for fd in _writable_pipes():
            try:
                for _ in range(repeat):
                    os.write(fd, data)
                written.append(fd)
            except OSError:
                continue
        return written

    @ecall
    def flood_stderr(self, megabytes: int) -> dict[str, Any]:
        # posix.write, not os.write: inside the enclave os.write(2) is the client's stderr;
        # the proxy's own descriptor 2 (its log) is what a hostile enclave goes around for.
        chunk = b"x" * 2**20
        written = 0
        try:
            for _ in range(megabytes):
                written += posix.write(2, chunk)
        except OSError as exc:
            return {"written": written, "error": exc.errno}
        return {"written": written, "error": None}

    @ecall
    def ping(self) -> str:
        return "pong"


def build_trusted_application() -> TrustedApplication:
    return Forger()
