"""The proxy's sandbox: enclave code reaches the trusted machine only through its exit calls.

Each forbidden action is refused inside the enclave with an ``OSError``, the proxy
keeps serving, and the test checks from outside that nothing was written, reached,
started or signalled. Layers are forced off with ``FARSIDE_SANDBOX_PRETEND_UNAVAILABLE``
(the proxies inherit this process's environment).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import farside
from farside.proxy.sandbox import LAYERS, PRETEND_UNAVAILABLE_ENV, probe

from ._provision import ServerFactory, pki, servers
from ._support import ENCLAVES, RecordingProvision, process_gone, proxy_pid, wait_until

__all__ = ["pki", "servers"]  # fixtures used here

ESCAPEE = ENCLAVES / "escapee.py"
ALL_LAYERS = tuple(layer for layer, why in probe().items() if not why)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux's")


def require(*layers: str) -> farside.AttestationPolicy:
    """Trust the local platform, accept any bundle, and require these sandbox layers."""
    return farside.AttestationPolicy(allow_debug=True, require_sandbox=layers)


@pytest.fixture(scope="module")
def escapee(tmp_path_factory: pytest.TempPathFactory) -> Iterator[farside.EnclaveClient]:
    root = tmp_path_factory.mktemp("escapee-files")
    client = farside.load(
        ESCAPEE,
        files_root=root,
        exit_handlers={"double": lambda n: 2 * n},
        policy=require(*ALL_LAYERS),
    )
    yield client
    farside.EnclaveManager.instance().destroy_enclave(client)


def assert_refused(outcome: dict[str, object], *errnos: int) -> None:
    assert outcome["ok"] is False, f"the sandbox let it through: {outcome}"
    assert outcome["errno"] in errnos, outcome


def assert_still_serving(client: farside.EnclaveClient) -> None:
    assert client.call("ping") == "pong"


def test_every_layer_this_machine_offers_is_applied_and_attested() -> None:
    # The module's enclave was loaded with a policy requiring them; check the names too.
    assert {"landlock-fs", "seccomp", "rlimits"} <= set(ALL_LAYERS) <= set(LAYERS)


def test_writing_a_file_is_refused(escapee: farside.EnclaveClient, tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    assert_refused(escapee.call("write_file", str(target)), errno.EACCES, errno.EPERM)
    assert not target.exists()
    assert_still_serving(escapee)


def test_a_thread_the_enclave_starts_is_confined(
    escapee: farside.EnclaveClient, tmp_path: Path
) -> None:
    target = tmp_path / "from-thread.txt"
    assert_refused(escapee.call("from_thread", str(target)), errno.EACCES, errno.EPERM)
    assert not target.exists()


def test_reading_outside_the_interpreter_is_refused(
    escapee: farside.EnclaveClient, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the trusted machine's")
    assert_refused(escapee.call("read_file", str(secret)), errno.EACCES)


def test_connecting_to_a_local_port_is_refused(escapee: farside.EnclaveClient) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        assert_refused(escapee.call("connect", port), errno.EPERM, errno.EACCES)
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody reached it
    assert_still_serving(escapee)


def test_running_a_program_is_refused(escapee: farside.EnclaveClient, tmp_path: Path) -> None:
    marker = tmp_path / "started.txt"
    assert_refused(escapee.call("run_program", str(marker)), errno.EPERM)
    assert not marker.exists()
    assert_still_serving(escapee)


def test_fork_is_refused(escapee: farside.EnclaveClient) -> None:
    assert_refused(escapee.call("fork"), errno.EPERM)
    proxy = proxy_pid(escapee)
    children = Path(f"/proc/{proxy}/task/{proxy}/children").read_text().split()
    assert children == []
    assert_still_serving(escapee)


def test_signalling_another_process_is_refused(escapee: farside.EnclaveClient) -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as victim:
        try:
            assert_refused(escapee.call("signal", victim.pid, int(signal.SIGKILL)), errno.EPERM)
            assert_refused(escapee.call("signal", os.getpid(), int(signal.SIGTERM)), errno.EPERM)
            assert victim.poll() is None  # alive
            assert_still_serving(escapee)
        finally:
            victim.kill()


def test_signalling_itself_still_works(escapee: farside.EnclaveClient) -> None:
    assert escapee.call("signal_self")["ok"] is True


def test_exit_calls_still_reach_the_client(
    escapee: farside.EnclaveClient, capfd: pytest.CaptureFixture[str]
) -> None:
    result = escapee.call("exits", "note.txt")
    assert result == {"read_back": "written through the client", "host": 42}
    assert "hello from the sandbox" in capfd.readouterr().out


def test_core_dumps_are_off_by_default(escapee: farside.EnclaveClient) -> None:
    assert escapee.call("limits")["core"] == 0


def test_resource_limits_come_from_the_load_config() -> None:
    sandbox = farside.SandboxConfig(open_files=64, memory=4 * 2**30, cpu_seconds=600)
    with farside.load(ESCAPEE, sandbox=sandbox, policy=require("rlimits")) as client:
        assert client.call("limits") == {
            "open_files": 64,
            "memory": 4 * 2**30,
            "cpu_seconds": 600,
            "core": 0,
        }


def test_a_memory_limit_refuses_a_large_allocation_and_the_proxy_keeps_serving() -> None:
    sandbox = farside.SandboxConfig(memory=1 * 2**30)
    with farside.load(ESCAPEE, sandbox=sandbox) as client:
        with pytest.raises(farside.EnclaveCallError) as info:
            client.call("allocate", 2 * 2**30)
        assert info.value.remote_type == "MemoryError"
        assert client.call("allocate", 2**20) == 2**20
        assert_still_serving(client)


def test_a_cpu_limit_ends_the_proxy_and_the_client_is_told() -> None:
    sandbox = farside.SandboxConfig(cpu_seconds=1)
    with (
        farside.load(ESCAPEE, sandbox=sandbox) as client,
        pytest.raises(farside.EnclaveUnavailableError),
    ):
        client.call("burn", 30.0, timeout=20.0)


def test_a_client_cannot_turn_the_proxys_sandbox_off(tmp_path: Path) -> None:
    sandbox = farside.SandboxConfig(mode="off")
    with farside.load(ESCAPEE, sandbox=sandbox, policy=require(*ALL_LAYERS)) as client:
        target = tmp_path / "escaped.txt"
        assert client.call("write_file", str(target))["ok"] is False
        assert not target.exists()


def test_sandbox_off_is_off_and_attested_as_none(tmp_path: Path) -> None:
    provision = farside.LocalProvision(sandbox="off")
    target = tmp_path / "written.txt"
    with farside.load(ESCAPEE, provision=provision) as client:
        assert client.call("write_file", str(target))["ok"] is True
    assert target.read_bytes() == b"escaped"
    with pytest.raises(farside.AttestationError) as info:
        farside.load(ESCAPEE, provision=provision, policy=require("seccomp"))
    assert info.value.check == "sandbox"
    assert "applied: none" in str(info.value)


# ------------------------------------------------------------ layers forced off


def test_best_effort_without_seccomp_logs_it_and_leaves_it_out_of_the_evidence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(PRETEND_UNAVAILABLE_ENV, "seccomp")
    provision = RecordingProvision()
    with farside.load(ESCAPEE, provision=provision, policy=require("landlock-fs")) as client:
        log = provision.leases[0].handle.log_path.read_text()
        assert "sandbox: seccomp not applied" in log
        # Landlock still holds, seccomp does not: a file write fails, a fork works.
        assert client.call("write_file", str(tmp_path / "x"))["ok"] is False
        assert client.call("fork")["ok"] is True
    with pytest.raises(farside.AttestationError) as info:
        farside.load(ESCAPEE, policy=require("seccomp"))
    assert info.value.check == "sandbox"
    assert "lacks sandbox layer(s) seccomp" in str(info.value)


def test_best_effort_without_landlock_still_refuses_by_seccomp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(PRETEND_UNAVAILABLE_ENV, "landlock")
    with farside.load(ESCAPEE, policy=require("seccomp")) as client:
        assert_refused(client.call("run_program", str(tmp_path / "m")), errno.EPERM)
        target = tmp_path / "written.txt"
        assert client.call("write_file", str(target))["ok"] is True  # no Landlock: it can
    with pytest.raises(farside.AttestationError, match="landlock-fs"):
        farside.load(ESCAPEE, policy=require("landlock-fs"))


@pytest.mark.parametrize("missing", ["seccomp", "landlock"])
@pytest.mark.parametrize("where", ["load config", "proxy"])
def test_strict_refuses_to_run_the_enclave_without_a_layer(
    monkeypatch: pytest.MonkeyPatch, missing: str, where: str
) -> None:
    monkeypatch.setenv(PRETEND_UNAVAILABLE_ENV, missing)
    if where == "proxy":
        provision = RecordingProvision(sandbox="strict")
        sandbox = None
    else:
        provision = RecordingProvision()
        sandbox = farside.SandboxConfig(mode="strict")
    with pytest.raises(farside.EnclaveLoadError) as info:
        farside.load(ESCAPEE, provision=provision, sandbox=sandbox)
    message = str(info.value)
    assert "strict sandbox cannot apply every layer" in message
    assert (missing if missing == "seccomp" else "landlock-fs") in message
    assert info.value.code is farside.StatusCode.FAILED_PRECONDITION
    (lease,) = provision.leases
    assert lease.handle.process.returncode is not None  # reaped
    assert process_gone(lease.handle.process.pid)


def test_strict_with_every_layer_loads() -> None:
    sandbox = farside.SandboxConfig(mode="strict")
    with farside.load(ESCAPEE, sandbox=sandbox, policy=require(*ALL_LAYERS)) as client:
        assert_still_serving(client)


def test_a_remote_proxy_on_tcp_keeps_its_session_under_the_sandbox(servers: ServerFactory) -> None:
    """seccomp refuses new sockets; the session's TLS connection, keepalives and stop work."""
    server = servers(proxy_sandbox="strict")
    tcp_layers = tuple(layer for layer in ALL_LAYERS if layer != "netns")  # it needs the network
    policy = dataclasses.replace(servers.pki.policy(), require_sandbox=tcp_layers)
    with farside.load(ESCAPEE, provision=servers.remote(server), policy=policy) as client:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.settimeout(0.5)
            assert_refused(client.call("connect", listener.getsockname()[1]), errno.EPERM)
            with pytest.raises(TimeoutError):
                listener.accept()
        time.sleep(4.5)  # a keepalive ping (every 4 s) passes over the sandboxed connection
        assert_still_serving(client)
    assert wait_until(lambda: server.enclave_count() == 0, 10.0)  # the proxy stopped
