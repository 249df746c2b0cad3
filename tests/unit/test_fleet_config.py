"""Fleet mode without Ray: labels, the Ray security gate, ``fleet join``, and placement
decisions (retry, timeout, host failure) against a stand-in for Ray's driver API."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import farside
from farside._errors import StatusCode
from farside.attestation.platform import init_platform
from farside.provision.backend import ProxySpec, RefusedError, Started
from farside.provision.base import parse_node_label
from farside.provision.fleet import (
    FleetConfigError,
    RayPlacer,
    check_ray_security,
    join_command,
)
from farside.provision.server import ProvisionServer, ProvisionServerConfig

SECURE = {
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": "0123456789abcdef",
    "RAY_USE_TLS": "1",
}


@pytest.fixture
def secure_env(tmp_path: Path) -> dict[str, str]:
    env = dict(SECURE)
    for name in ("RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT"):
        path = tmp_path / name
        path.write_text("pem")
        env[name] = str(path)
    return env


# ----------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("text", "expected"),
    [("tee=sgx", ("tee", "sgx")), ("gpu.vendor=nvidia-a100", ("gpu.vendor", "nvidia-a100"))],
)
def test_good_labels_parse(text: str, expected: tuple[str, str]) -> None:
    assert parse_node_label(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tee",
        "tee=",
        "=sgx",
        "tee=sgx=1",
        "a b=c",
        "tee=sgx,x=y",
        "ray.io/node-id=1",
        "-a=b",
        "a=b-",
        "k=" + "v" * 64,
        "tee=s\ngx",
    ],
)
def test_bad_labels_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="node label is key=value"):
        parse_node_label(text)


def test_remote_provision_checks_its_label() -> None:
    with pytest.raises(ValueError, match="node label"):
        farside.RemoteProvision("127.0.0.1:1", node_label="tee==sgx")
    assert farside.RemoteProvision("127.0.0.1:1", node_label="tee=sgx").node_label == "tee=sgx"


def test_a_single_host_server_refuses_labels(tmp_path: Path) -> None:
    server = ProvisionServer(ProvisionServerConfig(port=0, workdir=tmp_path))
    try:
        with pytest.raises(RefusedError, match="no node labels") as refused:
            server.provision("demo", "client", label="tee=sgx")
        assert refused.value.code == StatusCode.INVALID_ARGUMENT
        assert server.enclave_count() == 0
    finally:
        server.stop()


# ----------------------------------------------------------------- the security gate


def test_secure_ray_passes(secure_env: dict[str, str]) -> None:
    assert check_ray_security(secure_env, allow_plaintext=False) == []


@pytest.mark.parametrize("drop", ["RAY_AUTH_MODE", "RAY_AUTH_TOKEN"])
def test_fleet_mode_needs_token_auth(
    secure_env: dict[str, str], drop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token to fall back on
    del secure_env[drop]
    with pytest.raises(FleetConfigError, match="token authentication"):
        check_ray_security(secure_env, allow_plaintext=True)


def test_a_token_file_counts(secure_env: dict[str, str], tmp_path: Path) -> None:
    del secure_env["RAY_AUTH_TOKEN"]
    token = tmp_path / "token"
    token.write_text("secret\n")
    secure_env["RAY_AUTH_TOKEN_PATH"] = str(token)
    assert check_ray_security(secure_env, allow_plaintext=False) == []
    token.write_text("")
    with pytest.raises(FleetConfigError, match="token authentication"):
        check_ray_security(secure_env, allow_plaintext=False)


def test_fleet_mode_needs_tls_unless_told_otherwise(secure_env: dict[str, str]) -> None:
    secure_env["RAY_USE_TLS"] = "0"
    with pytest.raises(FleetConfigError, match="requires Ray's TLS"):
        check_ray_security(secure_env, allow_plaintext=False)
    warnings = check_ray_security(secure_env, allow_plaintext=True)
    assert len(warnings) == 1
    assert "NOT encrypted" in warnings[0]


def test_tls_files_must_exist(secure_env: dict[str, str]) -> None:
    secure_env["RAY_TLS_CA_CERT"] = "/nonexistent/ca.pem"
    with pytest.raises(FleetConfigError, match="RAY_TLS_CA_CERT"):
        check_ray_security(secure_env, allow_plaintext=False)


def test_the_server_refuses_an_unsafe_fleet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_USE_TLS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    result = subprocess.run(
        [sys.executable, "-m", "farside", "provision-server", "--ray-address", "127.0.0.1:6379"],
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert b"requires Ray's token authentication" in result.stderr
    with pytest.raises(ValueError, match="own platform key"):
        ProvisionServerConfig(ray_address="127.0.0.1:6379", platform_dir=tmp_path)
    with pytest.raises(FleetConfigError, match="HOST:PORT"):
        RayPlacer("ray://head:10001", environ=SECURE | {"RAY_USE_TLS": "0"}, allow_plaintext=True)


# ----------------------------------------------------------------- fleet join


@pytest.fixture
def ray_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A stand-in ``ray`` executable first on the search path: ``join_command`` only builds
    the command line, so these tests need no Ray (the README's test command installs none)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ray = bin_dir / "ray"
    ray.write_text("#!/bin/sh\nexit 0\n")
    ray.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python3"))
    return str(ray)


def test_join_builds_ray_start(tmp_path: Path, ray_command: str) -> None:
    init_platform(tmp_path / "platform")
    command, env = join_command(
        ray_address="10.0.0.1:6379",
        slots=3,
        platform_dir=tmp_path / "platform",
        labels=["tee=sgx", "zone=a"],
        node_ip="10.0.0.7",
    )
    assert command[0] == ray_command
    assert command[1:5] == ["start", "--address", "10.0.0.1:6379", "--resources"]
    assert command[5] == '{"enclave": 3}'
    assert command[command.index("--labels") + 1] == "tee=sgx,zone=a"
    assert command[command.index("--node-ip-address") + 1] == "10.0.0.7"
    assert env["FARSIDE_FLEET_PLATFORM_DIR"] == str((tmp_path / "platform").resolve())
    assert "platform.key" not in " ".join(command)  # the key's path is for the host alone


def test_join_without_ray_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init_platform(tmp_path / "platform")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FleetConfigError, match=r"pip install 'farside\[fleet\]'"):
        join_command(ray_address="10.0.0.1:6379", slots=1, platform_dir=tmp_path / "platform")


def test_join_checks_before_it_starts_ray(tmp_path: Path) -> None:
    with pytest.raises(FleetConfigError, match="platform init"):
        join_command(ray_address="10.0.0.1:6379", slots=1, platform_dir=tmp_path)
    init_platform(tmp_path / "p")
    with pytest.raises(FleetConfigError, match="--slots"):
        join_command(ray_address="10.0.0.1:6379", slots=0, platform_dir=tmp_path / "p")
    with pytest.raises(ValueError, match="node label"):
        join_command(
            ray_address="10.0.0.1:6379", slots=1, platform_dir=tmp_path / "p", labels=["x"]
        )


# ----------------------------------------------------------------- placement decisions


class _RayError(Exception):
    pass


class _GetTimeoutError(_RayError):
    pass


class _RayTaskError(_RayError):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _RayActorError(_RayError):
    pass


SPEC = ProxySpec(enclave_id="0123456789abcdef", name="demo", tls=False)
STARTED = Started(
    address="10.0.0.3:5000", token="t", certificate=b"", host="10.0.0.3", node_id="n3", pid=42
)


class FakeRay:
    """Ray's driver API as RayPlacer uses it; each new actor's start() follows ``outcomes``."""

    def __init__(self, outcomes: list[Any], nodes: list[dict[str, Any]] | None = None) -> None:
        self.exceptions = types.SimpleNamespace(
            RayError=_RayError,
            GetTimeoutError=_GetTimeoutError,
            RayTaskError=_RayTaskError,
            RayActorError=_RayActorError,
        )
        self.outcomes = iter(outcomes)
        self.killed: list[int] = []
        self.options_seen: list[dict[str, Any]] = []
        self.node_list = (
            nodes
            if nodes is not None
            else [
                {
                    "Alive": True,
                    "NodeID": "n3",
                    "NodeManagerAddress": "10.0.0.3",
                    "Resources": {"enclave": 2.0},
                    "Labels": {"tee": "sgx", "ray.io/node-id": "n3"},
                },
            ]
        )
        self._ids = itertools.count()

    def nodes(self) -> list[dict[str, Any]]:
        return self.node_list

    def kill(self, actor: Any, no_restart: bool = True) -> None:
        self.killed.append(actor.id)

    def get(self, ref: Any, timeout: float | None = None) -> Any:
        if isinstance(ref, BaseException):
            raise ref
        return ref

    def slot_class(self) -> Any:
        ray = self

        class Actor:
            def __init__(self) -> None:
                self.id = next(ray._ids)
                outcome = next(ray.outcomes)
                self.start = types.SimpleNamespace(remote=lambda spec: outcome)
                self.wait = types.SimpleNamespace(remote=lambda: 0)

        class Options:
            def options(self, **options: Any) -> Any:
                ray.options_seen.append(options)
                return types.SimpleNamespace(remote=Actor)

        return Options()


@pytest.fixture
def head() -> Iterator[str]:
    """A listening socket standing in for the head's GCS port (the placer probes it)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"127.0.0.1:{server.getsockname()[1]}"


def placer(fake: FakeRay, address: str) -> RayPlacer:
    placer = RayPlacer(address, environ=SECURE | {"RAY_USE_TLS": "0"}, allow_plaintext=True)
    placer._ray = fake
    placer._slot_class = fake.slot_class()
    return placer


def test_an_actor_that_died_before_it_ran_is_placed_again(head: str) -> None:
    fake = FakeRay([_RayActorError("node died"), STARTED])
    placement = placer(fake, head).place(SPEC, ("tee", "sgx"), timeout=5)
    assert placement.started == STARTED
    assert fake.killed == [0]  # the dead one is ended; the second runs on
    assert fake.options_seen[0]["resources"] == {"enclave": 1}
    assert fake.options_seen[0]["label_selector"] == {"tee": "sgx"}
    assert fake.options_seen[0]["num_cpus"] == 0


def test_no_free_slot_in_time_is_resource_exhausted(head: str) -> None:
    fake = FakeRay([_GetTimeoutError()])
    with pytest.raises(RefusedError, match="came free") as refused:
        placer(fake, head).place(SPEC, None, timeout=0.5)
    assert refused.value.code == StatusCode.RESOURCE_EXHAUSTED
    assert fake.killed == [0]  # the pending actor does not hold on to a slot later


def test_a_host_that_cannot_start_the_proxy_is_internal_and_says_little(head: str) -> None:
    fake = FakeRay([_RayTaskError(RuntimeError("stderr of the host's proxy: secret path"))])
    with pytest.raises(RefusedError) as failed:
        placer(fake, head).place(SPEC, None, timeout=5)
    assert failed.value.code == StatusCode.INTERNAL
    assert "secret" not in str(failed.value)
    assert fake.killed == [0]


def test_no_host_with_the_label_is_refused_without_waiting(head: str) -> None:
    fake = FakeRay([])
    with pytest.raises(RefusedError, match="labelled tee=tdx") as refused:
        placer(fake, head).place(SPEC, ("tee", "tdx"), timeout=60)
    assert refused.value.code == StatusCode.RESOURCE_EXHAUSTED
    fake.node_list[0]["Alive"] = False
    with pytest.raises(RefusedError, match="no live host"):
        placer(fake, head).place(SPEC, None, timeout=60)


def test_an_unreachable_cluster_is_unavailable(head: str) -> None:
    fake = FakeRay([])

    def broken() -> list[dict[str, Any]]:
        raise ConnectionError("GCS at 10.0.0.1:6379 is gone")

    fake.nodes = broken  # type: ignore[method-assign]
    with pytest.raises(RefusedError, match="unreachable") as refused:
        placer(fake, head).place(SPEC, None, timeout=5)
    assert refused.value.code == StatusCode.UNAVAILABLE
    # The head gone entirely: refused at once, not after Ray's own minutes of retrying.
    gone = placer(FakeRay([STARTED]), f"127.0.0.1:{_closed_port()}")
    started = time.monotonic()
    with pytest.raises(RefusedError, match="unreachable") as refused:
        gone.place(SPEC, None, timeout=30)
    assert refused.value.code == StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 3.0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_the_server_refuses_to_start_without_the_head() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0123456789abcdef"}
    address = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "farside", "provision-server"),
            "--ray-address",
            address,
            "--ray-allow-plaintext",
        ],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert f"cannot reach the Ray cluster's head at {address}".encode() in result.stderr
    assert time.monotonic() - started < 30


def test_hosts_lists_slots_and_labels(head: str) -> None:
    fake = FakeRay([STARTED])
    p = placer(fake, head)
    placement = p.place(SPEC, None, timeout=5)
    fake.node_list.append({"Alive": True, "NodeID": "head", "Resources": {"CPU": 1.0}})
    [host] = p.hosts([placement])
    assert (host.address, host.slots_total, host.slots_free, host.alive) == ("10.0.0.3", 2, 1, True)
    assert dict(host.labels) == {"tee": "sgx"}


def test_fleet_certs_serve_and_connect(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    out = tmp_path / "ray-tls"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "farside", "fleet", "certs", "--out", str(out)),
            *("--host", "10.0.0.1", "--host", "head.example"),
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    node = x509.load_pem_x509_certificate((out / "node.pem").read_bytes())
    usage = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    # Ray presents the node certificate both as a server and as a client.
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    names = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["head.example"]
    assert (out / "node.key").stat().st_mode & 0o777 == 0o600
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "farside",
            "fleet",
            "certs",
            "--out",
            str(out),
            "--host",
            "10.0.0.1",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert again.returncode == 1
    assert b"already exist" in again.stderr


def test_stale_proxy_directories_are_removed_live_and_young_ones_kept(tmp_path: Path) -> None:
    from farside.provision._fleet_host import remove_stale_directories

    old = time.time() - 600
    stale, young, live = (tmp_path / f"farside-fleet-{n}" for n in ("a", "b", "c"))
    for directory in (stale, young, live):
        directory.mkdir(mode=0o700)
        (directory / "proxy.log").write_text("x")
    other = tmp_path / "not-ours"
    other.mkdir()
    for directory in (stale, live, other):
        os.utime(directory, (old, old))
    # A process naming the directory on its command line, as a proxy's --private-dir does.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "--private-dir", str(live)]
    )
    try:
        cmdline = Path(f"/proc/{holder.pid}/cmdline")
        deadline = time.monotonic() + 10
        while str(live).encode() not in cmdline.read_bytes():  # until it has exec'd
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert remove_stale_directories(tmp_path) == [stale]
        assert not stale.exists()
        assert young.exists()
        assert live.exists()
        assert other.exists()
    finally:
        holder.kill()
        holder.wait()
