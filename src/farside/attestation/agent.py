"""The platform agent: the one process that holds a trusted machine's platform key.

It plays the part of SGX's quoting enclave and EGETKEY (Nitro's NSM, the AMD secure
processor): no process that runs enclave code ever holds the key, not in memory, on
stdin, in argv or in its environment. Each proxy gets a *channel* to the agent, and its
loader, before any enclave code runs, registers the identity it measured. From then on
the agent answers that channel with two things only, both for that identity: evidence
carrying the caller's report data, and the sealing keys derived for it. The proxy asks
for both while loading and then closes its end, so enclave code holds no way to the
agent at all.

* ``run_agent`` is the agent process (``farside platform agent``): it takes new channels
  as file descriptors (``SCM_RIGHTS``) on its control socket from its broker (the
  provisioner that started it) and serves each on a thread of its own; it exits when the
  control socket closes. Nothing a channel sends can crash it or change a registered
  identity: requests are bounded, parsed strictly, and a bad one ends that channel only.
* ``AgentAttester`` is the proxy's side of a channel: an ``Attester``.

The messages are ``protos/farside/v1/agent.proto``'s, one per ``SOCK_SEQPACKET``
datagram.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import logging
import os
import signal
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError

from .._process import set_parent_death_signal
from .._proto.v1 import agent_pb2 as apb, attestation_pb2 as pb
from .evidence import make_evidence, public_key_bytes
from .identity import EnclaveIdentity, SealingKeys, sealing_root
from .platform import PLATFORM_KEY, load_platform_key

__all__ = [
    "MAX_CHANNELS",
    "MAX_MESSAGE",
    "READY_PREFIX",
    "AgentAttester",
    "AgentError",
    "agent_main",
    "run_agent",
]

log = logging.getLogger("farside.agent")

MAX_MESSAGE = 16 * 2**10
"""The largest request or reply on a channel (evidence is well under 1 KiB)."""
MAX_CHANNELS = 256
"""Channels served at once; a broker asking for more gets the extra ones closed."""
MAX_SANDBOX_LAYERS = 16
READY_PREFIX = "farside-agent ready "
"""What the agent writes on stdout once it serves, followed by its public key in hex."""
_PR_SET_DUMPABLE = 4


class AgentError(RuntimeError):
    """The agent refused a request, or the channel to it is gone."""


def _identity_of(request: apb.Register) -> tuple[EnclaveIdentity, tuple[str, ...]]:
    if len(request.sandbox) > MAX_SANDBOX_LAYERS or any(
        not layer.isascii() or len(layer) > 32 for layer in request.sandbox
    ):
        raise ValueError("malformed sandbox layers")
    identity = EnclaveIdentity(  # ValueError unless measurement and signer are 32 bytes
        measurement=request.measurement,
        signer=request.signer,
        product_id=request.product_id,
        security_version=request.security_version,
        debug=request.debug,
    )
    return identity, tuple(request.sandbox)


def _serve_channel(key: Ed25519PrivateKey, channel: socket.socket) -> None:
    """Answer one proxy's channel until it closes or breaks a rule (then close it)."""
    identity: EnclaveIdentity | None = None
    sandbox: tuple[str, ...] = ()
    keys: SealingKeys | None = None
    with channel:
        while True:
            data = channel.recv(MAX_MESSAGE + 1)
            if not data:
                return  # the proxy closed its end: done
            reply = apb.AgentReply()
            try:
                if len(data) > MAX_MESSAGE:
                    raise ValueError("an oversized request")
                request = apb.AgentRequest.FromString(data)
                kind = request.WhichOneof("kind")
                if identity is None:
                    if kind != "register":
                        raise ValueError("the first request on a channel registers an identity")
                    identity, sandbox = _identity_of(request.register)
                    reply.registered = True
                elif kind == "evidence":
                    if len(request.evidence.report_data) != 64:
                        raise ValueError("report data is 64 bytes")
                    reply.evidence.CopyFrom(
                        make_evidence(
                            key,
                            identity,
                            report_data=request.evidence.report_data,
                            sandbox=sandbox,
                        )
                    )
                elif kind == "sealing_keys":
                    keys = keys or SealingKeys.derive(sealing_root(key), identity)
                    reply.sealing_keys.enclave_key = keys.enclave_key
                    reply.sealing_keys.signer_link = keys.signer_link or b""
                    reply.sealing_keys.security_version = keys.security_version
                else:  # a second registration, or nothing
                    raise ValueError(f"a {kind or 'empty'} request on a registered channel")
            except (DecodeError, ValueError) as exc:
                with contextlib.suppress(OSError):
                    channel.send(apb.AgentReply(error=str(exc)[:200]).SerializeToString())
                return
            channel.send(reply.SerializeToString())


def _serve_channel_safely(
    key: Ed25519PrivateKey, channel: socket.socket, slots: threading.Semaphore
) -> None:
    try:
        _serve_channel(key, channel)
    except Exception:  # a broken socket, or a bug: that channel ends, the agent goes on
        log.exception("a platform agent channel failed")
    finally:
        slots.release()


def _refuse_to_be_read() -> None:
    """Not dumpable: processes of our own user (a proxy's enclave code among them) may
    not ptrace us or read /proc/self/mem; only root can."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def run_agent(key: Ed25519PrivateKey, control: socket.socket) -> None:
    """Serve channels handed over on ``control`` until it closes (see the module docstring)."""
    _refuse_to_be_read()
    slots = threading.BoundedSemaphore(MAX_CHANNELS)
    while True:
        try:
            fds = array.array("i")
            message, ancillary, _, _ = control.recvmsg(16, socket.CMSG_LEN(fds.itemsize))
        except InterruptedError:
            continue
        except OSError:
            return
        if not message:
            return  # the broker is gone, and so are we
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(data) - len(data) % fds.itemsize
                fds.frombytes(data[:usable])
        for fd in fds:
            channel = socket.socket(fileno=fd)
            if channel.type != socket.SOCK_SEQPACKET or not slots.acquire(blocking=False):
                channel.close()
                continue
            threading.Thread(
                target=_serve_channel_safely,
                args=(key, channel, slots),
                daemon=True,
                name="farside-agent-channel",
            ).start()


def agent_main(*, control_fd: int, platform_dir: Path | None, parent_pid: int | None) -> int:
    """``farside platform agent``: load (or make) the key, announce it, serve until told.

    The key is read here, in the agent, from ``platform_dir/platform.key``; with None it
    is made here and never leaves this process. Returns 2 if the key cannot be read.
    """
    control = socket.socket(fileno=control_fd)
    if parent_pid is not None:
        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent_pid:
            return 0  # the broker died before we could serve it
    try:
        key = (
            load_platform_key(platform_dir / PLATFORM_KEY)
            if platform_dir is not None
            else Ed25519PrivateKey.generate()
        )
    except ValueError as exc:
        os.write(2, f"farside platform agent: {exc}\n".encode())
        return 2
    os.write(1, f"{READY_PREFIX}{public_key_bytes(key).hex()}\n".encode())
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # nothing more to say; the broker closed its ends
        os.dup2(devnull, fd)
    run_agent(key, control)
    return 0


class AgentAttester:
    """The proxy's side of a channel to the platform agent (an ``Attester``).

    ``close`` ends the channel: the proxy calls it once it has the evidence and the
    sealing keys, before enclave code runs.
    """

    def __init__(self, channel: socket.socket) -> None:
        self._channel: socket.socket | None = channel
        self._keys: SealingKeys | None = None
        self._registered = False

    def _ask(self, request: apb.AgentRequest) -> apb.AgentReply:
        if self._channel is None:
            raise AgentError("the channel to the platform agent is closed")
        try:
            self._channel.send(request.SerializeToString())
            data = self._channel.recv(MAX_MESSAGE + 1)
            reply = apb.AgentReply.FromString(data)
        except (OSError, DecodeError) as exc:
            raise AgentError(f"the platform agent did not answer: {exc}") from None
        if not data or reply.WhichOneof("kind") in (None, "error"):
            raise AgentError(f"the platform agent refused: {reply.error or 'no answer'}")
        return reply

    def register(self, identity: EnclaveIdentity, sandbox: Sequence[str]) -> None:
        if self._registered:
            raise RuntimeError("an attester serves the one identity registered first")
        self._ask(
            apb.AgentRequest(
                register=apb.Register(
                    measurement=identity.measurement,
                    signer=identity.signer,
                    product_id=identity.product_id,
                    security_version=identity.security_version,
                    debug=identity.debug,
                    sandbox=list(sandbox),
                )
            )
        )
        self._registered = True

    def evidence(self, report_data: bytes) -> pb.Evidence:
        reply = self._ask(apb.AgentRequest(evidence=apb.EvidenceRequest(report_data=report_data)))
        return reply.evidence

    def sealing_keys(self) -> SealingKeys | None:
        if self._keys is None:
            reply = self._ask(apb.AgentRequest(sealing_keys=apb.SealingKeysRequest()))
            keys = reply.sealing_keys
            self._keys = SealingKeys(
                keys.enclave_key, keys.signer_link or None, keys.security_version
            )
        return self._keys

    def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
