"""Attestation with real proxies: the enclave proves what it is before it gets anything.

Every refused load here is checked three ways that nothing of the client's
configuration or input reached the enclave:

* on the wire: the client's transport is wrapped (``wire``), and after Open and the
  bundle the client sent nothing but Close; the configuration's secret is in none
  of its frames;
* inside the enclave: tests/enclaves/attest_probe.py writes a marker when its code
  is loaded (so these proxies run with ``sandbox="off"``) and another (and calls the
  client's exit handler ``seen``) when ``initialize`` gets the configuration; a
  refused load leaves the first and never the second, and ``seen`` is never called;
* the proxy is gone afterwards (its pid is in the enclave's marker), and the name
  is free again in the ``EnclaveManager``.

Most cases run against both provisioners (``rig``): ``LocalProvision`` (a child
process, Unix socket, this process's ephemeral platform key) and ``RemoteProvision``
to an in-process provision server (mTLS on loopback, a per-proxy TLS key the
evidence binds, the test PKI's platform key).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import farside
from farside._proto.v1 import attestation_pb2, session_pb2 as pb
from farside.attestation import (
    build_bundle,
    generate_signer_key,
    load_bundle,
    sign_bundle,
    verify_bundle_signature,
)
from farside.attestation.evidence import verify_evidence
from farside.attestation.identity import UNSIGNED
from farside.attestation.platform import init_platform
from farside.protocol import LoadedReceived, Role, SessionCore
from farside.transport import Endpoint, factory
from farside.untrusted import _session
from farside.untrusted._exits import ExitHandlers

from ._provision import PKI, ServerFactory, pki, servers
from ._support import ENCLAVES, process_gone, registered, wait_until

__all__ = ["pki", "servers"]  # fixtures used here

PROBE = ENCLAVES / "attest_probe.py"
# The probe's witness is a marker file on the real filesystem, which the proxy's sandbox
# (tests/integration/test_sandbox.py) forbids: these proxies run without it.
UNSANDBOXED = "off"
THIEF = ENCLAVES / "key_thief.py"
MARKER_VAR = "FARSIDE_TEST_PROBE_DIR"
TAG = b"attest-probe original"
LOAD_TIMEOUT = 20.0


# --------------------------------------------------------------------- witnesses


class Wire:
    """Every frame the client's session transports sent and received, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.frames: list[tuple[str, str, bytes]] = []  # (direction, kind, serialized)

    def record(self, direction: str, frames: list[pb.Frame]) -> None:
        with self._lock:
            for frame in frames:
                kind = frame.WhichOneof("kind") or "?"
                self.frames.append((direction, kind, frame.SerializeToString()))

    def kinds(self, direction: str) -> list[str]:
        with self._lock:
            return [kind for d, kind, _ in self.frames if d == direction]

    def sent_bytes(self) -> list[bytes]:
        with self._lock:
            return [data for d, _, data in self.frames if d == "out"]

    def index(self, direction: str, kind: str) -> int:
        with self._lock:
            for position, (d, k, _) in enumerate(self.frames):
                if (d, k) == (direction, kind):
                    return position
        raise AssertionError(f"no {direction} {kind} frame in {self.frames!r}")

    def clear(self) -> None:
        with self._lock:
            self.frames.clear()


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    """Record what every session ``farside.load`` opens sends and receives."""
    record = Wire()

    connect = factory.connect

    def spying_connect(*args: Any, **kwargs: Any) -> Any:
        transport = connect(*args, **kwargs)  # whichever wire the session uses
        start, send = transport.start, transport.send

        def spy_start(sink: Any, lost: Any) -> None:
            def spy(frames: list[pb.Frame]) -> None:
                record.record("in", frames)
                sink(frames)

            start(spy, lost)

        def spy_send(frames: list[pb.Frame]) -> None:
            record.record("out", frames)
            send(frames)

        transport.start, transport.send = spy_start, spy_send
        return transport

    monkeypatch.setattr(factory, "connect", spying_connect)
    return record


CONNECT = factory.connect  # before any test replaces it


class Witness:
    """The client's exit handler ``seen``: records what ``initialize`` handed it."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def __call__(self, seen: Any) -> None:
        self.calls.append(seen)


class Probe:
    """Marker directory, exit-handler witness and a fresh secret for the probe enclave."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self._root = root
        self._monkeypatch = monkeypatch
        self._round = 0
        self.markers = root
        self.witness = Witness()
        self.secret = ""
        self.fresh()

    def fresh(self) -> None:
        """Start over: new markers directory, witness and secret."""
        self._round += 1
        self.markers = self._root / f"markers-{self._round}"
        self.markers.mkdir()
        self._monkeypatch.setenv(MARKER_VAR, str(self.markers))
        self.witness = Witness()
        self.secret = f"client-secret-{secrets.token_hex(8)}"

    def config(self) -> farside.EnclaveConfig:
        # The enclave's environment is its configuration's alone: the markers directory
        # travels there (the probe leaves it out of what it reports).
        return farside.EnclaveConfig(
            user={"secret": self.secret},
            environment={"PROBE_SECRET": self.secret, MARKER_VAR: str(self.markers)},
        )

    def marked(self, suffix: str) -> dict[int, bytes]:
        """pid -> contents of the markers with this suffix."""
        return {int(path.stem): path.read_bytes() for path in self.markers.glob(f"*.{suffix}")}


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Probe:
    return Probe(tmp_path, monkeypatch)


# --------------------------------------------------------------------- provisioners


class Rig:
    """One provisioner and the policy pieces a client of it needs."""

    def __init__(
        self,
        kind: str,
        provision: farside.Provisioner,
        platform_keys: tuple[object, ...] = (),
        server: Any = None,
    ) -> None:
        self.kind = kind
        self.provision = provision
        self.platform_keys = platform_keys
        self.server = server
        self.clients: list[farside.EnclaveClient] = []

    def policy(self, **settings: Any) -> farside.AttestationPolicy:
        """A policy that trusts this rig's platform (LocalProvision's is added by farside)."""
        return farside.AttestationPolicy(platform_keys=self.platform_keys, **settings)

    def load(
        self, path: Path, probe: Probe, *, name: str | None = None, **kwargs: Any
    ) -> farside.EnclaveClient:
        client = farside.load(
            path,
            name=name,
            provision=self.provision,
            config=probe.config(),
            exit_handlers={"seen": probe.witness},
            load_timeout=LOAD_TIMEOUT,
            **kwargs,
        )
        self.clients.append(client)
        return client

    def idle(self) -> bool:
        return self.server is None or self.server.enclave_count() == 0

    def close(self) -> None:
        for client in self.clients:
            if not client.closed:
                with contextlib.suppress(Exception):
                    farside.EnclaveManager.instance().destroy_enclave(client, skip_finalize=True)


@pytest.fixture(params=["local", "remote"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    if request.param == "local":
        made = Rig("local", farside.LocalProvision(sandbox=UNSANDBOXED))
    else:
        factory: ServerFactory = request.getfixturevalue("servers")
        server = factory(proxy_sandbox=UNSANDBOXED)
        made = Rig("remote", factory.remote(server), (factory.pki.platform_pub,), server=server)
    try:
        yield made
    finally:
        made.close()


# --------------------------------------------------------------------- checks


def refused_load(
    rig: Rig, probe: Probe, wire: Wire, path: Path, check: str, **kwargs: Any
) -> farside.AttestationError:
    """Load ``path``; it must be refused with ``check``, and nothing may have reached it."""
    name = f"refused-{secrets.token_hex(4)}"
    with pytest.raises(farside.AttestationError) as caught:
        rig.load(path, probe, name=name, **kwargs)
    error = caught.value
    assert error.check == check, error
    assert_nothing_reached(probe, wire, name)
    assert wait_until(rig.idle, 10), "the provision server still lists the refused enclave"
    return error


def assert_nothing_reached(probe: Probe, wire: Wire, name: str) -> None:
    # On the wire: Open, the bundle, then only Close; the secret in no frame.
    sent = wire.kinds("out")
    assert sent[:1] == ["open"], sent
    assert set(sent[1:]) <= {"bundle", "close"}, f"the client sent {sent} to a refused enclave"
    assert "loaded" in wire.kinds("in"), "the refusal did not come after the proxy's evidence"
    secret = probe.secret.encode()
    assert not any(secret in frame for frame in wire.sent_bytes())
    # Inside the enclave: none of its code ran, not even its module's top level (the
    # proxy imports the bundle only when the client, having accepted the evidence, calls
    # initialize). The witness itself is armed: accepted loads leave a marker.
    assert probe.marked("loaded") == {}
    assert probe.marked("initialized") == {}
    assert probe.marked("input") == {}
    assert probe.witness.calls == []
    # Nothing is left: the name (the rig waits for the proxy to be gone).
    assert registered(name) is None


def assert_initialized_after_attestation(probe: Probe, wire: Wire) -> None:
    """The positive counterpart: the configuration went out after Loaded, and arrived."""
    assert wire.index("out", "call") > wire.index("in", "loaded")
    secret = probe.secret.encode()
    first_secret = next(
        i for i, (d, _, data) in enumerate(wire.frames) if d == "out" and secret in data
    )
    assert first_secret > wire.index("in", "loaded")
    assert probe.witness.calls == [
        {
            "user": {"secret": probe.secret},
            "environment": {"PROBE_SECRET": probe.secret},
            "tag": TAG.decode(),
        }
    ]
    assert len(probe.marked("initialized")) == 1


def tampered_copy(directory: Path) -> Path:
    """The probe with one byte of its source changed (it still runs)."""
    data = PROBE.read_bytes()
    index = data.index(TAG) + len(b"attest-probe ")
    directory.mkdir()
    copy = directory / PROBE.name
    copy.write_bytes(data[:index] + b"O" + data[index + 1 :])  # original -> Original
    return copy


@pytest.fixture
def signers(tmp_path: Path) -> dict[str, Path]:
    """Two signer keys, A and B."""
    keys = {}
    for label in ("A", "B"):
        keys[label] = tmp_path / f"signer-{label}.key"
        generate_signer_key(keys[label])
    return keys


def signed_probe(tmp_path: Path, key: Path | None, **manifest: Any) -> Path:
    """The probe built as an archive (signed with ``key`` unless None)."""
    archive = tmp_path / f"probe-{secrets.token_hex(3)}.fsb"
    build_bundle(PROBE, archive, **manifest)
    if key is not None:
        sign_bundle(archive, key)
    return archive


def signer_of_key(tmp_path: Path, key: Path) -> bytes:
    """The signer identity of ``key``, as the bundle signature check computes it."""
    return verify_bundle_signature(load_bundle(signed_probe(tmp_path, key)))


# --------------------------------------------------------------------- it works


def test_local_default_policy_attests_and_then_initializes(probe: Probe, wire: Wire) -> None:
    rig = Rig("local", farside.LocalProvision(sandbox=UNSANDBOXED))
    expected = load_bundle(PROBE).measurement()
    with rig.load(PROBE, probe) as client:  # no policy: exactly this bundle, debug as loaded
        identity = client.identity
        assert identity.measurement == expected
        assert client.measurement == expected.hex()
        assert identity.debug is True
        assert identity.signer == UNSIGNED
        assert not identity.signed
        assert (identity.product_id, identity.security_version) == (0, 0)
        assert client.call("tag") == TAG.decode()
        assert_initialized_after_attestation(probe, wire)
    [pid] = probe.marked("loaded")
    assert wait_until(lambda: process_gone(pid), 5)


def test_remote_signed_bundle_attests_with_its_signer(
    servers: ServerFactory, probe: Probe, wire: Wire, tmp_path: Path, signers: dict[str, Path]
) -> None:
    server = servers(proxy_sandbox=UNSANDBOXED)
    rig = Rig("remote", servers.remote(server), (servers.pki.platform_pub,), server=server)
    archive = signed_probe(tmp_path, signers["A"], product_id=5, security_version=2, debug=False)
    signer = verify_bundle_signature(load_bundle(archive))
    policy = rig.policy(
        signers=(signer.hex(),), product_id=5, min_security_version=2, allow_debug=False
    )
    with rig.load(archive, probe, policy=policy, debug=False) as client:
        identity = client.identity
        assert identity.signer == signer
        assert identity.signed
        assert identity.measurement == load_bundle(archive).measurement()
        assert (identity.product_id, identity.security_version, identity.debug) == (5, 2, False)
        assert client._lease.tls_public_key  # the evidence was bound to the pinned TLS key
        assert_initialized_after_attestation(probe, wire)
    assert wait_until(rig.idle, 10)


def test_remote_trust_any_platform_is_logged(
    servers: ServerFactory, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    server = servers(proxy_sandbox=UNSANDBOXED)
    rig = Rig("remote", servers.remote(server), server=server)
    policy = farside.AttestationPolicy(trust_any_platform=True, allow_debug=True)
    with caplog.at_level(logging.WARNING, logger="farside"), rig.load(PROBE, probe, policy=policy):
        pass
    assert any("trust_any_platform" in r.getMessage() for r in caplog.records)
    assert wait_until(rig.idle, 10)


# --------------------------------------------------------------------- refused: claims


def test_tampered_bundle_against_the_expected_measurement(
    rig: Rig, probe: Probe, wire: Wire, tmp_path: Path
) -> None:
    original = load_bundle(PROBE).measurement()
    tampered = tampered_copy(tmp_path / "tampered")
    assert load_bundle(tampered).measurement() != original
    policy = rig.policy(measurements=(original.hex(),), allow_debug=True)
    error = refused_load(rig, probe, wire, tampered, "measurement", policy=policy)
    assert load_bundle(tampered).measurement().hex() in str(error)
    # The proxy measured the tampered code and ran none of it (refused_load checks).


def test_debug_enclave_under_a_policy_that_forbids_debug(
    rig: Rig, probe: Probe, wire: Wire
) -> None:
    policy = rig.policy(allow_debug=False)
    refused_load(rig, probe, wire, PROBE, "debug", policy=policy, debug=True)


def test_lower_security_version_than_required(
    rig: Rig, probe: Probe, wire: Wire, tmp_path: Path
) -> None:
    archive = signed_probe(tmp_path, None, security_version=1)
    policy = rig.policy(min_security_version=2, allow_debug=True)
    error = refused_load(rig, probe, wire, archive, "security version", policy=policy)
    assert "1" in str(error)
    assert "2" in str(error)
    # The same archive is good enough for a policy that asks for version 1.
    probe.fresh()
    wire.clear()
    with rig.load(archive, probe, policy=rig.policy(min_security_version=1, allow_debug=True)) as c:
        assert c.identity.security_version == 1
        assert_initialized_after_attestation(probe, wire)


def test_signer_policy(
    rig: Rig, probe: Probe, wire: Wire, tmp_path: Path, signers: dict[str, Path]
) -> None:
    signer_a = signer_of_key(tmp_path, signers["A"])
    signer_b = signer_of_key(tmp_path, signers["B"])
    assert signer_a != signer_b
    by_a = signed_probe(tmp_path, signers["A"])
    unsigned = signed_probe(tmp_path, None)

    with rig.load(by_a, probe, policy=rig.policy(signers=(signer_a,), allow_debug=True)) as c:
        assert c.identity.signer == signer_a
        assert_initialized_after_attestation(probe, wire)

    for bundle in (by_a, unsigned):
        probe.fresh()
        wire.clear()
        other = signer_b if bundle is by_a else signer_a
        policy = rig.policy(signers=(other,), allow_debug=True)
        error = refused_load(rig, probe, wire, bundle, "signer", policy=policy)
        shown = signer_a if bundle is by_a else UNSIGNED
        assert shown.hex() in str(error)


def test_product_id_policy(rig: Rig, probe: Probe, wire: Wire, tmp_path: Path) -> None:
    archive = signed_probe(tmp_path, None, product_id=3)
    policy = rig.policy(product_id=4, allow_debug=True)
    refused_load(rig, probe, wire, archive, "product id", policy=policy)


# --------------------------------------------------------------------- refused: platform


class Disowning:
    """A provisioner that vouches for no platform (its leases carry no platform keys)."""

    def __init__(self, inner: farside.Provisioner) -> None:
        self.inner = inner

    def provision(self, *, name: str, timeout: float) -> farside.ProxyLease:
        lease = self.inner.provision(name=name, timeout=timeout)
        return dataclasses.replace(lease, platform_keys=())

    def release(self, lease: farside.ProxyLease) -> None:
        self.inner.release(lease)


def test_local_evidence_from_a_platform_nobody_vouches_for(probe: Probe, wire: Wire) -> None:
    rig = Rig("local", Disowning(farside.LocalProvision(sandbox=UNSANDBOXED)))
    policy = farside.AttestationPolicy(allow_debug=True)
    refused_load(rig, probe, wire, PROBE, "platform signature", policy=policy)


def test_remote_evidence_signed_by_an_unknown_platform_key(
    servers: ServerFactory, probe: Probe, wire: Wire, tmp_path: Path
) -> None:
    """The server's machine has the PKI's platform key; the client trusts another machine."""
    server = servers(proxy_sandbox=UNSANDBOXED)
    other = init_platform(tmp_path / "other-platform")
    rig = Rig("remote", servers.remote(server), (other,), server=server)
    error = refused_load(
        rig, probe, wire, PROBE, "platform signature", policy=rig.policy(allow_debug=True)
    )
    assert "platform" in str(error)


def test_remote_proxy_without_a_platform_key(
    servers: ServerFactory, probe: Probe, wire: Wire
) -> None:
    """A server with no platform identity: its proxies' evidence is trusted by no one."""
    server = servers(platform_dir=None, proxy_sandbox=UNSANDBOXED)
    rig = Rig("remote", servers.remote(server), (servers.pki.platform_pub,), server=server)
    refused_load(rig, probe, wire, PROBE, "platform signature", policy=rig.policy(allow_debug=True))


# --------------------------------------------------------------------- refused: the session


class HandSession:
    """A client session opened by hand, as ``open_session`` does, up to the proxy's Loaded."""

    def __init__(
        self, lease: farside.ProxyLease, files_root: Path, nonce: bytes, client_nonce: bytes
    ) -> None:
        bundle = load_bundle(PROBE)
        self.lease = lease
        self.nonce = nonce
        self.client_nonce = client_nonce
        # the wire spy (which replaces factory.connect) must not see this hand-made session
        self.transport = CONNECT(lease.transport, lease.address, token=lease.token, tls=lease.tls)
        self.endpoint = Endpoint(
            SessionCore(Role.CLIENT),
            self.transport,
            ExitHandlers(files_root, {}),
            error_from_exception=_session.client_error,
        )
        self.transport.start(self.endpoint.feed, self.endpoint.fail)
        self.endpoint.run_locked(
            lambda core: core.open(bundle, nonce=nonce, client_nonce=client_nonce)
        )
        self.loaded = self.endpoint.wait_loaded(LOAD_TIMEOUT)
        assert self.loaded.error is None, self.loaded.error

    def close(self) -> None:
        with contextlib.suppress(farside.EnclaveError):
            self.endpoint.run_locked(lambda core: core.close())
        self.transport.close(timeout=1.0)
        self.endpoint.fail(farside.EnclaveLoadError("closed by the test"))


def load_config_for(provision: farside.Provisioner, pki: PKI) -> farside.EnclaveLoadConfig:
    return farside.EnclaveLoadConfig(
        name="hand-session",
        remote_load_config=farside.RemoteLoadConfig(
            proxy_config=farside.RemoteProxyClientConfig(provision=provision, policy=pki.policy()),
            sim_load_config=farside.SimLoadConfig(enclave_path=PROBE),
        ),
    )


def attestation_check(
    config: farside.EnclaveLoadConfig,
    loaded: LoadedReceived,
    session: HandSession,
    *,
    client_nonce: bytes | None = None,
) -> str:
    """Run the client's own verification of ``loaded`` in ``session``; return the failed check."""
    sent = load_bundle(PROBE).measurement()
    key = session.client_nonce if client_nonce is None else client_nonce
    with pytest.raises(farside.AttestationError) as caught:
        _session._attest(config, sent, loaded, session.lease, session.nonce, key)
    return caught.value.check


def test_replayed_and_relayed_evidence_at_the_session_level(
    servers: ServerFactory, probe: Probe, tmp_path: Path
) -> None:
    """Three proxies, sessions opened by hand; the client's ``_attest`` on mixed-up evidence.

    A: an earlier session (nonce N1, key K1). B: the session being attested (N2, K2).
    C: a genuine proxy to which an attacker relayed B's Open (N2, K2): its evidence has
    B's nonce but C's TLS key.
    """
    server = servers(proxy_sandbox=UNSANDBOXED)
    provision = servers.remote(server)
    config = load_config_for(provision, servers.pki)
    leases = [provision.provision(name=f"hand-{label}", timeout=LOAD_TIMEOUT) for label in "ABC"]
    sessions: list[HandSession] = []
    try:
        n1, k1, n2, k2 = (os.urandom(32) for _ in range(4))
        a = HandSession(leases[0], tmp_path, n1, k1)
        sessions.append(a)
        b = HandSession(leases[1], tmp_path, n2, k2)
        sessions.append(b)
        c = HandSession(leases[2], tmp_path, n2, k2)
        sessions.append(c)
        assert len({lease.tls_public_key for lease in leases}) == 3

        # Each session's own evidence is good.
        sent = load_bundle(PROBE).measurement()
        for session in (a, b, c):
            identity = _session._attest(
                config, sent, session.loaded, session.lease, session.nonce, session.client_nonce
            )
            assert identity.measurement == sent

        # (c) A replay: A's whole Loaded (evidence and key) presented in session B.
        assert attestation_check(config, a.loaded, b) == "nonce"
        # (d) C's evidence, made for B's nonce and client key but C's TLS key, in session B.
        assert attestation_check(config, c.loaded, b) == "channel binding"
        # B's evidence with another session's X25519 key, or for another client key.
        swapped = dataclasses.replace(b.loaded, proxy_nonce=a.loaded.proxy_nonce)
        assert attestation_check(config, swapped, b) == "channel binding"
        assert attestation_check(config, b.loaded, b, client_nonce=k1) == "channel binding"
    finally:
        for session in sessions:
            session.close()
        for lease in leases:
            provision.release(lease)
    assert wait_until(lambda: server.enclave_count() == 0, 10), servers.listing(server)
    # Three proxies attested; none of them ran a line of the enclave's code.
    assert probe.marked("loaded") == {}
    assert probe.marked("initialized") == {}


class _Opens:
    """What the client put in each Open: (nonce, client key)."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, bytes]] = []


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> _Opens:
    record = _Opens()

    class RecordingCore(SessionCore):
        def open(self, bundle: Any, **kwargs: Any) -> None:
            record.seen.append((kwargs.get("nonce", b""), kwargs.get("client_nonce", b"")))
            super().open(bundle, **kwargs)

    monkeypatch.setattr(_session, "SessionCore", RecordingCore)
    return record


def test_replayed_evidence_end_to_end(
    servers: ServerFactory, probe: Probe, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A man in the middle answers a new session with an earlier session's Loaded."""
    server = servers(proxy_sandbox=UNSANDBOXED)
    rig = Rig("remote", servers.remote(server), (servers.pki.platform_pub,), server=server)
    recorded: list[LoadedReceived] = []

    class Replaying(Endpoint):
        def wait_loaded(self, timeout: float) -> LoadedReceived:
            loaded = super().wait_loaded(timeout)
            if not recorded:
                recorded.append(loaded)
                return loaded
            return recorded[0]

    monkeypatch.setattr(_session, "Endpoint", Replaying)
    with rig.load(PROBE, probe, policy=rig.policy(allow_debug=True)):
        assert_initialized_after_attestation(probe, wire)
    assert recorded
    probe.fresh()
    wire.clear()
    refused_load(rig, probe, wire, PROBE, "nonce", policy=rig.policy(allow_debug=True))


def test_relayed_evidence_end_to_end(
    servers: ServerFactory,
    probe: Probe,
    wire: Wire,
    opens: _Opens,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A man in the middle relays the client's Open to another genuine proxy.

    That proxy's evidence carries the client's own nonce and client key, and is
    signed by a trusted platform, but binds its own TLS key, not the one the
    client's session is pinned to.
    """
    server = servers(proxy_sandbox=UNSANDBOXED)
    provision = servers.remote(server)
    rig = Rig("remote", provision, (servers.pki.platform_pub,), server=server)
    relays: list[farside.ProxyLease] = []

    class Relaying(Endpoint):
        def wait_loaded(self, timeout: float) -> LoadedReceived:
            super().wait_loaded(timeout)  # the real answer is thrown away
            nonce, client_nonce = opens.seen[-1]
            lease = provision.provision(name="relayed", timeout=timeout)
            relays.append(lease)
            session = HandSession(lease, tmp_path, nonce, client_nonce)
            session.close()  # the relay has what it wanted
            provision.release(lease)
            return session.loaded

    monkeypatch.setattr(_session, "Endpoint", Relaying)
    refused_load(rig, probe, wire, PROBE, "channel binding", policy=rig.policy(allow_debug=True))
    assert len(relays) == 1
    assert wait_until(rig.idle, 10)
    # Neither the client's proxy nor the relay's ran a line of the enclave's code.
    assert probe.marked("loaded") == {}
    assert probe.marked("initialized") == {}


# --------------------------------------------------------------------- enclave code


def test_enclave_code_cannot_forge_evidence() -> None:
    """docs/security.md: the key is dropped before enclave code runs, so it cannot forge."""
    fake_measurement, fake_signer = b"\xaa" * 32, b"\xbb" * 32
    nonce, binding = os.urandom(32), os.urandom(32)
    with farside.load(THIEF, load_timeout=LOAD_TIMEOUT) as client:
        platform_keys = client._lease.platform_keys
        forged = client.call("forge", fake_measurement, fake_signer, nonce, binding)
    policy = farside.AttestationPolicy(
        platform_keys=platform_keys, measurements=(fake_measurement,), signers=(fake_signer,)
    )
    accepted = []
    for blob, where in forged:
        with contextlib.suppress(farside.AttestationError):
            evidence = attestation_pb2.Evidence.FromString(blob)
            verify_evidence(evidence, policy, nonce=nonce, binding=binding)
            accepted.append(where)
    assert accepted == [], f"enclave code signed trusted evidence with the key at {accepted}"
