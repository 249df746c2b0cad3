"""Shared enclaves: loading one costs a process start, so modules share them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import farside

from ._support import WORKER


@pytest.fixture(scope="module")
def files_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files root of the module's shared worker enclave."""
    return tmp_path_factory.mktemp("files")


@pytest.fixture(scope="module")
def worker(files_dir: Path) -> Iterator[farside.EnclaveClient]:
    """A worker enclave shared by the tests of one module (they must not destroy it)."""
    client = farside.load(WORKER, files_root=files_dir)
    yield client
    farside.EnclaveManager.instance().destroy_enclave(client)
