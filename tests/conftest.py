"""Suite-wide fixtures: no proxy process outlives the test that started it.

* ``--run-slow`` enables the tests marked ``slow`` (skipped by default).
* After every test, the proxies this session started (descendants of this
  process, proxies whose ``--parent-pid`` is this process, or any process that
  inherited this session's marker in its environment) must be gone within 5 s,
  except those of enclaves that were already loaded when the test started (a
  module-scoped fixture's enclave). Stragglers are killed and the test fails.
* At the end of the session every enclave still registered in the
  ``EnclaveManager`` is destroyed, and any remaining proxy is killed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SESSION_MARKER_VAR = "FARSIDE_TEST_SESSION"
SESSION_MARKER = f"{os.getpid()}-{secrets.token_hex(8)}"
# Children (proxies, CLI runs, client scripts) inherit this; it finds their orphans too.
os.environ[SESSION_MARKER_VAR] = SESSION_MARKER

LEFTOVER_GRACE = 5.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", default=False, help="also run tests marked slow"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: give --run-slow to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# --------------------------------------------------------------------- processes


@dataclass(frozen=True)
class ProxyProcess:
    pid: int
    cmdline: str


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _parent_pid(pid: int) -> int | None:
    stat = _read(Path(f"/proc/{pid}/stat")).decode(errors="replace")
    # pid (comm) state ppid ...; comm may contain spaces and parentheses.
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None


def _is_zombie(pid: int) -> bool:
    stat = _read(Path(f"/proc/{pid}/stat")).decode(errors="replace")
    fields = stat.rpartition(")")[2].split()
    return not fields or fields[0] in ("Z", "X")


def _is_descendant(pid: int, ancestor: int) -> bool:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        parent = _parent_pid(pid)
        if parent is None:
            return False
        if parent == ancestor:
            return True
        pid = parent
    return False


def _parent_pid_argument(args: list[str]) -> int | None:
    for index, arg in enumerate(args):
        value = None
        if arg == "--parent-pid" and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith("--parent-pid="):
            value = arg.partition("=")[2]
        if value is not None:
            with contextlib.suppress(ValueError):
                return int(value)
    return None


def session_proxies() -> list[ProxyProcess]:
    """Live proxy processes that this test session started, directly or not."""
    me = os.getpid()
    marker = f"{SESSION_MARKER_VAR}={SESSION_MARKER}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        args = [a.decode(errors="replace") for a in _read(entry / "cmdline").split(b"\0") if a]
        if "proxy" not in args or not any("farside" in a for a in args):
            continue
        if _is_zombie(pid):
            continue  # exited; only its parent's wait() is missing
        ours = (
            _parent_pid_argument(args) == me
            or _is_descendant(pid, me)
            or marker in _read(entry / "environ").split(b"\0")
        )
        if ours:
            found.append(ProxyProcess(pid, " ".join(args)))
    return found


def kill_process(pid: int) -> None:
    """SIGKILL ``pid`` and reap it if it is our child (Popen copes with that)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return  # not our child: init reaps it
        if done:
            return
        time.sleep(0.01)


def _registered_proxy_pids() -> set[int]:
    """Proxy pids of the enclaves currently registered in the EnclaveManager."""
    import farside

    manager = farside.EnclaveManager.instance()
    with manager._lock:
        clients = [c for c in manager._clients.values() if c is not None]
    pids = set()
    for client in clients:
        process = getattr(getattr(client._lease, "handle", None), "process", None)
        if process is not None and not client.closed:
            pids.add(process.pid)
    return pids


@pytest.fixture(autouse=True)
def no_leftover_proxies() -> Iterator[None]:
    """Fail the test if a proxy it started is still running 5 s after it ended."""
    allowed = _registered_proxy_pids()  # module-scoped fixtures' enclaves, loaded already
    yield
    allowed &= _registered_proxy_pids()  # still registered after the test, so still in use
    deadline = time.monotonic() + LEFTOVER_GRACE
    while True:
        leftovers = [p for p in session_proxies() if p.pid not in allowed]
        if not leftovers or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if leftovers:
        for proxy in leftovers:
            kill_process(proxy.pid)
        details = "\n".join(f"  pid {p.pid}: {p.cmdline}" for p in leftovers)
        pytest.fail(
            f"{len(leftovers)} proxy process(es) still ran {LEFTOVER_GRACE:g} s after the "
            f"test ended (killed now):\n{details}",
            pytrace=False,
        )


@pytest.fixture(autouse=True, scope="session")
def destroy_registered_enclaves() -> Iterator[None]:
    """At the end of the session, destroy what is still loaded and kill what still runs."""
    yield
    import farside

    manager = farside.EnclaveManager.instance()
    with manager._lock:
        clients = [c for c in manager._clients.values() if c is not None]
    for client in clients:
        with contextlib.suppress(Exception):
            manager.destroy_enclave(client, skip_finalize=True)
    for proxy in session_proxies():
        kill_process(proxy.pid)
