"""The file-system tests' enclave: it runs one file operation and reports what happened.

``do(op, *args)`` runs the operation named ``op`` (a key of ``OPERATIONS``) inside the
enclave and returns ``{"ok": value}`` or ``{"error": type name, "errno": name, "message":
str(exc)}``, so that the tests can compare with what the same call does natively.
"""

from __future__ import annotations

import codecs
import errno
import glob
import gzip
import io
import json
import os
import pathlib
import shutil
import stat
import sys
import tempfile
import threading
import traceback
import zipfile
from collections.abc import Callable
from typing import Any

from farside.trusted import EnclaveConfig, TrustedApplication, ecall, host


def _stat(st: os.stat_result) -> dict[str, Any]:
    return {"size": st.st_size, "mode": stat.filemode(st.st_mode)}


def _fstat(path: str) -> dict[str, Any]:
    with open(path) as f:
        return _stat(os.fstat(f.fileno()))


def _read(path: str, mode: str = "r") -> Any:
    with open(path, mode) as f:
        return f.read()


def _write(path: str, data: Any) -> int:
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        return f.write(data)


def _read_io(path: str) -> str:
    with io.open(path) as f:  # noqa: UP020 (io.open is the name under test)
        return f.read()


def _os_read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 7):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _flock(path: str) -> None:
    import fcntl

    with open(path) as f:
        fcntl.flock(f, fcntl.LOCK_EX)


def _read_host(path: str) -> str:
    with host.open(path) as f:
        return str(f.read())


def _os_write(path: str, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def _scandir(path: str) -> list[list[Any]]:
    with os.scandir(path) as entries:
        return sorted(
            [e.name, e.path, e.is_dir(), e.is_file(), e.is_symlink(), e.stat().st_size]
            for e in entries
            if not e.is_symlink() or e.is_dir() or e.is_file()
        )


def _walk(path: str) -> list[list[Any]]:
    return sorted([top, sorted(dirs), sorted(files)] for top, dirs, files in os.walk(path))


def _tempfiles() -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", dir=".", suffix=".tmp", delete=False) as f:
        f.write("named")
    named = os.path.basename(f.name)
    fd, path = tempfile.mkstemp(dir=".")
    os.write(fd, b"mkstemp")
    os.close(fd)
    with tempfile.TemporaryFile() as anonymous:
        anonymous.write(b"anonymous")
        anonymous.seek(0)
        back = anonymous.read()
    with tempfile.TemporaryDirectory(dir=".") as directory:
        pathlib.Path(directory, "inside.txt").write_text("x")
        inside = os.listdir(directory)
    gone = os.path.exists(directory)
    return {
        "named": _read(named),
        "mkstemp": _read(path),
        "anonymous": back.decode(),
        "inside": inside,
        "directory gone": not gone,
        "gettempdir": tempfile.gettempdir(),
        "cleanup": [os.remove(named), os.remove(path)],
    }


def _libraries(work: str) -> dict[str, Any]:
    """Standard library modules that handle files, in the directory ``work``."""
    os.makedirs(f"{work}/a/b")
    pathlib.Path(f"{work}/a/b/f.txt").write_text("x")
    out: dict[str, Any] = {}
    out["fwalk"] = sorted([t, sorted(d), sorted(f)] for t, d, f, _ in os.fwalk(f"{work}/a"))
    out["move"] = shutil.move(f"{work}/a/b/f.txt", f"{work}/a/g.txt")
    with gzip.open(f"{work}/z.gz", "wt") as zipped:
        zipped.write("zipped")
    with gzip.open(f"{work}/z.gz", "rt") as zipped:
        out["gzip"] = zipped.read()
    with zipfile.ZipFile(f"{work}/z.zip", "w") as archive:
        archive.writestr("in.txt", "inside")
        archive.write(f"{work}/a/g.txt", "g.txt")
    with zipfile.ZipFile(f"{work}/z.zip") as archive:
        out["zipfile"] = [archive.namelist(), archive.read("in.txt").decode()]
    with codecs.open(f"{work}/c.txt", "w", "utf-16") as encoded:
        encoded.write("codecs")
    with codecs.open(f"{work}/c.txt", "r", "utf-16") as encoded:
        out["codecs"] = encoded.read()
    with open(os.devnull, "w") as sink:
        out["devnull"] = sink.write("gone")
    with open(os.devnull) as sink:
        out["devnull read"] = sink.read()
    out["traceback"] = _traceback()
    shutil.rmtree(f"{work}/a")
    out["left"] = sorted(os.listdir(work))
    return out


def _traceback() -> str:
    try:
        json.loads("{")
    except ValueError:
        return traceback.format_exc().splitlines()[-1]
    return ""


def _in_thread(op: str, *args: Any) -> Any:
    """Run ``op`` on a thread the enclave starts (it cannot make exit calls)."""
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(report(op, *args)))
    thread.start()
    thread.join()
    return outcome


def _input(prompt: str, count: int) -> list[str]:
    lines = [input(prompt)]
    lines += [sys.stdin.readline() for _ in range(count - 1)]
    return lines


OPERATIONS: dict[str, Callable[..., Any]] = {
    "open.read": _read,
    "open.write": _write,
    "io.open": _read_io,
    "os.read": _os_read,
    "os.write": _os_write,
    "exists": os.path.exists,
    "isfile": os.path.isfile,
    "isdir": os.path.isdir,
    "islink": os.path.islink,
    "getsize": os.path.getsize,
    "abspath": os.path.abspath,
    "realpath": os.path.realpath,
    "stat": lambda p: _stat(os.stat(p)),
    "lstat": lambda p: _stat(os.lstat(p)),
    "fstat": _fstat,
    "access": os.access,
    "listdir": lambda p=".": sorted(os.listdir(p)),
    "listdir.bytes": lambda p: sorted(os.fsencode(name) for name in os.listdir(p)),
    "scandir.bytes": lambda p: sorted(os.fsencode(e.path) for e in os.scandir(p)),
    "scandir": _scandir,
    "walk": _walk,
    "glob": lambda pattern: sorted(glob.glob(pattern, recursive=True)),
    "mkdir": os.mkdir,
    "makedirs": lambda p: os.makedirs(p, exist_ok=True),
    "rmdir": os.rmdir,
    "remove": os.remove,
    "unlink": os.unlink,
    "rename": os.rename,
    "replace": os.replace,
    "readlink": os.readlink,
    "getcwd": os.getcwd,
    "chdir": lambda p: (os.chdir(p), os.getcwd())[1],
    "truncate": os.truncate,
    "utime": lambda p: os.utime(p, ns=(10**9, 2 * 10**9)),
    "chmod": lambda p: os.chmod(p, 0o600),
    "flock": _flock,
    "pread": lambda p: os.pread(os.open(p, os.O_RDONLY), 4, 0),
    "symlink": os.symlink,
    "rmtree": shutil.rmtree,
    "copyfile": shutil.copyfile,
    "path.exists": lambda p: pathlib.Path(p).exists(),
    "path.read_text": lambda p: pathlib.Path(p).read_text(),
    "path.write_text": lambda p, t: pathlib.Path(p).write_text(t),
    "path.read_bytes": lambda p: pathlib.Path(p).read_bytes(),
    "path.write_bytes": lambda p, b: pathlib.Path(p).write_bytes(b),
    "path.iterdir": lambda p: sorted(str(c) for c in pathlib.Path(p).iterdir()),
    "path.glob": lambda p, pattern: sorted(str(c) for c in pathlib.Path(p).glob(pattern)),
    "path.mkdir": lambda p: pathlib.Path(p).mkdir(parents=True),
    "path.unlink": lambda p: pathlib.Path(p).unlink(),
    "path.touch": lambda p: pathlib.Path(p).touch(),
    "path.cwd": lambda: str(pathlib.Path.cwd()),
    "path.resolve": lambda p: str(pathlib.Path(p).resolve()),
    "tempfiles": _tempfiles,
    "libraries": _libraries,
    "in_thread": _in_thread,
    "host.open": _read_host,
    "environ": lambda: dict(os.environ),
    "input": _input,
    "stdin.read": lambda: sys.stdin.read(),  # noqa: PLW0108 (sys.stdin when called)
    "write_fd": lambda fd, text: os.write(fd, text.encode()),
}


def report(op: str, *args: Any) -> dict[str, Any]:
    try:
        return {"ok": OPERATIONS[op](*args)}
    except OSError as exc:
        return {
            "error": type(exc).__name__,
            "errno": errno.errorcode.get(exc.errno or 0, None),
            "message": str(exc),
        }


class Probe(TrustedApplication):
    def initialize(self, config: EnclaveConfig) -> None:
        self.environment_at_import = dict(os.environ)

    @ecall
    def do(self, op: str, *args: Any) -> dict[str, Any]:
        return report(op, *args)

    @ecall
    def environment_at_initialize(self) -> dict[str, str]:
        return self.environment_at_import


def build_trusted_application() -> TrustedApplication:
    return Probe()
