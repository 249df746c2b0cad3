"""Every mistake gets a clear answer from the ``farside`` command (issue 15, items 5-8).

One line naming the cause and the flag that fixes it, exit status 1 (130 for Ctrl-C),
no traceback and none of gRPC's own log lines; ``-v`` shows more. Each TLS mistake is
made for real against a provision server on loopback.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ENCLAVES = Path(__file__).resolve().parent.parent / "enclaves"
WORKER = ENCLAVES / "worker.py"
READY = re.compile(r"farside provision-server listening on (\S+:\d+)")
# What gRPC's C core writes when it is let through: "E1205 22:05:29.716640 21968 ...cc:1558]".
GRPC_LOG_LINE = re.compile(r"^[EWI]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\.cc:\d+\]", re.MULTILINE)


def farside(
    *args: str | Path,
    cwd: Path | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    return subprocess.run(
        [sys.executable, "-m", "farside", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**environment, **(env or {})},
        check=False,
    )


def one_line(done: subprocess.CompletedProcess[str], *needles: str, code: int = 1) -> str:
    """The one error line of a failed command, checked for ``needles``."""
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert not GRPC_LOG_LINE.search(done.stderr), done.stderr
    lines = [line for line in done.stderr.splitlines() if "note:" not in line]
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------- a server


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Certificates for 127.0.0.1, a second CA's set, and a platform identity."""
    root = tmp_path_factory.mktemp("keys")
    for out in ("tls", "other"):
        assert farside("certs", "--out", root / out, "--host", "127.0.0.1").returncode == 0
    assert farside("platform", "init", "--dir", root / "platform").returncode == 0
    return root


class Server:
    def __init__(self, args: list[str | Path], log: Path) -> None:
        self.log = log
        environment = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "farside", "provision-server", *map(str, args)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=environment,
                text=True,
            )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        line = self.process.stdout.readline() if ready else ""
        match = READY.search(line)
        if match is None:
            self.stop()
            pytest.fail(f"the server did not start ({line!r}):\n{self.stderr()}")
        self.address = match.group(1)
        self.port = int(self.address.rpartition(":")[2])

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


StartServer = Callable[..., Server]


@pytest.fixture
def start_server(keys: Path, tmp_path: Path) -> Iterator[StartServer]:
    started: list[Server] = []

    def start(*extra: str | Path, mtls: bool = True, tls: bool = True) -> Server:
        args: list[str | Path] = ["--port", "0", "--workdir", tmp_path / f"work{len(started)}"]
        if tls:
            args += ["--tls-cert", keys / "tls/server.pem", "--tls-key", keys / "tls/server.key"]
            args += ["--platform-dir", keys / "platform"]
        if mtls:
            args += ["--client-ca", keys / "tls/ca.pem"]
        (tmp_path / f"work{len(started)}").mkdir()
        server = Server([*args, *extra], tmp_path / f"server{len(started)}.log")
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def client_flags(keys: Path, ca: str = "tls", cert: str | None = "tls") -> list[str | Path]:
    flags: list[str | Path] = ["--tls-ca", keys / ca / "ca.pem"]
    if cert is not None:
        flags += ["--tls-cert", keys / cert / "client.pem", "--tls-key", keys / cert / "client.key"]
    return [*flags, "--platform-key", keys / "platform/platform.pub"]


def demo(server: Server, *flags: str | Path) -> subprocess.CompletedProcess[str]:
    return farside("demo", "--remote", server.address, *flags, "--message", "x")


# ----------------------------------------------------------------------- TLS, item 5


def test_the_right_flags_work(start_server: StartServer, keys: Path) -> None:
    server = start_server()
    done = demo(server, *client_flags(keys))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "Decrypted inside the enclave: x"


def test_swapped_client_certificate_and_key(start_server: StartServer, keys: Path) -> None:
    server = start_server()
    flags = ["--tls-ca", keys / "tls/ca.pem", "--tls-cert", keys / "tls/client.key"]
    flags += ["--tls-key", keys / "tls/client.pem"]
    one_line(demo(server, *flags), "--tls-cert", "is a private key", "swapped")


def test_a_key_that_is_not_the_certificates(start_server: StartServer, keys: Path) -> None:
    server = start_server()
    flags = ["--tls-ca", keys / "tls/ca.pem", "--tls-cert", keys / "tls/client.pem"]
    flags += ["--tls-key", keys / "other/client.key"]
    one_line(demo(server, *flags), "--tls-key", "is not the key of the certificate in --tls-cert")


def test_a_ca_from_elsewhere(start_server: StartServer, keys: Path) -> None:
    server = start_server()
    line = one_line(demo(server, *client_flags(keys, ca="other")), server.address)
    assert "not signed by the CA this client trusts" in line
    assert "--tls-ca FILE" in line


def test_no_client_certificate(start_server: StartServer, keys: Path) -> None:
    server = start_server()
    line = one_line(demo(server, *client_flags(keys, cert=None)), server.address)
    assert "requires a client certificate" in line
    assert "--tls-cert FILE --tls-key FILE" in line


def test_a_client_certificate_from_another_ca(start_server: StartServer, keys: Path) -> None:
    server = start_server()
    line = one_line(demo(server, *client_flags(keys, cert="other")))
    assert "did not accept this client's certificate" in line
    assert "--client-ca" in line


def test_a_plaintext_client_of_a_tls_server(start_server: StartServer, keys: Path) -> None:
    server = start_server()
    line = one_line(demo(server, "--platform-key", keys / "platform/platform.pub"))
    assert "requires TLS" in line
    assert "--tls-ca FILE" in line


def test_a_tls_client_of_a_plaintext_server(start_server: StartServer, keys: Path) -> None:
    server = start_server(mtls=False, tls=False)
    line = one_line(demo(server, "--tls-ca", keys / "tls/ca.pem"))
    assert "does not speak TLS" in line
    assert "leave out the --tls-* flags" in line


def test_the_server_log_stays_free_of_grpc_lines(start_server: StartServer, keys: Path) -> None:
    server = start_server()
    one_line(demo(server, *client_flags(keys, cert=None)))
    one_line(demo(server, *client_flags(keys, ca="other")))
    server.stop()
    log = server.stderr()
    assert not GRPC_LOG_LINE.search(log), log
    assert "ssl_transport_security" not in log


def test_server_log_lines_carry_a_timestamp(start_server: StartServer, keys: Path) -> None:
    server = start_server()
    assert demo(server, *client_flags(keys)).returncode == 0
    server.stop()
    lines = [line for line in server.stderr().splitlines() if "farside-provision" in line]
    assert any("provisioned" in line for line in lines)
    for line in lines:
        # ISO 8601 in UTC, to the millisecond (farside._logging)
        stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
        assert re.match(stamp + " farside-provision ", line), line


def test_grpc_log_lines_come_back_with_log_level_debug() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = farside("--log-level", "debug", "status", f"127.0.0.1:{port}", "--timeout", "2")
    assert done.returncode == 1
    assert GRPC_LOG_LINE.search(done.stderr), done.stderr


def test_a_server_with_swapped_certificate_and_key(keys: Path, tmp_path: Path) -> None:
    done = farside(
        "provision-server",
        "--port",
        "0",
        "--tls-cert",
        keys / "tls/server.key",
        "--tls-key",
        keys / "tls/server.pem",
    )
    one_line(done, "farside provision-server: --tls-cert", "is a private key", "swapped")


def test_a_server_given_a_certificate_without_its_key() -> None:
    done = farside("provision-server", "--port", "0", "--tls-cert", WORKER)
    line = one_line(done, "--tls-cert needs --tls-key")
    assert "TLSConfig" not in line


def test_a_client_given_a_certificate_without_its_key(keys: Path) -> None:
    done = farside(
        "demo", "--remote", "127.0.0.1:1", "--tls-cert", keys / "tls/client.pem", "--message", "x"
    )
    one_line(done, "--tls-cert needs --tls-key")


def test_a_port_in_use(keys: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flags = ["--tls-cert", keys / "tls/server.pem", "--tls-key", keys / "tls/server.key"]
        flags += ["--platform-dir", keys / "platform"]
        done = farside("provision-server", "--port", str(port), *flags)
    line = one_line(done, f"127.0.0.1:{port}", "the port is in use", "--port")
    assert "GRPC_VERBOSITY" not in line


def test_nothing_listening(keys: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = farside("demo", "--remote", f"127.0.0.1:{port}", *client_flags(keys), "--message", "x")
    one_line(done, "is unreachable", "connection refused", "check the address")


def test_a_silent_endpoint_gives_up_at_the_connect_timeout(keys: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        done = farside(
            "demo",
            "--remote",
            f"127.0.0.1:{port}",
            *client_flags(keys),
            "--connect-timeout",
            "1",
            "--message",
            "x",
            timeout=15,  # gRPC's own connect timeout is 20 s
        )
    one_line(done, "did not answer within 1 s", "--connect-timeout")


# ------------------------------------------------------------- attestation, item 6


def test_a_remote_enclave_without_the_platform_key(start_server: StartServer, keys: Path) -> None:
    server = start_server()
    flags = ["--tls-ca", keys / "tls/ca.pem", "--tls-cert", keys / "tls/client.pem"]
    flags += ["--tls-key", keys / "tls/client.key"]
    line = one_line(demo(server, *flags), "attestation failed (platform signature)")
    assert "--platform-key FILE" in line
    assert "AttestationPolicy" not in line  # Python is not where the user is


def test_a_server_without_platform_dir_says_what_that_means(
    start_server: StartServer, keys: Path
) -> None:
    server = start_server(tls=False, mtls=False)
    server.stop()
    assert "no --platform-dir" in server.stderr()
    assert "no remote client trusts" in server.stderr()


# ------------------------------------------------------------- tracebacks, item 7


def test_an_unknown_entry_point_is_one_line() -> None:
    line = one_line(farside("run", WORKER, "--call", "no_such_call"))
    assert line.startswith("farside run: the enclave has no entry point named 'no_such_call'")
    assert "farside._errors" not in line
    assert "EnclaveError" not in line


def test_an_enclave_exception_shows_its_remote_traceback_with_v() -> None:
    quiet = farside("run", WORKER, "--call", "fail", '"it broke"')
    line = one_line(quiet, "ValueError: it broke", "(-v for details)")
    assert "Remote traceback" not in quiet.stderr
    loud = farside("run", WORKER, "--call", "fail", '"it broke"', "-v")
    assert loud.returncode == 1
    assert "Remote traceback" in loud.stderr
    assert 'File "<enclave worker>/worker.py"' in loud.stderr
    assert "farside/transport" not in loud.stderr.split("Remote traceback")[1]
    assert line.removesuffix(" (-v for details)") in loud.stderr.splitlines()


def test_ctrl_c_in_run_is_one_line(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "farside", "run", str(WORKER), "--call", "sleep", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert process.stderr is not None
    # The note about 60 is the last thing printed before the call is made.
    ready, _, _ = select.select([process.stderr], [], [], 30)
    assert ready
    assert "note:" in process.stderr.readline()
    time.sleep(1.0)  # let the load finish and the call start; a Ctrl-C earlier is fine too
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert err.strip() == "farside run: interrupted"
    assert out == ""
