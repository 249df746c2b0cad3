"""Nothing from a proxy is served before its evidence verifies (issue 13, finding 2).

The review's proxy answered the bundle with Loaded and, right behind it, one-way file
calls (``farside.fs.open("PWNED.txt", ...)``, write, close), a call of the client's
exit handler and output: the file was written in the client's files_root and the
handler ran, though the client's policy then refused the enclave. Here a hostile proxy
(in this process, speaking the real stream transport) does the same, with evidence a
client trusts and with evidence it does not; neither reaches a handler, a file or the
terminal.
"""

from __future__ import annotations

import secrets
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import farside
from farside import _values
from farside._proto.v1 import session_pb2 as pb
from farside.attestation.attester import KeyAttester
from farside.attestation.evidence import channel_binding, public_key_bytes, report_data
from farside.attestation.identity import EnclaveIdentity
from farside.protocol import BundleReceived, Role, SessionCore
from farside.transport import factory
from farside.transport.base import Admission, FrameSender

from ._support import QUICKSTART


def oneway(name: str, *args: Any) -> pb.Frame:
    encoded = _values.encode([list(args), {}])
    return pb.Frame(call=pb.Call(thread=1, kind=5, name=name, args=encoded, oneway=True))


ATTACK = [
    oneway("farside.fs.open", "PWNED.txt", "write", ["create", "truncate"], 0o666),
    oneway("farside.fs.write", 1, b"owned"),
    oneway("farside.fs.close", 1),
    pb.Frame(
        call=pb.Call(call_id=2, thread=1, kind=5, name="audit", args=_values.encode([["x"], {}]))
    ),
    oneway("audit", "y"),
    pb.Frame(output=pb.Output(thread=0, stream=1, data=b"PWNED on your terminal\n")),
]


class HostileProxy:
    """A provisioner whose 'proxy' attests with ``key`` and attacks right after Loaded.

    ``together``: Loaded and the attack leave in one message (so they arrive before
    the client can have accepted anything); otherwise in two.
    """

    def __init__(self, key: Ed25519PrivateKey, *, together: bool) -> None:
        self.key = key
        self.together = together
        self._directory = tempfile.TemporaryDirectory(prefix="farside-hostile-")
        self.listeners: list[Any] = []

    def provision(self, *, name: str, timeout: float) -> farside.ProxyLease:
        token = secrets.token_urlsafe(16)
        core = SessionCore(Role.PROXY)
        senders: list[FrameSender] = []

        def on_open(sender: FrameSender) -> Any:
            senders.append(sender)
            return feed

        def feed(frames: list[pb.Frame]) -> None:
            for event in core.receive(frames):
                if isinstance(event, BundleReceived):
                    self._attack(core, senders[0], event)

        address = f"unix:{Path(self._directory.name) / f'{name}.sock'}"
        listener = factory.listen(
            "stream",
            address,
            admission=Admission(token),
            on_open=on_open,
            on_lost=lambda error: None,
        )
        self.listeners.append(listener)
        return farside.ProxyLease(address=listener.start(), token=token, transport="stream")

    def _attack(self, core: SessionCore, sender: FrameSender, event: BundleReceived) -> None:
        identity = EnclaveIdentity(measurement=event.bundle.measurement(), debug=True)
        attester = KeyAttester(self.key)
        attester.register(identity, ())
        proxy_nonce = b"p" * 32
        binding = channel_binding(client_nonce=event.client_nonce, proxy_nonce=proxy_nonce)
        evidence = attester.evidence(report_data(event.nonce, binding))
        core.loaded(identity.measurement, evidence=evidence, proxy_nonce=proxy_nonce)
        loaded = core.frames_to_send()
        if self.together:
            sender.send([*loaded, *ATTACK])
        else:
            sender.send(loaded)
            sender.send(ATTACK)

    def release(self, lease: farside.ProxyLease) -> None:
        pass

    def close(self) -> None:
        for listener in self.listeners:
            listener.stop(grace=1.0)
        self._directory.cleanup()


@pytest.fixture
def platform() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def hostile(request: pytest.FixtureRequest, platform: Ed25519PrivateKey) -> Iterator[HostileProxy]:
    proxy = HostileProxy(platform, together=request.param)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.mark.parametrize(
    ("hostile", "trusted"),
    [(True, True), (True, False), (False, False)],
    ids=[
        "trusted evidence, attack in the same message",
        "untrusted, same message",
        "untrusted, next message",
    ],
    indirect=["hostile"],
)
def test_nothing_reaches_handlers_files_or_the_terminal_before_attestation(
    hostile: HostileProxy,
    trusted: bool,
    platform: Ed25519PrivateKey,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    audited: list[Any] = []
    policy = farside.AttestationPolicy(
        platform_keys=(public_key_bytes(platform if trusted else Ed25519PrivateKey.generate()),),
        allow_debug=True,
    )
    with pytest.raises(farside.EnclaveLoadError) as refused:
        farside.load(
            QUICKSTART,
            provision=hostile,  # type: ignore[arg-type]
            policy=policy,
            files_root=tmp_path,
            exit_handlers={"audit": audited.append},
            load_timeout=10,
        )
    message = str(refused.value)
    if hostile.together:  # the core refuses the attack before the evidence is even looked at
        assert "while the session is attesting" in message, message
    else:  # the client refuses the evidence, or the attack that may arrive first
        assert (
            isinstance(refused.value, farside.AttestationError)
            and refused.value.check == "platform signature"
        ) or "while the session is attesting" in message, message
    assert list(tmp_path.iterdir()) == []  # no PWNED.txt
    assert audited == []
    out, err = capfd.readouterr()
    assert "PWNED" not in out + err
    assert threading.active_count() < 50
