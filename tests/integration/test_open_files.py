"""Host files an enclave may hold open: a cap per session, so the client keeps its own.

An enclave's ``open()`` is a descriptor in the client process. Without a cap, an enclave
held 1,013 of the client's 1,024 and the client's own ``socket()`` failed.
"""

from __future__ import annotations

import contextlib
import resource
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import farside

from ._support import ENCLAVES

HOARDER = ENCLAVES / "hoarder.py"


@contextlib.contextmanager
def descriptors_left(count: int) -> Iterator[None]:
    """Let this process open only ``count`` more descriptors, as a 1,024 limit would."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(list(Path("/proc/self/fd").iterdir()))
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, in_use + count), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_enclave_cannot_take_the_clients_descriptors(tmp_path: Path) -> None:
    with farside.load(HOARDER, files_root=tmp_path) as client:
        with descriptors_left(256):
            report = client.call("hoard", 10_000)
            sockets = [socket.socket() for _ in range(64)]  # the client's own, still there
            for sock in sockets:
                sock.close()
        assert report["opened"] == 64
        assert report["type"] == "OSError"
        assert "64 host files open" in report["message"]
        assert "max_open_files" in report["message"]
        assert client.call("release") == 64
        assert client.call("hoard", 2) == {"opened": 2, "type": None, "message": ""}
    assert len(list(tmp_path.iterdir())) == 64  # every file it opened, closed when destroyed


def test_the_cap_is_configurable_and_counts_files_held_open(tmp_path: Path) -> None:
    with farside.load(HOARDER, files_root=tmp_path, max_open_files=3) as client:
        report = client.call("hoard", 10)
        assert report["opened"] == 3
        assert "3 host files open" in report["message"]
        assert client.call("release") == 3
        assert client.call("hoard", 3)["opened"] == 3  # closing gives the room back


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_max_open_files_is_a_positive_int(tmp_path: Path, bad: object) -> None:
    with pytest.raises((TypeError, ValueError), match="max_open_files must be a positive int"):
        farside.load(HOARDER, files_root=tmp_path, max_open_files=bad)  # type: ignore[arg-type]
