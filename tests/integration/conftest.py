"""The session's wire, and shared enclaves (loading one costs a process start).

Every integration module runs once per transport: ``transport`` sets
``$FARSIDE_TRANSPORT``, which ``LocalProvision`` and ``RemoteProvision`` read when
they are not told otherwise, so each test exercises gRPC and the stream alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import farside
from farside.transport.factory import TRANSPORT_VARIABLE, TRANSPORTS

from ._support import WORKER


@pytest.fixture(scope="module", autouse=True, params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    """The wire every session of the module uses ("grpc" or "stream")."""
    before = os.environ.get(TRANSPORT_VARIABLE)
    os.environ[TRANSPORT_VARIABLE] = request.param
    yield request.param
    if before is None:
        os.environ.pop(TRANSPORT_VARIABLE, None)
    else:
        os.environ[TRANSPORT_VARIABLE] = before


@pytest.fixture(scope="module")
def files_dir(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Path:
    """The files root of the module's shared worker enclave."""
    return tmp_path_factory.mktemp("files")


@pytest.fixture(scope="module")
def worker(files_dir: Path, transport: str) -> Iterator[farside.EnclaveClient]:
    """A worker enclave shared by the tests of one module (they must not destroy it)."""
    client = farside.load(WORKER, files_root=files_dir)
    yield client
    farside.EnclaveManager.instance().destroy_enclave(client)
