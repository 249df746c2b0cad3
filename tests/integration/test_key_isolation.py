"""The platform key never enters a process that runs enclave code (issue 13, finding 1).

The review read the key out of a proxy: it arrived on the proxy's stdin, and Python's
stdin buffer kept the PEM for enclave code to find. Now a platform agent holds it and
the proxy gets only a channel, which it closes before enclave code runs. These tests
look for the key the way an attacker with the proxy's memory would: they read every
readable mapping of the loaded proxy through /proc/PID/mem (as root) and search for the
raw private key and its PEM body, in each provisioning mode; they check the proxy's
argv, environment and stdin too. tests/integration/test_fleet.py does the same on a
fleet host.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import farside
from farside.attestation.platform import PLATFORM_KEY, init_platform, load_platform_key

from ._memory import found_in, memory_of, secrets_of
from ._provision import PKI, ServerFactory, pki, servers
from ._support import QUICKSTART

__all__ = ["pki", "servers"]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="reading another process's memory needs root"
)


def proxy_pid(client: farside.EnclaveClient) -> int:
    lease = client._lease
    return int(lease.handle.process.pid)


def test_scanning_finds_a_key_where_there_is_one(tmp_path: Path) -> None:
    """The scan itself works: it finds the key in a process that does hold it."""
    init_platform(tmp_path)
    secrets = secrets_of(tmp_path)
    holder = load_platform_key(tmp_path / PLATFORM_KEY)  # noqa: F841 (kept alive on purpose)
    found = set()
    for region in memory_of(os.getpid()):
        found |= {name for name, value in secrets.items() if value in region}
    assert "raw private key" in found


def test_a_local_proxy_holds_no_trace_of_the_platform_key(tmp_path: Path) -> None:
    init_platform(tmp_path / "platform")
    provision = farside.LocalProvision(platform_dir=tmp_path / "platform")
    policy = farside.AttestationPolicy(
        platform_keys=(tmp_path / "platform" / "platform.pub",), allow_debug=True
    )
    with farside.load(QUICKSTART, provision=provision, policy=policy) as enclave:
        assert enclave.call("decrypt", enclave.call("encrypt", "sealed")) == "sealed"
        assert found_in(proxy_pid(enclave), secrets_of(tmp_path / "platform")) == []


def test_a_provision_servers_proxy_holds_no_trace_of_the_platform_key(
    servers: ServerFactory, pki: PKI
) -> None:
    server = servers()
    client = servers.load(servers.remote(server))
    assert client.call("decrypt", client.call("encrypt", "sealed")) == "sealed"
    [info] = servers.listing(server)
    assert found_in(info.pid, secrets_of(pki.platform)) == []


def test_sealing_still_works_across_loads_with_a_platform_directory(tmp_path: Path) -> None:
    """The keys the agent derives are the platform's: a second proxy opens the first's blob."""
    sealer = Path(__file__).resolve().parent.parent / "enclaves" / "sealer.py"
    init_platform(tmp_path / "platform")
    provision = farside.LocalProvision(platform_dir=tmp_path / "platform")
    policy = farside.AttestationPolicy(
        platform_keys=(tmp_path / "platform" / "platform.pub",), allow_debug=True
    )
    with farside.load(sealer, provision=provision, policy=policy) as first:
        blob = first.call("seal_it", b"secret")
    with farside.load(sealer, provision=provision, policy=policy) as second:
        assert second.call("unseal_it", blob) == b"secret"
