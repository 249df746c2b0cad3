"""Nothing a proxy writes can kill a server thread, hold a slot or grow the server
(issue 14, finding 2).

The review's enclave wrote ``status - ²`` to its proxy's inherited status pipe: the
provision server's monitor thread died on ``int('²')`` and the slot was never freed
(with a per-client cap, that client was refused until a restart). 512 MiB without a
newline took the server to 1.7 GB, and ``os.write(2, ...)`` grew ``proxy.log`` to 300 MB.
"""

from __future__ import annotations

import errno
import os
import threading
import tracemalloc
from pathlib import Path

import farside
from farside.provision._spawn import read_statuses
from farside.proxy.server import MAX_FILE_BYTES

from ._provision import ServerFactory, pki, servers
from ._support import ENCLAVES, wait_until

__all__ = ["pki", "servers"]

FORGER = ENCLAVES / "status_forger.py"
HOSTILE_LINES = [
    "status - ²\n".encode(),
    b"status " + b"f" * 64 + b" 99999999999999999999999999\n",
    b"status \xff\xfe 12\n",
    b"status - 1 2 3\n",
    b"\x00" * 100 + b"\n",
]


def test_garbage_status_lines_neither_kill_the_watcher_nor_hold_the_slot(
    servers: ServerFactory,
) -> None:
    server = servers(max_per_client=1)
    provision = servers.remote(server)
    hostile = farside.load(FORGER, provision=provision, policy=servers.pki.policy())
    for line in HOSTILE_LINES:
        assert hostile.call("forge", line), "the forger found no pipe to write to"
    assert hostile.call("forge", b"a" * 2**20, 32)  # 32 MiB without a newline
    assert hostile.call("forge", b"\n")
    assert hostile.call("ping") == "pong"
    [info] = servers.listing(server)
    assert info.calls_served < 10**6  # no forged count got through
    assert len(info.measurement) in (0, 64)
    farside.EnclaveManager.instance().destroy_enclave(hostile)
    # The watcher survived: the slot is free again, and this client may load once more.
    assert wait_until(lambda: server.enclave_count() == 0, 10), servers.listing(server)
    again = servers.load(provision)
    assert again.call("decrypt", again.call("encrypt", "still serving")) == "still serving"


def test_reading_status_keeps_memory_bounded_and_parses_only_the_grammar() -> None:
    read_end, write_end = os.pipe()
    reports: list[tuple[str, int]] = []
    flood = b"b" * 2**20  # made before tracing starts: only the reader's memory counts

    def writer() -> None:
        with os.fdopen(write_end, "wb") as pipe:
            for line in HOSTILE_LINES:
                pipe.write(line)
            pipe.write(b"status " + b"a" * 64 + b" 7\n")
            for _ in range(64):
                pipe.write(flood)  # 64 MiB without a newline
            pipe.write(b"\nstatus - 8\n")

    thread = threading.Thread(target=writer)
    tracemalloc.start()
    thread.start()
    with os.fdopen(read_end, "rb") as pipe:
        read_statuses(pipe, lambda m, c: reports.append((m, c)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    thread.join(10)
    assert reports == [("a" * 64, 7), ("", 8)]
    assert peak < 2**20  # a read's chunk and at most a line held, never the flood


def test_the_proxy_log_stops_growing_at_its_cap(tmp_path: Path) -> None:
    provision = farside.LocalProvision()
    with farside.load(FORGER, provision=provision) as hostile:
        flooded = hostile.call("flood_stderr", 64)
        assert flooded["error"] == errno.EFBIG
        assert flooded["written"] <= MAX_FILE_BYTES
        assert hostile.call("ping") == "pong"  # the proxy goes on serving
        log = hostile._lease.handle.log_path
        assert log.stat().st_size <= MAX_FILE_BYTES
