"""No lower-layer exception leaks out of the public API (httpx's test_exceptions, for farside).

Every failure mode below must surface as one of farside's errors (or the
documented ``TypeError``/``ValueError`` of misuse), never as ``grpc.RpcError``,
``OSError`` or a msgpack exception.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import msgpack
import msgpack.exceptions
import pytest

import farside

from ._support import INIT_RAISES, NO_BUILD, WORKER, process_gone, proxy_pid, wait_until

# msgpack's own exception classes (some of its names are aliases of builtins; skip those).
MSGPACK_ERRORS = tuple(
    value
    for value in vars(msgpack.exceptions).values()
    if isinstance(value, type) and value.__module__ == "msgpack.exceptions"
)
LEAKY: tuple[type[BaseException], ...] = (grpc.RpcError, OSError, *MSGPACK_ERRORS)

Scenario = Callable[[Path], Any]


class BogusAddress:
    """A provisioner whose proxy address has nobody listening."""

    def provision(self, *, name: str, timeout: float) -> farside.ProxyLease:
        return farside.ProxyLease(address="unix:/nonexistent/farside/proxy.sock", token="t")

    def release(self, lease: farside.ProxyLease) -> None:
        pass


class OSErrorProvision:
    """A provisioner that fails with a bare OSError."""

    def provision(self, *, name: str, timeout: float) -> farside.ProxyLease:
        raise OSError(28, "No space left on device")

    def release(self, lease: farside.ProxyLease) -> None:
        pass


def load_and(action: Callable[[farside.EnclaveClient], Any], **load_args: Any) -> Scenario:
    def scenario(tmp_path: Path) -> Any:
        with farside.load(WORKER, files_root=tmp_path, **load_args) as client:
            return action(client)

    return scenario


def kill_then(action: Callable[[farside.EnclaveClient], Any]) -> Callable[..., Any]:
    def scenario(client: farside.EnclaveClient) -> Any:
        pid = proxy_pid(client)
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: process_gone(pid), 5)
        return action(client)

    return scenario


def kill_during_call(client: farside.EnclaveClient) -> Any:
    timer = threading.Timer(0.3, os.kill, (proxy_pid(client), signal.SIGKILL))
    timer.start()
    try:
        return client.call("sleep", 30)
    finally:
        timer.cancel()


def syntax_error(tmp_path: Path) -> Any:
    bundle = tmp_path / "bad_syntax.py"
    bundle.write_text("def f(:\n", encoding="utf-8")
    return farside.load(bundle)


def unreadable(tmp_path: Path) -> Any:
    """A package bundle with a file that cannot be read (a dangling symlink; works as root)."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("x = 1\n", encoding="utf-8")
    (package / "gone.py").symlink_to(tmp_path / "nowhere.py")
    return farside.load(package)


def name_in_use(tmp_path: Path) -> Any:
    with farside.load(WORKER, name="twice"):
        return farside.load(WORKER, name="twice")


def destroyed(tmp_path: Path) -> Any:
    client = farside.load(WORKER)
    farside.EnclaveManager.instance().destroy_enclave(client)
    return client.call("echo")


def not_a_dir(tmp_path: Path) -> Any:
    (tmp_path / "f").write_text("", encoding="utf-8")
    return farside.load(WORKER, files_root=tmp_path / "f")


def raising_os_error(*args: Any) -> Any:
    raise ConnectionResetError("the host's disk went away")


SCENARIOS: dict[str, tuple[Scenario, type[BaseException]]] = {
    "missing file": (lambda p: farside.load(p / "missing.py"), farside.EnclaveLoadError),
    "directory, not a bundle": (farside.load, farside.EnclaveLoadError),
    "unreadable bundle": (unreadable, farside.EnclaveLoadError),
    "syntax error": (syntax_error, farside.EnclaveLoadError),
    "no build_trusted_application": (lambda p: farside.load(NO_BUILD), farside.EnclaveLoadError),
    "initialize raises": (lambda p: farside.load(INIT_RAISES), farside.EnclaveLoadError),
    "files_root not a directory": (not_a_dir, farside.EnclaveLoadError),
    "interpreter missing": (
        lambda p: farside.load(WORKER, provision=farside.LocalProvision(python="/nonexistent/py")),
        farside.EnclaveLoadError,
    ),
    "interpreter exits at once": (
        lambda p: farside.load(WORKER, provision=farside.LocalProvision(python="/bin/true")),
        farside.EnclaveLoadError,
    ),
    "proxy not ready": (
        lambda p: farside.load(WORKER, provision=farside.LocalProvision(python="/bin/echo")),
        farside.EnclaveLoadError,
    ),
    "load timeout": (lambda p: farside.load(WORKER, load_timeout=0.001), farside.EnclaveLoadError),
    "nobody at the address": (
        lambda p: farside.load(WORKER, provision=BogusAddress()),
        farside.EnclaveLoadError,
    ),
    "provisioner raises OSError": (
        lambda p: farside.load(WORKER, provision=OSErrorProvision()),
        farside.EnclaveLoadError,
    ),
    "unknown entry point": (load_and(lambda c: c.call("nope")), farside.EnclaveCallError),
    "unsupported value": (load_and(lambda c: c.call("echo", {1, 2})), TypeError),
    "unsupported result": (load_and(lambda c: c.call("bad_result")), farside.EnclaveCallError),
    "enclave file error uncaught": (
        load_and(lambda c: c.call("read_file", "missing.txt")),
        farside.EnclaveCallError,
    ),
    "enclave escapes its root uncaught": (
        load_and(lambda c: c.call("write_file", "../escape.txt", "x")),
        farside.EnclaveCallError,
    ),
    "handler raises OSError": (
        load_and(lambda c: c.call("call_host", "h"), exit_handlers={"h": raising_os_error}),
        farside.EnclaveCallError,
    ),
    "call timeout": (
        load_and(lambda c: c.call("sleep", 2, timeout=0.2)),
        farside.DeadlineExceededError,
    ),
    "proxy killed during a call": (load_and(kill_during_call), farside.EnclaveUnavailableError),
    "proxy killed before a call": (
        load_and(kill_then(lambda c: c.call("echo"))),
        farside.EnclaveUnavailableError,
    ),
    "name in use": (name_in_use, farside.EnclaveNameError),
    "unknown name": (
        lambda p: farside.EnclaveManager.instance().get_client("unknown"),
        farside.EnclaveNameError,
    ),
    "destroyed client": (destroyed, farside.ClientClosedError),
}


@pytest.mark.parametrize("case", list(SCENARIOS))
def test_failure_is_mapped_to_a_farside_error(case: str, tmp_path: Path) -> None:
    scenario, expected = SCENARIOS[case]
    try:
        scenario(tmp_path)
    except Exception as exc:
        error = exc
    else:
        pytest.fail(f"{case}: nothing was raised")
    assert not isinstance(error, LEAKY), f"{case}: {type(error).__module__}.{type(error).__name__}"
    assert isinstance(error, expected), f"{case}: got {type(error).__name__}: {error}"
    if isinstance(error, farside.EnclaveError):
        assert isinstance(error.code, farside.StatusCode)
        assert error.message
    assert str(error)


def test_destroy_after_the_proxy_died_raises_nothing() -> None:
    client = farside.load(WORKER)
    pid = proxy_pid(client)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: process_gone(pid), 5)
    farside.EnclaveManager.instance().destroy_enclave(client)  # no exception at all
    assert client.closed


@pytest.fixture
def raw_lease() -> Iterator[tuple[farside.LocalProvision, farside.ProxyLease]]:
    provision = farside.LocalProvision(idle_timeout=2, stop_timeout=0.5)
    lease = provision.provision(name="raw", timeout=10)
    yield provision, lease
    provision.release(lease)


def test_refused_session_is_reported_as_a_load_error_not_an_rpc_error(
    raw_lease: tuple[farside.LocalProvision, farside.ProxyLease],
) -> None:
    from farside.transport import factory

    _, lease = raw_lease
    lost: list[BaseException] = []
    done = threading.Event()
    transport = factory.connect(lease.transport, lease.address, token="wrong", tls=lease.tls)
    transport.start(lambda frames: None, lambda e: (lost.append(e), done.set()))
    assert done.wait(5)
    transport.close(timeout=1)
    assert len(lost) == 1
    assert not isinstance(lost[0], LEAKY)
    assert isinstance(lost[0], farside.EnclaveLoadError)
    assert lost[0].code == farside.StatusCode.UNAUTHENTICATED


def test_unreachable_proxy_error_names_the_address() -> None:
    # The race (stream failure vs. sending the bundle) goes the bad way almost every
    # time; ten tries make the outcome deterministic for all practical purposes.
    for _ in range(10):
        with pytest.raises(farside.EnclaveLoadError) as info:
            farside.load(WORKER, provision=BogusAddress())
        assert "/nonexistent/farside/proxy.sock" in str(info.value)
