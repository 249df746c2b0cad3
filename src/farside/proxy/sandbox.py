"""The sandbox that confines a proxy before any enclave code runs in it.

Layers, best first (``docs/security.md`` says what each refuses and what stays open):

* ``landlock-fs``: the filesystem is read-only, and readable only where the
  interpreter's code and libraries live (the bundle itself is in memory);
* ``landlock-net``: no TCP bind or connect (Landlock ABI 4);
* ``landlock-scope``: no abstract Unix sockets or signals outside the sandbox (ABI 6);
* ``seccomp``: no ``execve``, no new processes (threads stay allowed), no ``ptrace``,
  no new sockets, no signals to other processes, no metadata changes (chmod, chown,
  utime, xattrs, file flags), nothing done to other processes' scheduling or limits,
  nor to the machine; refused calls fail with ``EPERM``;
* ``rlimits``: no core dumps, and the memory / open-files / CPU limits asked for;
* ``netns``: a proxy that listens on a Unix socket starts in a network namespace of
  its own (with a user namespace), so it reaches no network at all.

Landlock binds the thread that applies it and the threads it starts afterwards;
seccomp (synced to every thread) and rlimits bind the whole process; the namespace
is entered at start, while the process still has one thread.

This module owns the proxy's confinement and nothing else: it does not know the
session or the enclave.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import resource
import sys
import termios
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._config import SANDBOX_MODES, SandboxConfig, SandboxMode
from . import _landlock

__all__ = [
    "LAYERS",
    "PRETEND_UNAVAILABLE_ENV",
    "Sandbox",
    "SandboxError",
    "enter_network_namespace",
    "landlock_abi",
    "probe",
    "stricter",
]

log = logging.getLogger("farside.proxy")

LAYERS = ("landlock-fs", "landlock-net", "landlock-scope", "seccomp", "rlimits", "netns")

PRETEND_UNAVAILABLE_ENV = "FARSIDE_SANDBOX_PRETEND_UNAVAILABLE"
"""Comma-separated layers (or ``landlock``) to treat as missing: how tests force a layer off."""

_CLONE_THREAD = 0x00010000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000

# Syscalls refused outright, grouped by why. Those an architecture lacks are skipped;
# those newer than this machine's libseccomp are refused by number (_UNIFIED_NUMBERS).
# Left to Landlock: creating, linking, renaming and removing files (link*, symlink*,
# mknod*, rename*, unlink*): its rights cover them, and where Landlock is missing
# (best-effort) refusing them here would not help while open() can write anything.
_DENIED_GROUPS = (
    # new programs and processes (clone without CLONE_THREAD is filtered below)
    "execve execveat fork vfork",
    # other processes' memory, descriptors and signals
    "ptrace process_vm_readv process_vm_writev process_madvise process_mrelease kcmp",
    "pidfd_getfd pidfd_send_signal tkill",
    # metadata: Landlock's rights are about contents and names, so without these a
    # file the enclave may only read (or only name) could be chmod-ed, chown-ed,
    # re-dated or re-labelled; nothing in the proxy changes metadata once confined.
    # file_setattr is chattr by path (by descriptor it is an ioctl: _DENIED_IOCTLS).
    "chmod fchmod fchmodat fchmodat2 chown fchown lchown fchownat",
    "utime utimes futimesat utimensat file_setattr",
    "setxattr lsetxattr fsetxattr setxattrat",
    "removexattr lremovexattr fremovexattr removexattrat",
    # files by handle (past Landlock's paths) or by watching others' file activity
    "name_to_handle_at open_by_handle_at fanotify_init",
    # new sockets (the session's connection exists already); io_uring could open some
    # without passing through this filter
    "socket socketpair io_uring_setup io_uring_enter io_uring_register",
    # namespaces and mounts (the user namespace of ``netns`` gives capabilities there)
    "unshare setns mount umount2 pivot_root chroot",
    "open_tree open_tree_attr move_mount mount_setattr fsopen fsconfig fsmount fspick",
    # who the process is: no use to enclave code, and a root proxy could become anyone
    "setuid setgid setreuid setregid setresuid setresgid setfsuid setfsgid",
    "setgroups capset lsm_set_self_attr",
    # its own limits are its operator's and its client's (prlimit64: filtered below)
    "setrlimit",
    # the machine as a whole: the kernel refuses most of these without capabilities
    # in the first user namespace, which a root proxy on TCP has
    "reboot kexec_load kexec_file_load init_module finit_module delete_module",
    "swapon swapoff acct quotactl quotactl_fd sethostname setdomainname",
    "syslog vhangup settimeofday clock_settime clock_adjtime adjtimex",
    "iopl ioperm modify_ldt uselib",
    # kernel interfaces an enclave has no business with
    "bpf perf_event_open userfaultfd keyctl add_key request_key",
)
_DENIED_SYSCALLS = tuple(name for group in _DENIED_GROUPS for name in group.split())
# Calls newer than some libseccomp still in use, by their number in the table every
# architecture has shared since Linux 5.1 (alpha and mips add a base of their own,
# found from pidfd_send_signal's number, 424 in that table).
_UNIFIED_NUMBERS = {
    "pidfd_send_signal": 424,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "pidfd_getfd": 438,
    "process_madvise": 440,
    "mount_setattr": 442,
    "quotactl_fd": 443,
    "process_mrelease": 448,
    "fchmodat2": 452,
    "lsm_set_self_attr": 460,
    "setxattrat": 463,
    "removexattrat": 466,
    "open_tree_attr": 467,
    "file_setattr": 469,
}
# Signal senders whose first argument is a process id: allowed only towards ourselves.
_SIGNAL_SYSCALLS = ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
# Calls whose first argument is a process id: allowed only with 0, the calling thread.
# The kernel lets a process change another of its user's (its priority, CPU set,
# scheduling class, NUMA placement, limits), and a root proxy any process's.
_SELF_ONLY_SYSCALLS = (
    "sched_setscheduler",
    "sched_setparam",
    "sched_setattr",
    "sched_setaffinity",
    "migrate_pages",
    "move_pages",
    "prlimit64",
)
_PRIO_PROCESS = 0
_IOPRIO_WHO_PROCESS = 1


def _ioc_write(kind: str, number: int, size: int) -> int:
    """``_IOW(kind, number, size)`` as this architecture encodes an ioctl command."""
    if platform.machine().startswith(("ppc", "powerpc", "mips", "sparc")):
        return 4 << 29 | size << 16 | ord(kind) << 8 | number
    return 1 << 30 | size << 16 | ord(kind) << 8 | number


_LONG = ctypes.sizeof(ctypes.c_long)
# ioctl commands refused on any descriptor: a terminal's input, and inode flags and
# attributes (chattr), which a descriptor opened read-only suffices to change.
_DENIED_IOCTLS = (
    termios.TIOCSTI,  # push a character into a terminal's input: type as its user
    termios.TIOCLINUX,  # the Linux console's subcommands, one of them a paste
    _ioc_write("f", 2, _LONG),  # FS_IOC_SETFLAGS
    _ioc_write("f", 2, 4),  # FS_IOC32_SETFLAGS
    _ioc_write("v", 2, _LONG),  # FS_IOC_SETVERSION
    _ioc_write("v", 2, 4),  # FS_IOC32_SETVERSION
    _ioc_write("X", 32, 28),  # FS_IOC_FSSETXATTR (struct fsxattr)
)


class SandboxError(RuntimeError):
    """A strict sandbox could not apply every layer: the enclave must not run."""


def stricter(a: SandboxMode, b: SandboxMode | None) -> SandboxMode:
    """The stricter of two modes (None: no opinion)."""
    if b is None:
        return a
    return a if SANDBOX_MODES.index(a) >= SANDBOX_MODES.index(b) else b


def _pretend_unavailable() -> frozenset[str]:
    names = {n.strip() for n in os.environ.get(PRETEND_UNAVAILABLE_ENV, "").split(",")}
    if "landlock" in names:
        names |= {"landlock-fs", "landlock-net", "landlock-scope"}
    return frozenset(names & set(LAYERS))


def landlock_abi() -> int:
    """The Landlock ABI this kernel offers (0: none), as ``farside doctor`` reports it."""
    return _landlock_abi()[0]


def _landlock_abi() -> tuple[int, str]:
    try:
        abi = _landlock.abi_version()
    except OSError as exc:
        return 0, f"Landlock is not usable: {exc}"
    if abi == 0:
        return 0, "this kernel has no Landlock (Linux 5.13+ with lsm=landlock)"
    return abi, ""


def _load_seccomp() -> tuple[Any, str]:
    """The pyseccomp module, or None and why not."""
    if platform.system() != "Linux":
        return None, "seccomp exists only on Linux"
    try:
        import pyseccomp
    except (ImportError, OSError) as exc:  # the package, or libseccomp.so.2, is missing
        return None, f"pyseccomp (libseccomp's Python binding) is not usable: {exc}"
    return pyseccomp, ""


def probe() -> dict[str, str]:
    """What this machine offers, layer by layer: ``""`` when available, else why not.

    Layers named in ``FARSIDE_SANDBOX_PRETEND_UNAVAILABLE`` are reported missing.
    """
    abi, why = _landlock_abi()
    _, seccomp_why = _load_seccomp()
    found = {
        "landlock-fs": why,
        "landlock-net": why or ("" if abi >= 4 else f"Landlock ABI {abi} < 4"),
        "landlock-scope": why or ("" if abi >= 6 else f"Landlock ABI {abi} < 6"),
        "seccomp": seccomp_why,
        "rlimits": "" if platform.system() == "Linux" else "only on Linux",
        "netns": _userns_probe(),
    }
    for layer in _pretend_unavailable():
        found[layer] = found[layer] or f"treated as unavailable ({PRETEND_UNAVAILABLE_ENV})"
    return found


def _userns_probe() -> str:
    if platform.system() != "Linux":
        return "namespaces exist only on Linux"
    if not Path("/proc/self/ns/user").exists():
        return "this kernel has no user namespaces"
    try:
        if Path("/proc/sys/kernel/unprivileged_userns_clone").read_text().strip() == "0":
            return "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone)"
    except OSError:
        pass
    return ""


def enter_network_namespace() -> str:
    """Enter a new user and network namespace; return ``""`` or why it failed.

    Only while the process has a single thread (the kernel refuses a user namespace
    to a multithreaded process), i.e. before the gRPC server starts.
    """
    why = probe()["netns"]
    if why:
        return why
    uid, gid = os.getuid(), os.getgid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        return f"unshare(CLONE_NEWUSER|CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}"
    try:  # keep our own identity inside, so our files stay ours
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    except OSError as exc:
        return f"cannot map our user into the new namespace: {exc}"
    return ""


def _read_paths(exclude: Iterable[str]) -> list[str]:
    """Where the interpreter's code and libraries live: the only readable places."""
    excluded = {os.path.realpath(p) for p in exclude}
    candidates = [
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        str(Path(__file__).resolve().parent.parent.parent),  # where farside is installed
        *sys.path,
        "/usr/lib",
        "/usr/lib64",
        "/lib",
        "/lib64",
        "/usr/local/lib",
        "/etc/ld.so.cache",
        "/etc/localtime",
        "/usr/share/zoneinfo",
        "/dev/null",
        "/dev/zero",
        "/dev/urandom",
    ]
    paths: list[str] = []
    for candidate in candidates:
        if not candidate or not os.path.isabs(candidate):
            continue  # "" and relative entries mean the working directory: not needed
        real = os.path.realpath(candidate)
        if real == "/" or real in excluded or real in paths:
            continue  # "/" would make the whole filesystem readable
        paths.append(real)
    return paths


def _apply_rlimits(limits: SandboxConfig) -> list[str]:
    """No core dumps (they would write the enclave's memory to disk), and the limits asked."""
    applied = []
    for name, which, wanted in (
        ("core", resource.RLIMIT_CORE, 0),
        ("memory", resource.RLIMIT_AS, limits.memory),
        ("open files", resource.RLIMIT_NOFILE, limits.open_files),
        ("cpu seconds", resource.RLIMIT_CPU, limits.cpu_seconds),
    ):
        if wanted is None:
            continue
        _, hard = resource.getrlimit(which)
        value = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(which, (value, value))
        applied.append(f"{name}={value}")
    return applied


def _syscall_number(seccomp: Any, name: str) -> int | None:
    """``name``'s number on this architecture, or None if it has no such call."""
    number: int = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
    if number >= 0:
        return number
    if name not in _UNIFIED_NUMBERS:
        return None
    base: int = seccomp.resolve_syscall(seccomp.Arch.NATIVE, "pidfd_send_signal") - 424
    if base < 0:  # a libseccomp older than Linux 5.1: only alpha and mips have a base
        if platform.machine().startswith(("alpha", "mips")):
            return None
        base = 0
    return base + _UNIFIED_NUMBERS[name]


def _apply_seccomp(seccomp: Any) -> None:
    deny = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    rules.set_attr(seccomp.Attr.CTL_TSYNC, 1)  # every thread of the process, gRPC's too
    rules.set_attr(seccomp.Attr.ACT_BADARCH, deny)  # 32-bit syscalls would bypass the rules
    for name in _DENIED_SYSCALLS:
        number = _syscall_number(seccomp, name)
        if number is None:
            log.debug("seccomp: no syscall %s here", name)
            continue
        rules.add_rule(deny, number)
    # A new process is a clone without CLONE_THREAD; threads keep working.
    rules.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_THREAD, 0))
    # clone3's flags sit behind a pointer a filter cannot read: ENOSYS makes the C
    # library fall back to clone, whose flags the rule above checks.
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    pid = os.getpid()
    for name in _SIGNAL_SYSCALLS:
        rules.add_rule(deny, name, seccomp.Arg(0, seccomp.NE, pid))
    # Rules for one call add up: any one that matches refuses it.
    for name in _SELF_ONLY_SYSCALLS:
        if _syscall_number(seccomp, name) is not None:
            rules.add_rule(deny, name, seccomp.Arg(0, seccomp.NE, 0))
    rules.add_rule(deny, "prlimit64", seccomp.Arg(2, seccomp.NE, 0))  # new limits given
    rules.add_rule(deny, "setpriority", seccomp.Arg(0, seccomp.NE, _PRIO_PROCESS))
    rules.add_rule(deny, "setpriority", seccomp.Arg(1, seccomp.NE, 0))
    rules.add_rule(deny, "ioprio_set", seccomp.Arg(0, seccomp.NE, _IOPRIO_WHO_PROCESS))
    rules.add_rule(deny, "ioprio_set", seccomp.Arg(1, seccomp.NE, 0))
    # The kernel reads an ioctl command's low 32 bits only: compare those alone, or
    # high bits set would slip a command past the filter.
    for command in _DENIED_IOCTLS:
        rules.add_rule(deny, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, command))
    rules.load()


@dataclass(slots=True)
class Sandbox:
    """The proxy's own sandbox settings, applied by ``confine`` when a bundle arrives.

    ``mode`` and ``limits`` are the proxy's floor (``farside proxy --sandbox`` and its
    limit flags): a client may ask for more, never less. ``netns`` is the outcome of
    ``enter_network_namespace`` at start (``""``: entered), or None where it does not
    apply (a proxy listening on TCP needs the machine's network).
    """

    mode: SandboxMode = "best-effort"
    limits: SandboxConfig = field(default_factory=SandboxConfig)
    netns: str | None = None
    private_dir: str | None = None
    applied: tuple[str, ...] = ()

    def effective(self, request: SandboxConfig | None) -> tuple[SandboxMode, SandboxConfig]:
        """The mode and limits in force for a client's ``request``."""
        request = request or SandboxConfig()
        mode = stricter(self.mode, request.mode)

        def cap(mine: int | None, theirs: int | None) -> int | None:
            values = [v for v in (mine, theirs) if v is not None]
            return min(values) if values else None

        limits = SandboxConfig(
            memory=cap(self.limits.memory, request.memory),
            open_files=cap(self.limits.open_files, request.open_files),
            cpu_seconds=cap(self.limits.cpu_seconds, request.cpu_seconds),
        )
        return mode, limits

    def confine(self, request: SandboxConfig | None) -> tuple[str, ...]:
        """Confine this process, and the calling thread with its future threads.

        Returns the layers applied (also kept in ``applied``). In strict mode, raises
        ``SandboxError`` naming every missing layer, before applying anything; in
        best-effort mode, logs each missing layer and goes on.
        """
        started = time.perf_counter()
        mode, limits = self.effective(request)
        if mode == "off":
            log.warning("sandbox: off; enclave code can use this machine as this user")
            return ()
        missing = dict(probe())
        if self.netns is None:
            del missing["netns"]  # a TCP proxy cannot have one: not a layer it lacks
        else:
            missing["netns"] = self.netns  # what entering it at start said
        missing = {k: v for k, v in missing.items() if v}
        if missing and mode == "strict":
            raise SandboxError(
                "the strict sandbox cannot apply every layer, so the enclave will not run: "
                + "; ".join(f"{layer}: {why}" for layer, why in sorted(missing.items()))
            )
        for layer, why in sorted(missing.items()):
            log.warning("sandbox: %s not applied: %s", layer, why)

        applied: list[str] = []
        if "netns" not in missing and self.netns is not None:
            applied.append("netns")  # entered at start
        steps: tuple[tuple[tuple[str, ...], Callable[[], list[str]]], ...] = (
            (("rlimits",), lambda: self._apply_rlimits(limits)),
            (
                ("landlock-fs", "landlock-net", "landlock-scope"),
                lambda: self._apply_landlock(missing),
            ),
            (("seccomp",), self._apply_seccomp),
        )
        for layers, apply in steps:
            if all(layer in missing for layer in layers):
                continue
            try:
                applied += apply()
            except Exception as exc:  # the kernel or library refused it after all
                if mode == "strict":
                    raise SandboxError(
                        f"the strict sandbox could not apply {', '.join(layers)}, so the "
                        f"enclave will not run: {exc}"
                    ) from exc
                log.warning("sandbox: %s not applied: %s", ", ".join(layers), exc)
        self.applied = tuple(layer for layer in LAYERS if layer in applied)
        log.info(
            "sandbox (%s): applied %s in %.1f ms",
            mode,
            ", ".join(self.applied) or "nothing",
            (time.perf_counter() - started) * 1e3,
        )
        return self.applied

    @staticmethod
    def _apply_rlimits(limits: SandboxConfig) -> list[str]:
        log.info("sandbox: rlimits %s", ", ".join(_apply_rlimits(limits)))
        return ["rlimits"]

    @staticmethod
    def _apply_seccomp() -> list[str]:
        seccomp, why = _load_seccomp()
        if seccomp is None:
            raise RuntimeError(why)
        _apply_seccomp(seccomp)
        return ["seccomp"]

    def _apply_landlock(self, missing: dict[str, str]) -> list[str]:
        wanted = [layer for layer in LAYERS[:3] if layer not in missing]
        if not wanted:
            return []
        abi, _ = _landlock_abi()
        fs = _landlock.FS.handled(abi) if "landlock-fs" in wanted else _landlock.FS(0)
        net = _landlock.NET.BIND_TCP | _landlock.NET.CONNECT_TCP
        scoped = _landlock.SCOPE.ABSTRACT_UNIX_SOCKET | _landlock.SCOPE.SIGNAL
        ruleset = _landlock.Ruleset(
            abi,
            fs=fs,
            net=net if "landlock-net" in wanted else None,
            scoped=scoped if "landlock-scope" in wanted else None,
        )
        try:
            if fs:
                exclude = [os.getcwd()] + ([self.private_dir] if self.private_dir else [])
                readable = _landlock.FS.READ_FILE | _landlock.FS.READ_DIR
                ruleset.allow_paths(_read_paths(exclude), readable)
            ruleset.restrict_current_thread()
        finally:
            ruleset.close()  # the threads that run enclave code all descend from this one
        return wanted
