"""Which file system a thread sees: the enclave's view on threads running enclave code.

The ``os`` module is one for the whole process: the import system, the standard
library, farside's runtime and enclave code all use it. So its file functions (and
``open``) are replaced once, process-wide, by wrappers that ask the calling thread:
while enclave code runs on it, they are the enclave's view (``_fsview``); on every
other thread they are the originals, unchanged. Enclave code runs

* on an enclave worker while it serves an entry call (the runtime enters the view
  around the application's code, and leaves it while its own machinery makes an exit
  call or writes output), and
* on the threads that enclave code starts (they inherit the view, but cannot make
  exit calls: the client's files refuse them, the interpreter's stay readable).

The import system reads the standard library through the ``posix`` module, not
``os``, so imports are untouched; third-party code the enclave calls gets the view
like the enclave's own (it runs on the same thread); ``pathlib``, ``shutil``,
``glob``, ``tempfile`` and ``os.walk`` call these functions through the module and
get it too. What bypasses ``os`` and ``open`` (``posix`` itself, ``io.FileIO``, C
code such as ``sqlite3``) reaches the trusted host, where the sandbox confines it.
"""

from __future__ import annotations

import builtins
import functools
import io
import os
import threading
from collections.abc import Callable
from typing import Any

from ._files import open_file
from ._fsrule import unavailable
from ._fsview import EnclaveFiles

__all__ = ["FORWARDED", "REFUSED", "current", "enter", "install", "leave"]

_state = threading.local()
_install_lock = threading.Lock()
_installed = False

FORWARDED: dict[str, Callable[..., Any]] = {
    "open": EnclaveFiles.open,
    "read": EnclaveFiles.read,
    "write": EnclaveFiles.write,
    "close": EnclaveFiles.close,
    "lseek": EnclaveFiles.lseek,
    "fstat": EnclaveFiles.fstat,
    "fsync": EnclaveFiles.fsync,
    "fdatasync": EnclaveFiles.fsync,
    "ftruncate": EnclaveFiles.ftruncate,
    "truncate": EnclaveFiles.truncate,
    "isatty": EnclaveFiles.isatty,
    "stat": EnclaveFiles.stat,
    "lstat": EnclaveFiles.lstat,
    "access": EnclaveFiles.access,
    "listdir": EnclaveFiles.listdir,
    "scandir": EnclaveFiles.scandir,
    "mkdir": EnclaveFiles.mkdir,
    "rmdir": EnclaveFiles.rmdir,
    "remove": EnclaveFiles.unlink,
    "unlink": EnclaveFiles.unlink,
    "rename": EnclaveFiles.rename,
    "replace": EnclaveFiles.replace,
    "readlink": EnclaveFiles.readlink,
    "utime": EnclaveFiles.utime,
    "getcwd": EnclaveFiles.getcwd,
    "getcwdb": EnclaveFiles.getcwdb,
    "chdir": EnclaveFiles.chdir,
    "fchdir": EnclaveFiles.fchdir,
}
"""``os`` functions the view serves (``os.walk``, ``os.makedirs``, ``os.path`` and the
rest of the standard library are built on these)."""

REFUSED = (
    "chmod", "lchmod", "chown", "lchown", "chflags", "lchflags", "link", "symlink", "mkfifo",
    "mknod", "chroot", "statvfs", "pathconf", "getxattr", "setxattr", "listxattr", "removexattr",
)  # fmt: skip
"""``os`` functions that raise ``OSError`` (``ENOSYS``) inside an enclave, whatever the path."""

_REFUSED_ON_CLIENT_FDS = {
    # name: how many leading arguments are descriptors
    "fchmod": 1,
    "fchown": 1,
    "fstatvfs": 1,
    "fpathconf": 1,
    "pread": 1,
    "pwrite": 1,
    "readv": 1,
    "writev": 1,
    "preadv": 1,
    "pwritev": 1,
    "posix_fallocate": 1,
    "posix_fadvise": 1,
    "lockf": 1,
    "dup": 1,
    "dup2": 2,
    "sendfile": 2,
    "copy_file_range": 2,
    "splice": 2,
    "set_blocking": 1,
    "get_blocking": 1,
    "set_inheritable": 1,
    "get_inheritable": 1,
    "device_encoding": 1,
    "ttyname": 1,
}
"""``os`` functions that raise ``OSError`` (``ENOSYS``) on a client file's descriptor
inside an enclave (on the trusted host's own descriptors they work as ever)."""

_REFUSED_IN_FCNTL = ("fcntl", "flock", "lockf", "ioctl")
"""``fcntl`` functions that do the same (no locks on the client's files)."""


def current() -> EnclaveFiles | None:
    """The view the calling thread sees, or None (the real file system)."""
    files: EnclaveFiles | None = getattr(_state, "files", None)
    return files


def enter(files: EnclaveFiles | None) -> EnclaveFiles | None:
    """Make the calling thread see ``files`` (None: the real file system); returns what
    it saw before, for ``leave``."""
    previous: EnclaveFiles | None = getattr(_state, "files", None)
    _state.files = files
    return previous


def leave(previous: EnclaveFiles | None) -> None:
    """Undo ``enter``."""
    _state.files = previous


def _forward(real: Callable[..., Any], method: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        files = getattr(_state, "files", None)
        if files is None:
            return real(*args, **kwargs)
        return method(files, *args, **kwargs)

    return functools.update_wrapper(wrapper, real)


def _refuse(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if getattr(_state, "files", None) is None:
            return real(*args, **kwargs)
        raise unavailable(f"os.{name}")

    return functools.update_wrapper(wrapper, real)


def _descriptor(value: Any) -> Any:
    fileno = getattr(value, "fileno", None)
    if isinstance(value, int) or fileno is None:
        return value
    try:
        return fileno()
    except Exception:  # not a file after all: the real function will say so
        return None


def _refuse_on_client_fds(name: str, real: Callable[..., Any], count: int) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        files = getattr(_state, "files", None)
        if files is not None and any(files.is_virtual(_descriptor(a)) for a in args[:count]):
            raise unavailable(f"{name} on a file of the client's")
        return real(*args, **kwargs)

    return functools.update_wrapper(wrapper, real)


def _open(real: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        files = getattr(_state, "files", None)
        if files is None:
            return real(*args, **kwargs)
        return open_file(files, *args, **kwargs)

    return functools.update_wrapper(wrapper, real)


def _farsides_own(function: Any) -> bool:
    """Whether a thread about to start runs farside's code (its output flusher, a
    transport's threads), which the runtime may start while enclave code waits."""
    thread = getattr(function, "__self__", None)
    target = getattr(thread, "_target", None)
    module = getattr(target, "__module__", None) or ""
    return module == "farside" or module.startswith("farside.")


def _inheriting(real: Callable[..., Any]) -> Callable[..., Any]:
    def start_new_thread(function: Any, args: Any, kwargs: Any = None) -> Any:
        files = getattr(_state, "files", None)
        if files is not None and not _farsides_own(function):
            inner = function

            def function(*a: Any, **k: Any) -> Any:
                _state.files = files
                return inner(*a, **k)

        return real(function, args) if kwargs is None else real(function, args, kwargs)

    return start_new_thread


def install() -> None:
    """Replace the functions, once per process (idempotent). Until a thread ``enter``s a
    view, every call goes to the original function."""
    global _installed  # noqa: PLW0603 (one file system per process, by design)
    import fcntl  # here: the proxy runs on Linux, importers of farside.trusted need not

    with _install_lock:
        if _installed:
            return
        wrappers: list[Callable[..., Any]] = []
        for name, method in FORWARDED.items():
            wrappers.append(_forward(getattr(os, name), method))
            setattr(os, name, wrappers[-1])
        for name in REFUSED:
            if hasattr(os, name):
                wrappers.append(_refuse(name, getattr(os, name)))
                setattr(os, name, wrappers[-1])
        for name, count in _REFUSED_ON_CLIENT_FDS.items():
            if hasattr(os, name):
                wrappers.append(_refuse_on_client_fds(f"os.{name}", getattr(os, name), count))
                setattr(os, name, wrappers[-1])
        for name in _REFUSED_IN_FCNTL:
            setattr(fcntl, name, _refuse_on_client_fds(f"fcntl.{name}", getattr(fcntl, name), 1))
        # Code that asks whether a function takes dir_fd (shutil.rmtree, os.fwalk) asks
        # with the function it holds: answer for the wrappers as for the originals.
        for group_name in (
            "supports_dir_fd",
            "supports_fd",
            "supports_follow_symlinks",
            "supports_effective_ids",
        ):
            group: set[Any] = getattr(os, group_name)
            group.update(w for w in wrappers if getattr(w, "__wrapped__", None) in group)
        opener = _open(io.open)
        builtins.open = io.open = opener
        threading._start_new_thread = _inheriting(threading._start_new_thread)  # type: ignore[attr-defined]
        _installed = True
