"""The platform agent: the one process holding the platform key, and its channel rules.

Each test starts a real agent (``PlatformAgent.start``) on a platform directory whose
key it knows, and talks to it the way a proxy's loader does (``AgentAttester``) or the
way hostile enclave code could (raw datagrams on the channel).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from farside._errors import AttestationError, EnclaveLoadError
from farside._proto.v1 import agent_pb2 as apb
from farside.attestation.agent import MAX_MESSAGE, AgentAttester, AgentError
from farside.attestation.evidence import (
    AttestationPolicy,
    channel_binding,
    public_key_bytes,
    report_data,
    verify_evidence,
)
from farside.attestation.identity import EnclaveIdentity, SealingKeys, sealing_root
from farside.attestation.platform import PLATFORM_KEY, init_platform, load_platform_key
from farside.provision._agent import PlatformAgent

IDENTITY = EnclaveIdentity(
    measurement=bytes(range(32)), signer=bytes(range(32, 64)), product_id=7, security_version=3
)
NONCE = os.urandom(32)
BINDING = channel_binding(client_nonce=b"c" * 32, proxy_nonce=b"p" * 32)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("platform")
    init_platform(directory)
    return directory


@pytest.fixture
def agent(platform: Path) -> Iterator[PlatformAgent]:
    running = PlatformAgent.start(platform_dir=platform)
    try:
        yield running
    finally:
        running.close()
    assert running.process.returncode is not None  # reaped


def ask(channel: socket.socket, data: bytes) -> apb.AgentReply | None:
    """Send raw bytes on a channel; the reply, or None once the agent closed it."""
    channel.send(data)
    reply = channel.recv(MAX_MESSAGE + 1)
    return apb.AgentReply.FromString(reply) if reply else None


def register(channel: socket.socket) -> bytes:
    return apb.AgentRequest(
        register=apb.Register(
            measurement=IDENTITY.measurement,
            signer=IDENTITY.signer,
            product_id=IDENTITY.product_id,
            security_version=IDENTITY.security_version,
            debug=IDENTITY.debug,
            sandbox=["seccomp"],
        )
    ).SerializeToString()


def evidence_request(data: bytes = b"") -> bytes:
    data = data or report_data(NONCE, BINDING)
    return apb.AgentRequest(evidence=apb.EvidenceRequest(report_data=data)).SerializeToString()


def test_the_agent_announces_the_public_half_of_the_platform_key(
    agent: PlatformAgent, platform: Path
) -> None:
    key = load_platform_key(platform / PLATFORM_KEY)
    assert agent.public_key == public_key_bytes(key)
    assert agent.alive


def test_evidence_and_sealing_keys_are_for_the_registered_identity(
    agent: PlatformAgent, platform: Path
) -> None:
    attester = AgentAttester(agent.channel())
    attester.register(IDENTITY, ["seccomp"])
    evidence = attester.evidence(report_data(NONCE, BINDING))
    policy = AttestationPolicy(platform_keys=(platform / "platform.pub",), allow_debug=True)
    assert verify_evidence(evidence, policy, nonce=NONCE, binding=BINDING) == IDENTITY
    key = load_platform_key(platform / PLATFORM_KEY)
    assert attester.sealing_keys() == SealingKeys.derive(sealing_root(key), IDENTITY)
    attester.close()


def test_an_ephemeral_agent_makes_a_key_of_its_own() -> None:
    first = PlatformAgent.start(platform_dir=None)
    second = PlatformAgent.start(platform_dir=None)
    try:
        assert len(first.public_key) == 32
        assert first.public_key != second.public_key
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    "first",
    [
        b"\xff\xfe garbage",
        evidence_request(),  # evidence before registering
        apb.AgentRequest(sealing_keys=apb.SealingKeysRequest()).SerializeToString(),
        apb.AgentRequest(register=apb.Register(measurement=b"short")).SerializeToString(),
        b"\x00" * (MAX_MESSAGE + 1),
    ],
    ids=["garbage", "evidence first", "keys first", "bad identity", "oversized"],
)
def test_a_bad_first_request_ends_that_channel_only(agent: PlatformAgent, first: bytes) -> None:
    hostile = agent.channel()
    with hostile:
        reply = ask(hostile, first)
        assert reply is not None
        assert reply.WhichOneof("kind") == "error"
        assert hostile.recv(MAX_MESSAGE) == b""  # and then it is closed
    # The agent goes on serving other proxies.
    attester = AgentAttester(agent.channel())
    attester.register(IDENTITY, [])
    assert attester.evidence(report_data(NONCE, BINDING)).signature
    attester.close()
    assert agent.alive


def test_an_empty_datagram_ends_the_channel(agent: PlatformAgent) -> None:
    channel = agent.channel()
    with channel:
        assert ask(channel, b"") is None
    assert agent.alive


def test_a_registered_channel_cannot_change_its_identity(agent: PlatformAgent) -> None:
    channel = agent.channel()
    with channel:
        first = ask(channel, register(channel))
        assert first is not None
        assert first.registered
        again = ask(channel, register(channel))
        assert again is not None
        assert "registered channel" in again.error
        assert channel.recv(MAX_MESSAGE) == b""


def test_a_registered_channel_refuses_malformed_report_data(agent: PlatformAgent) -> None:
    channel = agent.channel()
    with channel:
        assert ask(channel, register(channel)) is not None
        reply = ask(channel, evidence_request(b"x" * 63))
        assert reply is not None
        assert reply.error == "report data is 64 bytes"


def test_the_attester_reports_a_refusal(agent: PlatformAgent) -> None:
    attester = AgentAttester(agent.channel())
    with pytest.raises(AgentError, match="refused"):
        attester.evidence(report_data(NONCE, BINDING))  # not registered
    attester.close()
    with pytest.raises(AgentError, match="closed"):
        attester.sealing_keys()


def test_the_agent_exits_when_its_broker_closes_the_control_socket(platform: Path) -> None:
    agent = PlatformAgent.start(platform_dir=platform)
    pid = agent.process.pid
    agent.close()
    assert agent.process.returncode == 0
    assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(EnclaveLoadError, match="gone"):
        agent.channel()


def test_an_unreadable_key_is_the_agents_own_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EnclaveLoadError, match=r"platform agent did not start.*platform\.key"):
        PlatformAgent.start(platform_dir=tmp_path)


def test_the_agent_cannot_be_read_by_processes_of_its_own_user(agent: PlatformAgent) -> None:
    """Not dumpable: ptrace and /proc/PID/mem need more than the same user (root can)."""
    status = Path(f"/proc/{agent.process.pid}/status").read_text()
    assert Path(f"/proc/{agent.process.pid}/mem").stat().st_uid == 0  # owned by root now
    assert "TracerPid:\t0" in status


def test_a_forged_evidence_with_another_key_is_refused(
    agent: PlatformAgent, platform: Path
) -> None:
    attester = AgentAttester(agent.channel())
    attester.register(IDENTITY, [])
    evidence = attester.evidence(report_data(NONCE, BINDING))
    attester.close()
    stranger = AttestationPolicy(platform_keys=(b"\x01" * 32,), allow_debug=True)
    with pytest.raises(AttestationError, match="platform signature"):
        verify_evidence(evidence, stranger, nonce=NONCE, binding=BINDING)
