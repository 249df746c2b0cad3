"""seccomp's deny list: what Landlock does not cover, and what enclave code has no use for.

The enclave runs in strict mode with every layer this machine offers required. Its
target is a 0600 file owned by the proxy's user (root here), outside its bundle, in a
directory the sandbox lets it read: the directory is on the proxy's ``PYTHONPATH``,
as the interpreter's own libraries are on its path. Landlock refuses every write to
the file, but its rights are about contents and names, not metadata: only seccomp
refuses a chmod, chown, utime, xattr or file-flag change, and each must fail with
``EPERM`` and leave the file as it was.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import os
import platform
import resource
import struct
import subprocess
import sys
import termios
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import farside
from farside.proxy.sandbox import probe

from ._support import ENCLAVES

ESCAPEE = ENCLAVES / "escapee.py"
ALL_LAYERS = tuple(layer for layer, why in probe().items() if not why)
XATTR = "user.farside"
AT_FDCWD = -100

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux's"),
    pytest.mark.skipif("seccomp" not in ALL_LAYERS, reason="seccomp is not available here"),
]


def syscall_number(name: str) -> int | None:
    """``name``'s number on this architecture, or None if it has no such call."""
    import pyseccomp

    number: int = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    if number >= 0:
        return number
    # Newer than this libseccomp: every architecture numbers calls from 424 (Linux 5.1)
    # on alike, past a base of its own (0 but on alpha and mips).
    unified = {"fchmodat2": 452, "setxattrat": 463, "removexattrat": 466, "file_setattr": 469}
    if name not in unified:
        return None
    return (
        unified[name] + pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "pidfd_send_signal") - 424
    )


def ioctl_write(kind: str, nr: int, size: int) -> int:
    """``_IOW(kind, nr, size)`` in the encoding of asm-generic/ioctl.h."""
    return 1 << 30 | size << 16 | ord(kind) << 8 | nr


FS_IOC_GETFLAGS = 2 << 30 | ctypes.sizeof(ctypes.c_long) << 16 | ord("f") << 8 | 1
FS_IOC_SETFLAGS = ioctl_write("f", 2, ctypes.sizeof(ctypes.c_long))
FS_IOC_FSSETXATTR = ioctl_write("X", 32, 28)
FS_NODUMP_FL = 0x40
FS_XFLAG_NODUMP = 0x80
GENERIC_IOCTLS = not platform.machine().startswith(("ppc", "powerpc", "mips", "sparc"))


def file_flags(path: Path) -> int | None:
    """The file's inode flags (``lsattr``), or None where its filesystem has none."""
    fd = os.open(path, os.O_RDONLY)
    try:
        buffer = array.array("l", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buffer)
        return buffer[0]
    except OSError:
        return None
    finally:
        os.close(fd)


def metadata(path: Path) -> dict[str, Any]:
    """Everything a metadata change would change: mode, owner, times, xattrs, flags."""
    stat = path.stat()
    return {
        "mode": oct(stat.st_mode),
        "owner": (stat.st_uid, stat.st_gid),
        "times": (stat.st_atime_ns, stat.st_mtime_ns, stat.st_ctime_ns),
        "xattrs": {name: os.getxattr(path, name) for name in os.listxattr(path)},
        "flags": file_flags(path),
    }


@pytest.fixture(scope="module")
def readable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readable-by-the-enclave")


@pytest.fixture(scope="module")
def escapee(
    readable: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[farside.EnclaveClient]:
    policy = farside.AttestationPolicy(allow_debug=True, require_sandbox=ALL_LAYERS)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", str(readable))  # the proxy inherits it: Landlock lets it read
        client = farside.load(
            ESCAPEE,
            files_root=tmp_path_factory.mktemp("escapee-files"),
            sandbox=farside.SandboxConfig(mode="strict"),
            policy=policy,
        )
    yield client
    farside.EnclaveManager.instance().destroy_enclave(client)


@pytest.fixture
def target(readable: Path, request: pytest.FixtureRequest) -> Path:
    """A 0600 file of the proxy's user with an xattr, outside the enclave's bundle."""
    path = readable / f"target-{abs(hash(request.node.nodeid))}"
    path.write_bytes(b"the trusted machine's")
    path.chmod(0o600)
    try:
        os.setxattr(path, XATTR, b"before")
    except OSError as exc:
        pytest.skip(f"this filesystem has no user xattrs: {exc}")
    if os.getuid() == 0:
        os.chown(path, 0, 0)
    return path


def assert_refused(outcome: dict[str, Any]) -> None:
    assert outcome["ok"] is False, f"the sandbox let it through: {outcome}"
    assert outcome["errno"] == errno.EPERM, outcome


def test_the_target_is_readable_so_only_seccomp_stands_in_the_way(
    escapee: farside.EnclaveClient, target: Path
) -> None:
    assert escapee.call("read_file", str(target)) == {
        "ok": True,
        "result": repr(b"the trusted machine's"),
    }
    assert escapee.call("write_file", str(target))["ok"] is False  # Landlock's part


def test_every_metadata_change_python_offers_is_refused(
    escapee: farside.EnclaveClient, target: Path
) -> None:
    before = metadata(target)
    outcomes = escapee.call("change_metadata", str(target), XATTR)
    ways = ("chmod", "chown", "utime", "setxattr", "setxattr-new", "removexattr")
    assert sorted(outcomes) == sorted([*ways, *(f"f{way}" for way in ways)])
    assert {way: outcome.get("errno") for way, outcome in outcomes.items()} == dict.fromkeys(
        outcomes, errno.EPERM
    ), outcomes
    assert metadata(target) == before


def _struct_fsxattr(xflags: int) -> bytes:
    return struct.pack("=IIII12x", xflags, 0, 0, 0)


# name, syscall, its arguments given the target's path, uid and gid, and whether a
# read-only descriptor of the target comes first
RAW_CALLS: dict[str, tuple[str, Callable[[str, int, int], list[Any]], bool]] = {
    "chmod": ("chmod", lambda p, u, g: [p, 0o666], False),
    "fchmod": ("fchmod", lambda p, u, g: [0o666], True),
    "fchmodat": ("fchmodat", lambda p, u, g: [AT_FDCWD, p, 0o666], False),
    "fchmodat2": ("fchmodat2", lambda p, u, g: [AT_FDCWD, p, 0o666, 0], False),
    "chown": ("chown", lambda p, u, g: [p, u, g], False),
    "lchown": ("lchown", lambda p, u, g: [p, u, g], False),
    "fchown": ("fchown", lambda p, u, g: [u, g], True),
    "fchownat": ("fchownat", lambda p, u, g: [AT_FDCWD, p, u, g, 0], False),
    "utime": ("utime", lambda p, u, g: [p, None], False),
    "utimes": ("utimes", lambda p, u, g: [p, None], False),
    "futimesat": ("futimesat", lambda p, u, g: [AT_FDCWD, p, None], False),
    "utimensat": ("utimensat", lambda p, u, g: [AT_FDCWD, p, None, 0], False),
    "futimens": ("utimensat", lambda p, u, g: [None, None, 0], True),
    "setxattr": ("setxattr", lambda p, u, g: [p, XATTR, b"changed", 7, 0], False),
    "lsetxattr": ("lsetxattr", lambda p, u, g: [p, XATTR, b"changed", 7, 0], False),
    "fsetxattr": ("fsetxattr", lambda p, u, g: [XATTR, b"changed", 7, 0], True),
    # struct xattr_args {value, size, flags} all 0: an empty value
    "setxattrat": ("setxattrat", lambda p, u, g: [AT_FDCWD, p, 0, XATTR, bytes(16), 16], False),
    "removexattr": ("removexattr", lambda p, u, g: [p, XATTR], False),
    "lremovexattr": ("lremovexattr", lambda p, u, g: [p, XATTR], False),
    "fremovexattr": ("fremovexattr", lambda p, u, g: [XATTR], True),
    "removexattrat": ("removexattrat", lambda p, u, g: [AT_FDCWD, p, 0, XATTR], False),
    # struct file_attr {u64 xflags; u32 extsize, nextents, projid, cowextsize}
    "file_setattr": (
        "file_setattr",
        lambda p, u, g: [AT_FDCWD, p, struct.pack("=QIIII", FS_XFLAG_NODUMP, 0, 0, 0, 0), 24, 0],
        False,
    ),
}


@pytest.mark.parametrize("way", sorted(RAW_CALLS))
def test_every_metadata_syscall_is_refused(
    escapee: farside.EnclaveClient, target: Path, way: str
) -> None:
    """The calls themselves, past the C library: legacy and new ones (fchmodat2, *xattrat)."""
    name, arguments, with_fd = RAW_CALLS[way]
    number = syscall_number(name)
    if number is None:
        pytest.skip(f"{platform.machine()} has no {name}")
    stat = target.stat()
    before = metadata(target)
    outcome = escapee.call(
        "syscall",
        number,
        arguments(str(target), stat.st_uid, stat.st_gid),
        fd_of=str(target) if with_fd else None,
    )
    assert_refused(outcome)
    assert metadata(target) == before


@pytest.mark.skipif(not GENERIC_IOCTLS, reason="this architecture encodes ioctls otherwise")
@pytest.mark.parametrize("command", ["FS_IOC_SETFLAGS", "FS_IOC_FSSETXATTR"])
def test_changing_file_flags_by_ioctl_is_refused(
    escapee: farside.EnclaveClient, target: Path, command: str
) -> None:
    """``chattr``: an ioctl on a descriptor opened read-only, which Landlock allows."""
    flags = file_flags(target)
    if flags is None:
        pytest.skip("this filesystem has no inode flags")
    before = metadata(target)
    ioctl = syscall_number("ioctl")
    if command == "FS_IOC_SETFLAGS":
        arguments = [FS_IOC_SETFLAGS, struct.pack("=l", flags | FS_NODUMP_FL)]
    else:
        arguments = [FS_IOC_FSSETXATTR, _struct_fsxattr(FS_XFLAG_NODUMP)]
    assert_refused(escapee.call("syscall", ioctl, arguments, fd_of=str(target)))
    assert metadata(target) == before


# ------------------------------------------------------------ other processes


@pytest.fixture
def victim() -> Iterator[int]:
    """A process of the proxy's user, outside the sandbox (it could be the client)."""
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as process:
        try:
            yield process.pid
        finally:
            process.kill()


def scheduling(pid: int) -> dict[str, Any]:
    return {
        "nice": os.getpriority(os.PRIO_PROCESS, pid),
        "affinity": os.sched_getaffinity(pid),
        "policy": os.sched_getscheduler(pid),
        "open files": resource.prlimit(pid, resource.RLIMIT_NOFILE),
    }


@pytest.mark.parametrize(
    "how", ["setpriority", "sched_setaffinity", "sched_setscheduler", "prlimit"]
)
def test_another_processes_scheduling_and_limits_cannot_change(
    escapee: farside.EnclaveClient, victim: int, how: str
) -> None:
    before = scheduling(victim)
    assert_refused(escapee.call("touch_process", victim, how))
    assert scheduling(victim) == before


def test_the_enclave_cannot_change_its_own_limits(escapee: farside.EnclaveClient) -> None:
    """The proxy's rlimits are its operator's and its client's; root could raise them."""
    before = escapee.call("limits")
    assert_refused(escapee.call("change_own_limit"))
    assert escapee.call("limits") == before


# ------------------------------------------------------------ no use to enclave code


def _other_calls() -> list[Any]:
    handle = struct.pack("=Ii", 120, 0) + bytes(120)  # struct file_handle, 120 bytes of room
    calls: list[tuple[str, str, Callable[[str], list[Any]]]] = [
        ("name_to_handle_at", "name_to_handle_at", lambda p: [AT_FDCWD, p, handle, bytes(8), 0]),
        ("fanotify_init", "fanotify_init", lambda p: [0x200, 0]),  # FAN_REPORT_FID
        ("setresuid", "setresuid", lambda p: [-1, -1, -1]),  # even to what it is
        ("adjtimex", "adjtimex", lambda p: [bytes(256)]),  # even only to read the clock's state
        ("modify_ldt", "modify_ldt", lambda p: [0, bytes(16), 16]),
        # typing into the terminal of whoever reads the proxy's stdin; the kernel reads
        # only the command's low 32 bits, so set high ones must not slip past the filter
        ("TIOCSTI", "ioctl", lambda p: [0, termios.TIOCSTI, b"x"]),
        ("TIOCSTI-high-bits", "ioctl", lambda p: [0, 1 << 32 | termios.TIOCSTI, b"x"]),
    ]
    return [pytest.param(name, call, arguments, id=name) for name, call, arguments in calls]


@pytest.mark.parametrize(("name", "call", "arguments"), _other_calls())
def test_calls_enclave_code_has_no_use_for_are_refused(
    escapee: farside.EnclaveClient,
    target: Path,
    name: str,
    call: str,
    arguments: Callable[[str], list[Any]],
) -> None:
    number = syscall_number(call)
    if number is None:
        pytest.skip(f"{platform.machine()} has no {call}")
    assert_refused(escapee.call("syscall", number, arguments(str(target))))


def test_what_enclave_code_does_all_the_time_still_works(escapee: farside.EnclaveClient) -> None:
    assert escapee.call("ordinary") == {
        "random": 32,
        "mapped": "hello",
        "threads": [0, 1, 2, 3],
        "decimal": "0.125",
        "nice": os.getpriority(os.PRIO_PROCESS, os.getpid()),  # the proxy inherits ours
        "clock": True,
        "limits": True,
    }
    assert escapee.call("ping") == "pong"
