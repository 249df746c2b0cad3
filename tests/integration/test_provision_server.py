"""The provision server in this process, over TLS/mTLS on loopback, and RemoteProvision.

Each test starts its own ``ProvisionServer`` on 127.0.0.1 port 0 (the
``servers`` fixture); its proxies are children of this process, so both the
suite's leak check and the fixture's own check (every proxy the server listed
is reaped once it stopped; its work directory is empty) cover them.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import farside
from farside._proto.v1 import provision_pb2 as pb
from farside.provision import single_host
from farside.provision.server import ProvisionServer, ProvisionServerConfig

from ._provision import (
    PKI,
    PROMPTLY,
    QUICKSTART,
    ServerFactory,
    closed_port,
    farside_proxies,
    pki,
    reaped,
    servers,
    stop_process,
)
from ._support import wait_until

__all__ = ["pki", "servers"]  # fixtures used here

TOKEN = "correct-horse-battery-staple-0123456789"
HEX = re.compile(r"[0-9a-f]+")
STATUS_PERIOD = 1.0  # proxies report measurement and calls served every second


def rpc_error(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    """Call ``call`` and return the ``grpc.RpcError`` it must raise."""
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=10, **kwargs)
    return caught.value


@pytest.fixture
def spawns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every proxy start the provision server attempts."""
    started: list[str] = []
    real = single_host.start_proxy

    def counting(*args: Any, **kwargs: Any) -> Any:
        started.append(kwargs.get("name", "?"))
        return real(*args, **kwargs)

    monkeypatch.setattr(single_host, "start_proxy", counting)
    return started


# ----------------------------------------------------------------------- the quickstart


def test_quickstart_over_mtls(servers: ServerFactory) -> None:
    server = servers()
    provision = servers.remote(server)
    with servers.load(provision) as client:
        sealed = client.call("encrypt", "Asylo Rocks")
        assert HEX.fullmatch(sealed)
        assert len(bytes.fromhex(sealed)) == 12 + len("Asylo Rocks") + 16
        assert client.call("decrypt", sealed) == "Asylo Rocks"
        assert client.enter_and_run({"message": "again"}) != sealed
        assert client._lease.address.startswith("127.0.0.1:")
        assert server.enclave_count() == 1
    assert wait_until(lambda: server.enclave_count() == 0, 10)


def test_quickstart_with_a_bearer_token(servers: ServerFactory, spawns: list[str]) -> None:
    server = servers(tls=servers.pki.main.server_tls(mutual=False), token=TOKEN)
    provision = servers.remote(server, servers.pki.main.client_tls(mutual=False), token=TOKEN)
    with servers.load(provision) as client:
        sealed = client.enter_and_run({"message": "Asylo Rocks"})
        assert client.call("decrypt", sealed) == "Asylo Rocks"
        info = servers.info(server, client.name)
        assert info is not None
        assert info.client.startswith("token:")
        assert TOKEN not in info.client
    assert spawns == [client.name]


def test_quickstart_over_plaintext_on_loopback(servers: ServerFactory) -> None:
    server = servers(tls=None)
    provision = servers.remote(server, default_tls=False)
    with servers.load(provision) as client:
        assert client.call("decrypt", client.call("encrypt", "plain")) == "plain"


# ----------------------------------------------------------------------- the operator's view


def test_list_enclaves_shows_the_running_enclave(servers: ServerFactory) -> None:
    server = servers()
    stub = servers.stub(server)
    assert servers.listing(server, stub) == []
    before_load = time.monotonic()
    client = servers.load(servers.remote(server))
    calls = 0
    for word in ("one", "two", "three"):
        assert client.call("decrypt", client.call("encrypt", word)) == word
        calls += 2
    [info] = servers.listing(server, stub)
    assert re.fullmatch(r"[0-9a-f]{16}", info.enclave_id)
    assert info.name == client.name
    assert info.client == "cert:farside-client"
    assert 0 <= info.uptime_seconds <= time.monotonic() - before_load
    assert info.address == client._lease.address
    assert not reaped(info.pid)

    def reported() -> bool:
        [now] = servers.listing(server, stub)
        return now.measurement == client.measurement and now.calls_served >= calls

    assert wait_until(reported, 3 * STATUS_PERIOD + 2, interval=0.1), servers.listing(server, stub)
    [later] = servers.listing(server, stub)
    assert later.uptime_seconds > info.uptime_seconds

    farside.EnclaveManager.instance().destroy_enclave(client)
    assert wait_until(lambda: servers.listing(server, stub) == [], 10)
    assert wait_until(lambda: reaped(info.pid, os.getpid()), 5)


def test_health_service_answers_serving(servers: ServerFactory) -> None:
    server = servers()
    health = health_pb2_grpc.HealthStub(servers.channel(server))
    for service in ("", "farside.v1.Provisioner"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


# ----------------------------------------------------------------------- bad input: connecting


def test_unreachable_server(servers: ServerFactory) -> None:
    address = f"127.0.0.1:{closed_port()}"
    provision = servers.remote(address)
    started = time.monotonic()
    with pytest.raises(farside.EnclaveLoadError) as caught:
        servers.load(provision, load_timeout=20)
    assert time.monotonic() - started < PROMPTLY
    assert address in str(caught.value)
    assert "unreachable" in str(caught.value)
    assert caught.value.code == farside.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    "case",
    ["wrong CA", "no client certificate", "client certificate from another CA"],
)
def test_tls_refusals(servers: ServerFactory, spawns: list[str], case: str) -> None:
    pki: PKI = servers.pki
    server = servers()
    tls = {
        "wrong CA": farside.TLSConfig(
            ca=pki.other.ca, cert=pki.main.client_cert, key=pki.main.client_key
        ),
        "no client certificate": pki.main.client_tls(mutual=False),
        "client certificate from another CA": farside.TLSConfig(
            ca=pki.main.ca, cert=pki.other.client_cert, key=pki.other.client_key
        ),
    }[case]
    started = time.monotonic()
    with pytest.raises(farside.EnclaveLoadError) as caught:
        servers.load(servers.remote(server, tls), load_timeout=20)
    assert time.monotonic() - started < PROMPTLY
    message = str(caught.value)
    assert server.address in message
    assert "TLS" in message
    # The cause in words, and the setting that fixes it (the CLI names its flag).
    cause, setting = {
        "wrong CA": ("not signed by the CA this client trusts", "tls.ca"),
        "no client certificate": ("requires a client certificate", "tls.cert"),
        "client certificate from another CA": ("did not accept this client's", "tls.cert"),
    }[case]
    assert cause in message
    assert caught.value.setting == setting
    assert caught.value.hint is not None
    assert caught.value.hint in message
    assert spawns == []
    assert server.enclave_count() == 0
    servers.assert_serves(server)


@pytest.mark.parametrize("token", ["wrong-token", None])
def test_wrong_or_missing_token_spawns_nothing(
    servers: ServerFactory, spawns: list[str], token: str | None
) -> None:
    server = servers(tls=servers.pki.main.server_tls(mutual=False), token=TOKEN)
    before = farside_proxies(marker=False)
    provision = servers.remote(server, servers.pki.main.client_tls(mutual=False), token=token)
    with pytest.raises(farside.EnclaveLoadError) as caught:
        servers.load(provision)
    assert caught.value.code == farside.StatusCode.PERMISSION_DENIED
    assert server.address in str(caught.value)
    assert "permission denied" in str(caught.value)
    assert "token" in str(caught.value)
    assert spawns == []
    assert server.enclave_count() == 0
    assert farside_proxies(marker=False) == before
    servers.assert_serves(server, servers.pki.main.client_tls(mutual=False), TOKEN)


def test_a_token_server_also_checks_mtls_clients_tokens(
    servers: ServerFactory, spawns: list[str]
) -> None:
    """With both mTLS and a token configured, a valid certificate is not enough."""
    server = servers(token=TOKEN)
    with pytest.raises(farside.EnclaveLoadError) as caught:
        servers.load(servers.remote(server, token="nope"))
    assert caught.value.code == farside.StatusCode.PERMISSION_DENIED
    assert spawns == []
    servers.assert_serves(server, token=TOKEN)


# ----------------------------------------------------------------------- bad input: limits


def test_over_capacity_in_total(servers: ServerFactory, spawns: list[str]) -> None:
    server = servers(max_enclaves=1)
    provision = servers.remote(server)
    first = servers.load(provision)
    with pytest.raises(farside.EnclaveLoadError) as caught:
        servers.load(provision)
    error = caught.value
    assert error.code == farside.StatusCode.RESOURCE_EXHAUSTED
    assert server.address in str(error)
    assert "over capacity" in str(error)
    assert "maximum of 1 enclaves" in str(error)
    assert spawns == [first.name]
    assert first.call("decrypt", first.call("encrypt", "first")) == "first"
    farside.EnclaveManager.instance().destroy_enclave(first)
    assert wait_until(lambda: server.enclave_count() == 0, 10)
    servers.assert_serves(server)


def test_over_capacity_per_client(servers: ServerFactory) -> None:
    pki: PKI = servers.pki
    # The server accepts client certificates from two CAs: two client identities.
    both = pki.main.ca.read_bytes() + pki.second.ca.read_bytes()
    server = servers(
        tls=farside.TLSConfig(cert=pki.main.server_cert, key=pki.main.server_key, client_ca=both),
        max_per_client=1,
        max_enclaves=4,
    )
    second_tls = farside.TLSConfig(
        ca=pki.main.ca, cert=pki.second.client_cert, key=pki.second.client_key
    )
    mine = servers.load(servers.remote(server))
    with pytest.raises(farside.EnclaveLoadError) as caught:
        servers.load(servers.remote(server))
    assert caught.value.code == farside.StatusCode.RESOURCE_EXHAUSTED
    assert "maximum per client" in str(caught.value)
    assert server.address in str(caught.value)

    theirs = servers.load(servers.remote(server, second_tls))
    clients = {info.name: info.client for info in servers.listing(server)}
    assert clients == {mine.name: "cert:farside-client", theirs.name: "cert:second-client"}

    # Another client cannot release my enclave.
    my_id = str(mine._lease.handle)
    servers.stub(server, second_tls).Release(pb.ReleaseRequest(enclave_id=my_id), timeout=10)
    time.sleep(0.3)
    assert mine.call("decrypt", mine.call("encrypt", "mine")) == "mine"
    assert servers.info(server, mine.name) is not None

    for client in (mine, theirs):
        farside.EnclaveManager.instance().destroy_enclave(client)
    assert wait_until(lambda: server.enclave_count() == 0, 10)
    servers.assert_serves(server)


def test_two_dev_cas_in_one_client_ca_bundle(servers: ServerFactory) -> None:
    pki: PKI = servers.pki
    both = pki.main.ca.read_bytes() + pki.other.ca.read_bytes()
    server = servers(
        tls=farside.TLSConfig(cert=pki.main.server_cert, key=pki.main.server_key, client_ca=both)
    )
    other_client = farside.TLSConfig(
        ca=pki.main.ca, cert=pki.other.client_cert, key=pki.other.client_key
    )
    servers.assert_serves(server, other_client)


# ----------------------------------------------------------------------- bad input: requests


def test_invalid_name_is_invalid_argument(servers: ServerFactory, spawns: list[str]) -> None:
    server = servers()
    stub = servers.stub(server)
    for name in ("bad name!", "", "x" * 129, "../etc", "a/b"):
        error = rpc_error(stub.Provision, pb.ProvisionRequest(name=name))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "name" in (error.details() or "")
    error = rpc_error(stub.Release, pb.ReleaseRequest(enclave_id="not-an-id"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert spawns == []
    servers.assert_serves(server)


def test_oversized_request_is_refused(servers: ServerFactory, spawns: list[str]) -> None:
    server = servers()
    stub = servers.stub(server)
    error = rpc_error(stub.Provision, pb.ProvisionRequest(name="x" * 100 * 1024))
    assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert spawns == []
    servers.assert_serves(server)


def test_malformed_request_bytes_are_refused(servers: ServerFactory, spawns: list[str]) -> None:
    server = servers()
    channel = servers.channel(server)
    raw = channel.unary_unary(
        "/farside.v1.Provisioner/Provision", request_serializer=None, response_deserializer=None
    )
    for garbage in (b"\xff\xff\xff\xff garbage", b"\x0a\xff\xff\xff\xff\x0f", b"\x12"):
        error = rpc_error(raw, garbage)
        assert error.code() != grpc.StatusCode.OK
    assert spawns == []
    servers.assert_serves(server)


def test_malformed_request_is_invalid_argument(servers: ServerFactory) -> None:
    server = servers()
    raw = servers.channel(server).unary_unary(
        "/farside.v1.Provisioner/Provision", request_serializer=None, response_deserializer=None
    )
    assert rpc_error(raw, b"\xff\xff\xff\xff garbage").code() == grpc.StatusCode.INVALID_ARGUMENT


def test_session_token_reused_or_guessed_is_refused(servers: ServerFactory) -> None:
    server = servers()
    stub = servers.stub(server)
    lease = stub.Provision(pb.ProvisionRequest(name="raw-session"), timeout=20)
    other = stub.Provision(pb.ProvisionRequest(name="raw-other"), timeout=20)
    assert lease.session_token
    assert lease.session_token != other.session_token
    assert lease.address != other.address

    # A guessed token, and another proxy's token, are refused.
    for token in ("guessed-" + "A" * 35, other.session_token, ""):
        transport, lost, done = servers.session(lease, token)
        assert done.wait(5), "the proxy did not refuse a wrong token"
        transport.close(timeout=1)
        assert isinstance(lost[0], farside.EnclaveLoadError)
        assert lost[0].code == farside.StatusCode.UNAUTHENTICATED
        assert lease.session_token not in str(lost[0])

    # A client pinning another proxy's certificate does not get through the TLS handshake.
    pinned_wrong = pb.ProvisionResponse()
    pinned_wrong.CopyFrom(lease)
    pinned_wrong.proxy_certificate = other.proxy_certificate
    transport, lost, done = servers.session(pinned_wrong, lease.session_token)
    assert done.wait(5), "a proxy presented a certificate other than the one pinned"
    transport.close(timeout=1)
    assert isinstance(lost[0], farside.EnclaveError)
    assert lease.address in str(lost[0])

    # The right token opens the one session; the same token again is refused.
    first, first_lost, _ = servers.session(lease, lease.session_token)
    time.sleep(0.5)
    second, second_lost, second_done = servers.session(lease, lease.session_token)
    assert second_done.wait(5), "the proxy accepted the token twice"
    second.close(timeout=1)
    assert isinstance(second_lost[0], farside.EnclaveLoadError)
    assert second_lost[0].code == farside.StatusCode.FAILED_PRECONDITION
    assert first_lost == []

    # Hanging up the accepted session ends that proxy; releasing the other ends it too.
    pids = [info.pid for info in servers.listing(server, stub)]
    assert len(pids) == 2
    first.close(timeout=1)
    stub.Release(pb.ReleaseRequest(enclave_id=other.enclave_id), timeout=10)
    assert wait_until(lambda: servers.listing(server, stub) == [], 10)
    assert all(wait_until(lambda p=pid: reaped(p, os.getpid()), 5) for pid in pids)
    servers.assert_serves(server)


def test_untrusted_platform_is_refused_and_released(servers: ServerFactory) -> None:
    """Evidence signed by a platform the client does not trust: AttestationError, proxy reaped."""
    server = servers()
    stub = servers.stub(server)
    for policy in (None, farside.AttestationPolicy(allow_debug=True)):
        with pytest.raises(farside.AttestationError) as caught:
            servers.load(servers.remote(server), policy=policy)
        assert "platform" in str(caught.value)
        assert wait_until(lambda: servers.listing(server, stub) == [], 10)
    servers.assert_serves(server)


def test_proxy_killed_by_the_operator(servers: ServerFactory) -> None:
    server = servers()
    stub = servers.stub(server)
    client = servers.load(servers.remote(server))
    assert client.call("decrypt", client.call("encrypt", "before")) == "before"
    [info] = servers.listing(server, stub)
    os.kill(info.pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(farside.EnclaveUnavailableError):
        client.call("encrypt", "after")
    assert time.monotonic() - started < PROMPTLY
    assert wait_until(lambda: servers.listing(server, stub) == [], 5)
    assert wait_until(lambda: reaped(info.pid, os.getpid()), 5)
    started = time.monotonic()
    farside.EnclaveManager.instance().destroy_enclave(client)  # already gone: not an error
    assert time.monotonic() - started < PROMPTLY
    servers.assert_serves(server)


CLIENT_SCRIPT = textwrap.dedent(
    """\
    import sys
    import farside

    ca, cert, key, platform = sys.argv[3:7]
    provision = farside.RemoteProvision(
        sys.argv[2], tls=farside.TLSConfig(ca=ca, cert=cert, key=key)
    )
    policy = farside.AttestationPolicy(platform_keys=(platform,), allow_debug=True)
    client = farside.load(sys.argv[1], provision=provision, policy=policy)
    print(client.name, flush=True)
    sys.stdin.read()  # until killed
    """
)


def test_client_killed_while_loaded(servers: ServerFactory) -> None:
    """The client's connection breaks: its proxy ends and the server reaps it."""
    pki: PKI = servers.pki
    server = servers()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CLIENT_SCRIPT,
            str(QUICKSTART),
            server.address,
            *map(str, (pki.main.ca, pki.main.client_cert, pki.main.client_key)),
            str(pki.platform_pub),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        name = process.stdout.readline().strip()
        info = servers.info(server, name)
        assert info is not None, (name, process.poll())
        process.kill()
        process.wait(10)
        assert wait_until(lambda: server.enclave_count() == 0, 10), servers.listing(server)
        assert wait_until(lambda: reaped(info.pid, os.getpid()), 5)
    finally:
        stop_process(process)
    servers.assert_serves(server)


# ----------------------------------------------------------------------- release and idle


def test_release_before_connecting(servers: ServerFactory) -> None:
    server = servers()
    stub = servers.stub(server)
    lease = stub.Provision(pb.ProvisionRequest(name="released"), timeout=20)
    [info] = servers.listing(server, stub)
    assert info.enclave_id == lease.enclave_id
    assert info.address == lease.address
    directory = Path(server._workdir) / lease.enclave_id
    assert directory.is_dir()
    assert directory.stat().st_mode & 0o777 == 0o700
    started = time.monotonic()
    stub.Release(pb.ReleaseRequest(enclave_id=lease.enclave_id), timeout=10)
    assert wait_until(lambda: servers.listing(server, stub) == [], 10)
    assert time.monotonic() - started < 5
    assert wait_until(lambda: reaped(info.pid, os.getpid()), 5)
    assert not directory.exists()
    # Idempotent, and unknown ids are fine.
    stub.Release(pb.ReleaseRequest(enclave_id=lease.enclave_id), timeout=10)
    stub.Release(pb.ReleaseRequest(enclave_id="0123456789abcdef"), timeout=10)


def test_proxy_nobody_connects_to_is_reaped(servers: ServerFactory) -> None:
    server = servers(proxy_idle_timeout=1.0)
    stub = servers.stub(server)
    started = time.monotonic()
    lease = stub.Provision(pb.ProvisionRequest(name="abandoned"), timeout=20)
    [info] = servers.listing(server, stub)
    assert wait_until(lambda: servers.listing(server, stub) == [], 10)
    assert time.monotonic() - started >= 0.9
    assert wait_until(lambda: reaped(info.pid, os.getpid()), 5)
    assert not (Path(server._workdir) / lease.enclave_id).exists()
    servers.assert_serves(server)


# ----------------------------------------------------------------------- configuration


def test_plaintext_off_loopback_is_refused() -> None:
    with pytest.raises(ValueError, match="--insecure"):
        ProvisionServerConfig(host="0.0.0.0", tls=None)
    with pytest.raises(ValueError, match="--insecure"):
        ProvisionServerConfig(host="10.1.2.3", tls=None, token=TOKEN)
    ProvisionServerConfig(host="0.0.0.0", tls=None, insecure=True)
    ProvisionServerConfig(host="127.0.0.1", tls=None)


def test_tls_without_client_auth_off_loopback_is_refused(pki: PKI) -> None:
    with pytest.raises(ValueError, match=r"--client-ca.*--token-file"):
        ProvisionServerConfig(host="0.0.0.0", tls=pki.main.server_tls(mutual=False))
    ProvisionServerConfig(host="0.0.0.0", tls=pki.main.server_tls())
    ProvisionServerConfig(host="0.0.0.0", tls=pki.main.server_tls(mutual=False), token=TOKEN)
    ProvisionServerConfig(host="127.0.0.1", tls=pki.main.server_tls(mutual=False))


@pytest.mark.parametrize(
    ("settings", "flag"),
    [
        ({"max_enclaves": 0}, "--max-enclaves"),
        ({"max_per_client": 0}, "--max-per-client"),
        ({"port": 70000}, "--port"),
        ({"port": -1}, "--port"),
    ],
)
def test_bad_limits_and_ports_are_refused(settings: dict[str, Any], flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        ProvisionServerConfig(**settings)


# ----------------------------------------------------------------------- shutdown


def test_stop_with_a_running_enclave(servers: ServerFactory) -> None:
    server = servers()
    client = servers.load(servers.remote(server))
    assert client.call("decrypt", client.call("encrypt", "x")) == "x"
    [info] = servers.listing(server)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < server.config.grace + 3
    assert reaped(info.pid, os.getpid()), "stop() returned before the proxy was reaped"
    assert server.enclave_count() == 0
    assert not Path(server._workdir).exists()
    started = time.monotonic()
    with pytest.raises(farside.EnclaveUnavailableError):
        client.call("encrypt", "y")
    assert time.monotonic() - started < PROMPTLY
    started = time.monotonic()
    farside.EnclaveManager.instance().destroy_enclave(client)
    assert time.monotonic() - started < PROMPTLY
    server.stop()  # a second stop is harmless


def test_stopped_server_refuses_new_enclaves(servers: ServerFactory) -> None:
    server = servers()
    address = server.address
    server.stop()
    started = time.monotonic()
    with pytest.raises(farside.EnclaveLoadError) as caught:
        servers.load(servers.remote(address), load_timeout=10)
    assert time.monotonic() - started < PROMPTLY
    assert address in str(caught.value)


def test_unusable_platform_dir_fails_at_construction() -> None:
    with tempfile.TemporaryDirectory() as directory:
        empty = Path(directory)
        with pytest.raises(ValueError, match="platform key"):
            ProvisionServer(ProvisionServerConfig(port=0, platform_dir=empty, workdir=empty))
        assert list(empty.iterdir()) == []


# ----------------------------------------------------------------------- measurements


def _children() -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = entry.joinpath("stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if len(fields) > 1 and fields[1] == me:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_fifty_load_destroy_cycles(
    servers: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = servers(max_per_client=2)
    provision = servers.remote(server)
    manager = farside.EnclaveManager.instance()

    def cycle() -> float:
        started = time.perf_counter()
        client = farside.load(QUICKSTART, provision=provision, policy=servers.pki.policy())
        try:
            sealed = client.call("encrypt", "Asylo Rocks")
            elapsed = time.perf_counter() - started
            assert client.call("decrypt", sealed) == "Asylo Rocks"
        finally:
            manager.destroy_enclave(client)
        return elapsed

    cycle()  # warm up: channels, thread pools
    assert wait_until(lambda: server.enclave_count() == 0, 10)
    fds_before = len(os.listdir("/proc/self/fd"))
    children_before = _children()
    times = [cycle() for _ in range(50)]
    assert wait_until(lambda: server.enclave_count() == 0, 10)
    assert wait_until(lambda: len(_children()) <= len(children_before), 10)
    fds_after = len(os.listdir("/proc/self/fd"))
    children_after = _children()
    with capsys.disabled():
        print()
        print(f"provision-server fds_before={fds_before} fds_after={fds_after}")
        print(
            f"provision-server children_before={len(children_before)} "
            f"children_after={len(children_after)}"
        )
        print(
            f"load_to_first_result_seconds median={statistics.median(times):.4f} "
            f"min={min(times):.4f} max={max(times):.4f} n={len(times)}"
        )
    assert fds_after - fds_before <= 5
    assert children_after == [] or set(children_after) <= set(children_before)


def test_relative_directories_are_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proxies start in directories of their own: a relative workdir would mean nothing there."""
    monkeypatch.chdir(tmp_path)
    config = ProvisionServerConfig(workdir=Path("work"), platform_dir=Path("platform"))
    assert config.workdir == tmp_path / "work"
    assert config.platform_dir == tmp_path / "platform"
