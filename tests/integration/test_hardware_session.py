"""TEE evidence through a real session, without a TEE: provision server -> proxy -> client.

A provision server started with ``--attester tsm`` (or ``nsm``) spawns real
``farside proxy --attester ...`` processes, sandboxed as usual, whose configfs-tsm
kernel or NSM device is a fake signing with a test PKI (tests/integration/
_fake_tee_proxy.py). The client loads an enclave through a real session and
verifies the evidence through the production path, to the test root, which this
process trusts only through the verifier modules' test seam (``FakeTee.trust``).
What the fakes cannot show (the real kernel's and NSM's behaviour, the vendors'
chains) is listed in docs/hardware.md.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from unit._fake_tee import PLATFORMS, FakeTee

import farside
from farside.attestation.bundle_files import load_bundle
from farside.attestation.hardware import (
    HardwareExpectations,
    NitroExpectations,
    TdxExpectations,
)
from farside.provision.server import ProvisionServer
from farside.proxy.sandbox import probe

from ._fake_tee_proxy import FAKE_TEE_VARIABLE, launcher
from ._provision import QUICKSTART, ServerFactory, pki, servers
from ._support import ENCLAVES, wait_until

__all__ = ["pki", "servers"]  # fixtures used here

SEALER = ENCLAVES / "sealer.py"
_count = itertools.count()

StartServer = Callable[[FakeTee], ProvisionServer]


@pytest.fixture
def tee_server(
    servers: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StartServer:
    """``tee_server(tee)``: a provision server whose proxies attest with ``tee`` (fake)."""

    def start(tee: FakeTee) -> ProvisionServer:
        directory = tmp_path / f"tee-{next(_count)}"
        directory.mkdir()
        tee.save(directory / "tee.json")
        monkeypatch.setenv(FAKE_TEE_VARIABLE, str(directory / "tee.json"))
        tee.trust(monkeypatch)
        settings: dict[str, Any] = {
            "platform_dir": None,  # no platform key: the TEE vouches
            "python": launcher(directory),
            "proxy_attester": tee.attester,
        }
        if tee.attester == "tsm":
            (directory / "tsm").mkdir()
            settings["proxy_tsm_root"] = str(directory / "tsm")
        else:
            (directory / "nsm").touch()  # the fake answers; the proxy checks it exists
            settings["proxy_nsm_device"] = str(directory / "nsm")
        return servers(**settings)

    return start


def load(
    servers: ServerFactory,
    server: ProvisionServer,
    policy: farside.AttestationPolicy | None,
    **kwargs: Any,
) -> farside.EnclaveClient:
    return servers.load(servers.remote(server), policy=policy, **kwargs)


def refused(
    servers: ServerFactory,
    server: ProvisionServer,
    policy: farside.AttestationPolicy | None,
    **kwargs: Any,
) -> str:
    """Load and return the check of the ``AttestationError``; the server is left empty."""
    with pytest.raises(farside.AttestationError) as caught:
        load(servers, server, policy, **kwargs)
    assert f"({caught.value.check})" in str(caught.value)
    assert wait_until(lambda: server.enclave_count() == 0, 10)
    return caught.value.check


@pytest.mark.parametrize("platform", PLATFORMS)
def test_an_enclave_loads_through_tee_evidence(
    platform: str, tee_server: StartServer, servers: ServerFactory
) -> None:
    tee = FakeTee.make(platform)
    server = tee_server(tee)
    applied = tuple(layer for layer in ("landlock-fs", "seccomp") if not probe().get(layer))
    policy = farside.AttestationPolicy(
        hardware=tee.expectations(), allow_debug=True, require_sandbox=applied
    )
    with load(servers, server, policy) as client:
        sealed = client.call("encrypt", "through the TEE")
        assert client.call("decrypt", sealed) == "through the TEE"
        bundle = load_bundle(QUICKSTART, debug=True)
        assert client.measurement == bundle.measurement().hex()
    # The proxy's report entries (a fake configfs tree) are all gone again.
    if tee.attester == "tsm":
        root = Path(server.config.proxy_tsm_root or "")
        assert list(root.iterdir()) == []


@pytest.mark.parametrize(
    ("platform", "expectations", "check"),
    [
        ("tdx", HardwareExpectations(tdx=TdxExpectations(mrtds=(b"\x01" * 48,))), "measurement"),
        ("nitro", HardwareExpectations(nitro=NitroExpectations(pcrs={0: b"\x01" * 48})), "pcr"),
    ],
)
def test_a_mismatching_tee_measurement_is_refused(
    platform: str,
    expectations: HardwareExpectations,
    check: str,
    tee_server: StartServer,
    servers: ServerFactory,
) -> None:
    server = tee_server(FakeTee.make(platform))
    policy = farside.AttestationPolicy(hardware=expectations, allow_debug=True)
    assert refused(servers, server, policy) == check


def test_a_debug_tee_is_refused_under_a_no_debug_policy(
    tee_server: StartServer, servers: ServerFactory
) -> None:
    tee = FakeTee.make("sev-snp", debug=True)
    server = tee_server(tee)
    policy = farside.AttestationPolicy(hardware=tee.expectations())
    assert refused(servers, server, policy, debug=False) == "debug"


def test_hardware_evidence_needs_expectations_for_its_platform(
    tee_server: StartServer, servers: ServerFactory
) -> None:
    server = tee_server(FakeTee.make("tdx"))
    assert refused(servers, server, None) == "platform"  # the default policy names no TEE
    other = farside.AttestationPolicy(
        hardware=HardwareExpectations(nitro=NitroExpectations()), allow_debug=True
    )
    assert refused(servers, server, other) == "platform"


def test_sealing_under_a_hardware_attester_says_it_is_not_implemented(
    tee_server: StartServer, servers: ServerFactory
) -> None:
    tee = FakeTee.make("nitro")
    server = tee_server(tee)
    policy = farside.AttestationPolicy(hardware=tee.expectations(), allow_debug=True)
    client = farside.load(SEALER, provision=servers.remote(server), policy=policy)
    try:
        with pytest.raises(farside.EnclaveCallError) as caught:
            client.call("seal_it", b"secret")
        assert caught.value.remote_type == "NotImplementedError"
        assert "TEE's own key derivation" in caught.value.message
        with pytest.raises(farside.EnclaveCallError) as caught:
            client.call("unseal_it", b"any blob")
        assert caught.value.remote_type == "NotImplementedError"
    finally:
        farside.EnclaveManager.instance().destroy_enclave(client)
