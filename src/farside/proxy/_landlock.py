"""A small ctypes binding of Landlock's three system calls (Linux 5.13+).

Why our own: the one Python binding on PyPI (``landlock``, a 2025 development release)
covers the filesystem rights only: no TCP rules (ABI 4) and no scopes (ABI 6), which
is most of what the proxy needs. The kernel interface is three syscalls and four
structures, documented as stable (``include/uapi/linux/landlock.h``), so a wrapper of
that interface and nothing else is the smaller risk.

Landlock restricts the calling thread and the threads it creates afterwards, never
its siblings (the kernel here has no thread-sync flag): see ``docs/security.md``.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import os
import platform
from collections.abc import Iterable

__all__ = ["FS", "NET", "SCOPE", "LandlockError", "Ruleset", "abi_version"]

# Syscall numbers are the same on every architecture that uses the generic table.
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2
_PR_SET_NO_NEW_PRIVS = 38


class FS(enum.IntFlag):
    """Filesystem access rights (``LANDLOCK_ACCESS_FS_*``)."""

    EXECUTE = 1 << 0
    WRITE_FILE = 1 << 1
    READ_FILE = 1 << 2
    READ_DIR = 1 << 3
    REMOVE_DIR = 1 << 4
    REMOVE_FILE = 1 << 5
    MAKE_CHAR = 1 << 6
    MAKE_DIR = 1 << 7
    MAKE_REG = 1 << 8
    MAKE_SOCK = 1 << 9
    MAKE_FIFO = 1 << 10
    MAKE_BLOCK = 1 << 11
    MAKE_SYM = 1 << 12
    REFER = 1 << 13  # ABI 2
    TRUNCATE = 1 << 14  # ABI 3
    IOCTL_DEV = 1 << 15  # ABI 5

    @classmethod
    def handled(cls, abi: int) -> FS:
        """Every right the kernel of ``abi`` knows: a ruleset handling them all."""
        rights = FS(0)
        for right in cls:
            needed = {cls.REFER: 2, cls.TRUNCATE: 3, cls.IOCTL_DEV: 5}.get(right, 1)
            if abi >= needed:
                rights |= right
        return rights


FILE_RIGHTS = FS.EXECUTE | FS.WRITE_FILE | FS.READ_FILE | FS.TRUNCATE | FS.IOCTL_DEV
"""The rights a rule on a file (not a directory) may carry."""


class NET(enum.IntFlag):
    """TCP access rights (``LANDLOCK_ACCESS_NET_*``, ABI 4)."""

    BIND_TCP = 1 << 0
    CONNECT_TCP = 1 << 1


class SCOPE(enum.IntFlag):
    """IPC scopes (``LANDLOCK_SCOPE_*``, ABI 6): no reaching outside the domain."""

    ABSTRACT_UNIX_SOCKET = 1 << 0
    SIGNAL = 1 << 1


class LandlockError(OSError):
    """A Landlock system call failed; ``errno`` says why."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in the kernel's header
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


_libc: ctypes.CDLL | None = None


def _syscall(number: int, *args: object) -> int:
    global _libc  # noqa: PLW0603 (loaded once, on first use)
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    result = int(_libc.syscall(ctypes.c_long(number), *args))
    if result < 0:
        code = ctypes.get_errno()
        raise LandlockError(code, os.strerror(code))
    return result


def abi_version() -> int:
    """The Landlock ABI this kernel offers; 0 if it has none (or it is disabled at boot)."""
    if platform.system() != "Linux":
        return 0
    try:
        return _syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    except LandlockError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise


def _attr_size(abi: int) -> int:
    # An older kernel refuses fields it does not know: pass the prefix it does.
    if abi >= 6:
        return ctypes.sizeof(_RulesetAttr)
    if abi >= 4:
        return 16
    return 8


class Ruleset:
    """A Landlock ruleset: build it, then ``restrict_current_thread`` (and its future children).

    ``fs``/``net``/``scoped`` are what the ruleset handles: anything handled and not
    allowed by a rule is denied. Keep the object to restrict more threads later.
    """

    def __init__(
        self, abi: int, *, fs: FS, net: NET | None = None, scoped: SCOPE | None = None
    ) -> None:
        net_rights = int(net or 0) if abi >= 4 else 0
        attr = _RulesetAttr(int(fs), net_rights, int(scoped or 0) if abi >= 6 else 0)
        self._fd = _syscall(
            _CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(_attr_size(abi)), 0
        )

    def allow_paths(self, paths: Iterable[str], rights: FS) -> list[str]:
        """Allow ``rights`` beneath each path that exists; return the paths really added."""
        added = []
        for path in paths:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                allowed = rights if os.path.isdir(path) else rights & FILE_RIGHTS
                attr = _PathBeneathAttr(int(allowed), fd)
                _syscall(_ADD_RULE, self._fd, _RULE_PATH_BENEATH, ctypes.byref(attr), 0)
                added.append(path)
            finally:
                os.close(fd)
        return added

    def restrict_current_thread(self) -> None:
        """Enforce the ruleset on the calling thread and every thread it starts from now on."""
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            code = ctypes.get_errno()
            raise LandlockError(code, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(code)}")
        _syscall(_RESTRICT_SELF, self._fd, 0)

    def close(self) -> None:
        """Release the ruleset's descriptor (threads already restricted stay restricted)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
