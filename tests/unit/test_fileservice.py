"""The client's file service on its own: every operation stays under the root.

The enclave is hostile here: it names paths, sizes and handles as it likes, so each
operation is tried with every way out (``..``, absolute paths, symbolic links to
files and directories outside, absolute links, loops), on special files, on a
read-only root and on no root at all, and must leave everything outside untouched.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farside import _filestat as filestat
from farside.untrusted._fileservice import SCAN_BATCH, FileService


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_text("secret")
    return directory


@pytest.fixture
def root(tmp_path: Path, outside: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "file.txt").write_text("inside")
    (root / "sub" / "inner.txt").write_text("inner")
    (root / "link-in.txt").symlink_to("file.txt")
    (root / "abs-link-in.txt").symlink_to(root / "sub" / "inner.txt")
    (root / "link-out.txt").symlink_to(outside / "secret.txt")
    (root / "dir-out").symlink_to(outside, target_is_directory=True)
    (root / "rel-out").symlink_to("../outside")
    (root / "sub" / "up-and-out").symlink_to("../../outside/secret.txt")
    (root / "loop").symlink_to("loop")
    return root


@pytest.fixture
def service(root: Path) -> Iterator[FileService]:
    files = FileService(root)
    yield files
    files.close_all()


def call(files: FileService, name: str, *args: Any) -> Any:
    """Call ``farside.fs.<name>`` as the enclave does: the answer, or the error raised."""
    answer = files.handlers()[f"farside.fs.{name}"](*args)
    if answer[0] == "ok":
        return filestat.unpack(answer[1]) if name in ("stat", "fstat") else answer[1]
    raise OSError(getattr(errno, answer[1]), answer[2])


def refused(files: FileService, name: str, *args: Any) -> OSError:
    with pytest.raises(OSError) as caught:  # noqa: PT011 (each caller checks errno)
        call(files, name, *args)
    return caught.value


ESCAPES = [
    "../outside/secret.txt",
    "sub/../../outside/secret.txt",
    "link-out.txt",
    "dir-out/secret.txt",
    "rel-out/secret.txt",
    "sub/up-and-out",
]


def untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"


@pytest.mark.parametrize("path", ESCAPES)
@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("stat", (True,)),
        ("open", ("read", [], 0o666)),
        ("open", ("write", ["create", "truncate"], 0o666)),
        ("open", ("write", ["append", "create"], 0o666)),
        ("access", (os.R_OK, True)),
        ("utime", (None, True)),
        ("scandir", (False,)),
    ],
)
def test_every_way_out_is_refused(
    service: FileService, outside: Path, path: str, op: str, args: tuple[Any, ...]
) -> None:
    if op == "access":
        assert call(service, op, path, *args) is False
    else:
        error = refused(service, op, path, *args)
        assert error.errno in (errno.EACCES, errno.ENOTDIR, errno.ENOENT), error
    untouched(outside)


@pytest.mark.parametrize("path", ["../outside", "dir-out/new", "rel-out/new", "../new"])
def test_directories_are_not_made_or_removed_outside(
    service: FileService, outside: Path, tmp_path: Path, path: str
) -> None:
    refused(service, "mkdir", path, 0o777)
    refused(service, "rmdir", path)
    refused(service, "unlink", path)
    untouched(outside)
    assert not (tmp_path / "new").exists()


def test_renames_neither_leave_nor_enter_the_root(
    service: FileService, root: Path, outside: Path
) -> None:
    refused(service, "rename", "file.txt", "../outside/moved.txt", False)
    refused(service, "rename", "file.txt", "dir-out/moved.txt", True)
    refused(service, "rename", "../outside/secret.txt", "stolen.txt", False)
    refused(service, "rename", "dir-out/secret.txt", "stolen.txt", False)
    assert (root / "file.txt").read_text() == "inside"
    assert not (root / "stolen.txt").exists()
    untouched(outside)


def test_links_are_renamed_and_removed_as_links(
    service: FileService, root: Path, outside: Path
) -> None:
    call(service, "rename", "link-out.txt", "sub/moved-link", False)
    assert os.readlink(root / "sub" / "moved-link") == str(outside / "secret.txt")
    call(service, "unlink", "sub/moved-link")
    refused(service, "rmdir", "dir-out")  # a link, not a directory
    call(service, "unlink", "dir-out")
    untouched(outside)


def test_links_inside_the_root_are_followed(service: FileService) -> None:
    assert call(service, "stat", "link-in.txt", True)[6] == len("inside")
    assert stat.S_ISLNK(call(service, "stat", "link-in.txt", False)[0])
    assert call(service, "stat", "abs-link-in.txt", True)[6] == len("inner")
    handle = call(service, "open", "link-in.txt", "read", [], 0)
    assert call(service, "read", handle, 100) == b"inside"
    call(service, "close", handle)
    assert call(service, "readlink", "link-out.txt").endswith("secret.txt")  # a name only


def test_a_link_loop_is_eloop(service: FileService) -> None:
    assert refused(service, "stat", "loop", True).errno == errno.ELOOP
    assert stat.S_ISLNK(call(service, "stat", "loop", False)[0])


def test_nofollow_refuses_a_final_link(service: FileService) -> None:
    assert refused(service, "open", "link-in.txt", "read", ["nofollow"], 0).errno == errno.ELOOP


@pytest.mark.parametrize("bad", ["/etc/passwd", "a\x00b", "x" * 5000, 7, None, b"x" * 5000])
def test_malformed_paths_are_refused(service: FileService, bad: Any) -> None:
    with pytest.raises(ValueError, match="path"):
        service.handlers()["farside.fs.stat"](bad, True)


def test_the_root_itself_is_neither_removed_nor_renamed(service: FileService, root: Path) -> None:
    for path in ("", ".", "sub/..", "./"):
        assert refused(service, "rmdir", path).errno == errno.EBUSY
        assert refused(service, "rename", path, "elsewhere", False).errno == errno.EBUSY
    assert stat.S_ISDIR(call(service, "stat", "", True)[0])
    assert root.is_dir()


def test_special_files_are_not_opened(service: FileService, root: Path) -> None:
    os.mkfifo(root / "fifo")
    done = threading.Event()

    def opener() -> None:
        error = refused(service, "open", "fifo", "read", [], 0)
        assert "FIFO" in str(error)
        done.set()

    thread = threading.Thread(target=opener)
    thread.start()
    thread.join(5)
    assert done.is_set(), "opening a FIFO blocked the client"
    assert stat.S_ISFIFO(call(service, "stat", "fifo", True)[0])  # stat is harmless
    (root / "null").symlink_to("/dev/null")
    refused(service, "open", "null", "read", [], 0)


def test_created_files_never_get_execute_or_set_id_bits(service: FileService, root: Path) -> None:
    handle = call(service, "open", "new.sh", "write", ["create", "exclusive"], 0o7777)
    call(service, "close", handle)
    call(service, "mkdir", "newdir", 0o7777)
    assert stat.S_IMODE((root / "new.sh").stat().st_mode) & 0o7111 == 0
    assert stat.S_IMODE((root / "newdir").stat().st_mode) & 0o7000 == 0


def test_trailing_slash_names_a_directory(service: FileService, root: Path) -> None:
    assert refused(service, "stat", "file.txt/", True).errno == errno.ENOTDIR
    call(service, "mkdir", "made/", 0o777)
    assert (root / "made").is_dir()
    call(service, "rmdir", "made/")
    assert refused(service, "open", "nothing/", "write", ["create"], 0o666).errno == errno.EISDIR


def test_a_read_only_root_refuses_every_change(root: Path) -> None:
    files = FileService(root, readonly=True)
    try:
        for name, args in [
            ("open", ("file.txt", "write", [], 0)),
            ("open", ("file.txt", "readwrite", [], 0)),
            ("open", ("file.txt", "read", ["truncate"], 0)),
            ("open", ("new.txt", "read", ["create"], 0o666)),
            ("mkdir", ("d", 0o777)),
            ("rmdir", ("sub",)),
            ("unlink", ("file.txt",)),
            ("rename", ("file.txt", "g.txt", False)),
            ("utime", ("file.txt", None, True)),
        ]:
            assert refused(files, name, *args).errno == errno.EROFS, name
        assert call(files, "access", "file.txt", os.W_OK, True) is False
        handle = call(files, "open", "file.txt", "read", [], 0)
        assert call(files, "read", handle, 10) == b"inside"
        assert sorted(n for n in call(files, "scandir", "", True)[0]) == sorted(os.listdir(root))
    finally:
        files.close_all()
    assert (root / "file.txt").read_text() == "inside"
    assert not (root / "new.txt").exists()


def test_no_root_refuses_everything() -> None:
    files = FileService(None)
    assert files.describe() == {"root": None, "aliases": [], "readonly": False}
    for name, args in [
        ("stat", ("x", True)),
        ("open", ("x", "read", [], 0)),
        ("scandir", ("", False)),
        ("mkdir", ("x", 0o777)),
    ]:
        assert "files_root=None" in str(refused(files, name, *args))


def test_describe_names_the_real_root_and_the_given_one(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    alias = tmp_path / "alias"
    alias.symlink_to(real, target_is_directory=True)
    files = FileService(alias)
    try:
        assert files.describe() == {"root": str(real), "aliases": [str(alias)], "readonly": False}
        (real / "target.txt").write_text("t")
        (real / "via-alias").symlink_to(alias / "target.txt")  # an absolute link, spelt via alias
        assert call(files, "stat", "via-alias", True)[6] == 1
    finally:
        files.close_all()


def test_large_directories_come_in_batches(service: FileService, root: Path) -> None:
    many = root / "many"
    many.mkdir()
    for n in range(SCAN_BATCH + 5):
        (many / f"f{n}").touch()
    batch, handle = call(service, "scandir", "many", True)
    assert len(batch) == SCAN_BATCH
    assert handle
    rest, handle2 = call(service, "scandir_next", handle)
    assert len(rest) == 5
    assert handle2 == 0
    assert sorted(batch + rest) == sorted(os.listdir(many))
    assert refused(service, "scandir_next", handle).errno == errno.EBADF
    small, none = call(service, "scandir", "sub", False)
    assert none == 0
    assert sorted(entry[0] for entry in small) == ["inner.txt", "up-and-out"]
    link = next(entry for entry in small if entry[0] == "up-and-out")
    assert link[2][0] == "error"
    assert link[2][1] == "EACCES"


def test_unfinished_listings_count_against_the_cap(root: Path) -> None:
    many = root / "many"
    many.mkdir()
    for n in range(SCAN_BATCH + 1):
        (many / f"f{n}").touch()
    files = FileService(root, max_open_files=2)
    try:
        handles = [call(files, "scandir", "many", True)[1] for _ in range(2)]
        assert refused(files, "open", "file.txt", "read", [], 0).errno == errno.EMFILE
        call(files, "scandir_close", handles[0])
        call(files, "close", call(files, "open", "file.txt", "read", [], 0))
    finally:
        files.close_all()


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("read", (1, -1)),
        ("read", (1, 2**40)),
        ("write", (1, "text")),
        ("seek", (1, 0, 7)),
        ("open", ("x", "append", [], 0)),
        ("open", ("x", "read", ["tmpfile"], 0)),
        ("open", ("x", "read", [], -1)),
        ("mkdir", ("x", 2**20)),
        ("access", ("x", 8, True)),
        ("utime", ("file.txt", [1], True)),
        ("stat", ("x", "yes")),
    ],
)
def test_malformed_requests_raise(service: FileService, name: str, args: tuple[Any, ...]) -> None:
    call(service, "close", call(service, "open", "file.txt", "read", [], 0))
    with pytest.raises((ValueError, TypeError)):
        service.handlers()[f"farside.fs.{name}"](*args)


def test_unknown_handles_are_ebadf(service: FileService) -> None:
    for name, args in [("read", (99, 1)), ("write", (99, b"")), ("close", (99,)), ("fstat", (99,))]:
        assert refused(service, name, *args).errno == errno.EBADF
    assert refused(service, "read", "1", 1).errno == errno.EBADF


def test_a_close_racing_a_read_never_reaches_another_file(service: FileService) -> None:
    """The descriptor is closed by its last user, so its number is never reused under one."""
    handle = call(service, "open", "file.txt", "read", [], 0)
    with service._use(handle) as opened:
        call(service, "close", handle)  # marked, not closed: a read still uses it
        assert os.read(opened.fd, 6) == b"inside"
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(opened.fd)  # the last user closed it


def test_close_all_closes_the_root_too(root: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    files = FileService(root)
    call(files, "open", "file.txt", "read", [], 0)
    call(files, "scandir", "", True)
    files.close_all()
    assert len(os.listdir("/proc/self/fd")) == before


def test_names_that_are_not_utf8_cross_as_bytes(service: FileService, root: Path) -> None:
    raw = b"caf\xe9.txt"
    (root / os.fsdecode(raw)).write_bytes(b"latin-1 name")
    names, _ = call(service, "scandir", "", True)
    assert raw in names  # bytes: the codec cannot carry a str holding a surrogate
    assert "file.txt" in names
    assert call(service, "stat", raw, True)[6] == len(b"latin-1 name")
    handle = call(service, "open", raw, "read", [], 0)
    assert call(service, "read", handle, 100) == b"latin-1 name"
    call(service, "close", handle)
