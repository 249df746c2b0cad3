"""The Nitro Enclaves path on one machine: a proxy on vsock, the parent's relay, a client.

A real ``farside proxy --transport vsock --listen vsock:any:PORT`` process (with TLS
and a channel to a platform agent) listens on the Unix-socket
stand-in for vsock (``farside_vsock_standin.py``: no ``AF_VSOCK`` socket is opened);
a ``VsockRelay`` on 127.0.0.1 stands for ``farside vsock-relay`` on the parent; the
client loads the quickstart enclave with the ``"stream"`` transport to the relay's
address, pinning the proxy's certificate and checking its evidence, through a
provisioner of a few lines (the shape docs/hardware.md gives for Nitro).
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import farside
from farside.examples.quickstart.demo_driver import DEFAULT_ENCLAVE
from farside.provision._agent import PlatformAgent
from farside.provision._spawn import ProxyProcess, reap, start_proxy
from farside.provision.base import ProxyLease
from farside.transport.relay import VsockRelay

from .farside_vsock_standin import standin

STANDIN = Path(__file__).with_name("farside_vsock_standin.py")
PORT = 5005
WAIT = 5.0


class RelayedVsockProvision:
    """A proxy on the vsock stand-in, reached with the stream transport through a relay.

    On Nitro the proxy is started inside the enclave by its image's entry point, and
    the operator hands the client its certificate; here this provisioner starts it.
    """

    def __init__(self, standin_dir: Path, relay_address: str, agent: PlatformAgent) -> None:
        self.standin_dir = standin_dir
        self.relay_address = relay_address
        self.agent = agent

    def provision(self, *, name: str, timeout: float) -> ProxyLease:
        directory = Path(tempfile.mkdtemp(prefix="farside-"))
        token = secrets.token_urlsafe(32)
        channel = self.agent.channel()
        command = [
            sys.executable,
            str(STANDIN),
            str(self.standin_dir),
            "proxy",
            "--transport",
            "vsock",
            "--listen",
            f"vsock:any:{PORT}",
            "--token-stdin",
            "--agent-fd",
            str(channel.fileno()),
            "--tls-ephemeral",
            "127.0.0.1",  # the name the client dials: the relay's
            "--parent-pid",
            str(os.getpid()),
        ]
        with channel:  # the proxy has its own copy once started
            proxy = start_proxy(
                command,
                token=token,
                directory=directory,
                timeout=timeout,
                name=name,
                pass_fds=(channel.fileno(),),
            )
        assert proxy.address == f"vsock:any:{PORT}"
        certificate = (directory / "tls-cert.pem").read_bytes()
        spki = (
            x509.load_pem_x509_certificate(certificate)
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return ProxyLease(
            address=self.relay_address,
            token=token,
            transport="stream",
            tls=farside.TLSConfig(ca=certificate),
            tls_public_key=spki,
            platform_keys=(self.agent.public_key,),
            handle=proxy,
        )

    def release(self, lease: ProxyLease) -> None:
        assert isinstance(lease.handle, ProxyProcess)
        reap(lease.handle, grace=WAIT)


def relay_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("farside-relay")]


def test_an_enclave_loads_and_runs_through_the_relay_on_vsock(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    relay = VsockRelay("127.0.0.1:0", f"vsock:16:{PORT}", sockets=standin(tmp_path))
    address = relay.start()
    agent = PlatformAgent.start(platform_dir=None)
    provision = RelayedVsockProvision(tmp_path, address, agent)
    try:
        with farside.load(DEFAULT_ENCLAVE, provision=provision) as enclave:
            assert relay.connections == 1
            sealed = enclave.call("encrypt", "Asylo Rocks")
            assert enclave.call("decrypt", sealed) == "Asylo Rocks"
            proxy = enclave._lease.handle
        assert isinstance(proxy, ProxyProcess)
        assert proxy.process.wait(timeout=WAIT) == 0, "the proxy did not end with its session"
        deadline = time.monotonic() + WAIT
        while relay.connections and time.monotonic() < deadline:
            time.sleep(0.02)
        assert relay.connections == 0
    finally:
        relay.stop(timeout=WAIT)
        agent.close()
    assert f"Encrypted message:\n{sealed}\n" in capfd.readouterr().out  # the enclave's print
    deadline = time.monotonic() + WAIT
    while relay_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not relay_threads()
