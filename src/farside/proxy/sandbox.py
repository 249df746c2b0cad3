"""The sandbox that confines a proxy before any enclave code runs in it.

Layers, best first (``docs/security.md`` says what each refuses and what stays open):

* ``landlock-fs``: the filesystem is read-only, and readable only where the
  interpreter's code and libraries live (the bundle itself is in memory);
* ``landlock-net``: no TCP bind or connect (Landlock ABI 4);
* ``landlock-scope``: no abstract Unix sockets or signals outside the sandbox (ABI 6);
* ``seccomp``: no ``execve``, no new processes (threads stay allowed), no ``ptrace``,
  no new sockets, no signals to other processes; refused calls fail with ``EPERM``;
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

# Syscalls refused outright (those an architecture lacks are skipped).
_DENIED_SYSCALLS = (
    # new programs and processes (clone without CLONE_THREAD is filtered below)
    "execve",
    "execveat",
    "fork",
    "vfork",
    # other processes' memory, descriptors and signals
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "pidfd_send_signal",
    "tkill",
    # new sockets (the session's connection exists already); io_uring could open some
    # without passing through this filter
    "socket",
    "socketpair",
    "io_uring_setup",
    # namespaces and mounts (the user namespace of ``netns`` gives capabilities there)
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    # kernel interfaces an enclave has no business with
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
)
# Signal senders whose first argument is a process id: allowed only towards ourselves.
_SIGNAL_SYSCALLS = ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")


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


def _apply_seccomp(seccomp: Any) -> None:
    deny = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    rules.set_attr(seccomp.Attr.CTL_TSYNC, 1)  # every thread of the process, gRPC's too
    rules.set_attr(seccomp.Attr.ACT_BADARCH, deny)  # 32-bit syscalls would bypass the rules
    for name in _DENIED_SYSCALLS:
        try:
            rules.add_rule(deny, name)
        except OSError:  # this architecture has no such syscall
            log.debug("seccomp: no syscall %s here", name)
    # A new process is a clone without CLONE_THREAD; threads keep working.
    rules.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_THREAD, 0))
    # clone3's flags sit behind a pointer a filter cannot read: ENOSYS makes the C
    # library fall back to clone, whose flags the rule above checks.
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    pid = os.getpid()
    for name in _SIGNAL_SYSCALLS:
        rules.add_rule(deny, name, seccomp.Arg(0, seccomp.NE, pid))
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
