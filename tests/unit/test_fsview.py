"""The enclave's side of its file system, without a proxy: the rule, and a hostile client.

``Rule`` decides where every path leads; ``EnclaveFiles`` is driven here through a fake
exit call, so that each answer a hostile client could give (wrong types, sizes, names,
handles, error names) is checked to become an ``OSError`` (``EIO``) and nothing else.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from farside import _filestat as filestat
from farside.trusted._fsrule import CLIENT, HOST, Rule, interpreter_paths
from farside.trusted._fsvalues import DirEntry, Mount, answer, stat_result
from farside.trusted._fsview import VIRTUAL_FD_BASE, EnclaveFiles

ROOT = "/home/alice/project"
INTERPRETER = ("/usr/lib/python3", "/opt/venv")


def rule(root: str | None = ROOT, aliases: tuple[str, ...] = ()) -> Rule:
    return Rule(Mount(root=root, aliases=aliases), INTERPRETER)


def where(path: Any, base: str = ROOT, **kwargs: Any) -> Any:
    r = rule(**kwargs)
    return r.where(path, r.text(path), base)


@pytest.mark.parametrize(
    ("path", "base", "kind", "rel"),
    [
        ("data.txt", ROOT, CLIENT, "data.txt"),
        ("sub/../data.txt", ROOT, CLIENT, "data.txt"),
        ("sub/", ROOT, CLIENT, "sub/"),
        (".", ROOT, CLIENT, ""),
        ("x.txt", ROOT + "/sub", CLIENT, "sub/x.txt"),
        (ROOT, "/", CLIENT, ""),
        (ROOT + "/a/b", "/", CLIENT, "a/b"),
        ("//home//alice/project/a", "/", CLIENT, "a"),
        (b"data.txt", ROOT, CLIENT, "data.txt"),
        (Path("data.txt"), ROOT, CLIENT, "data.txt"),
    ],
)
def test_the_clients_paths(path: Any, base: str, kind: str, rel: str) -> None:
    found = where(path, base)
    assert (found.kind, found.rel) == (kind, rel)


def test_the_given_spelling_of_the_root_is_the_clients_too() -> None:
    found = where("/home/alice/link/x", "/", aliases=("/home/alice/link",))
    assert (found.kind, found.rel) == (CLIENT, "x")


@pytest.mark.parametrize(
    "path", ["/usr/lib/python3/os.py", "/opt/venv/lib/site.py", "/opt/venv/x/../y"]
)
def test_the_interpreters_files_are_the_hosts(path: str) -> None:
    found = where(path, "/")
    assert found.kind == HOST
    assert found.host == path  # given absolute: the real call gets it as it came


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "/", "/home/alice", "/home/alice/project2", "../x", "/usr/lib/python"]
)
def test_everything_else_is_refused(path: str) -> None:
    with pytest.raises(PermissionError, match="outside the enclave's files") as caught:
        where(path)
    assert caught.value.filename == path


def test_the_root_comes_before_the_interpreter() -> None:
    found = where("/opt/venv/data", "/", root="/opt")
    assert (found.kind, found.rel) == (CLIENT, "venv/data")


def test_no_root_refuses_client_paths_but_not_the_interpreters() -> None:
    with pytest.raises(PermissionError, match="files_root=None"):
        where("data.txt", "/", root=None)
    with pytest.raises(PermissionError, match="files_root=None"):
        where("/home/alice/project/x", "/", root=None)
    assert where("/opt/venv/x", "/", root=None).kind == HOST


@pytest.mark.parametrize(
    ("path", "error"),
    [("", FileNotFoundError), ("a\x00b", ValueError), ("x" * 5000, OSError), (7, TypeError)],
)
def test_malformed_paths(path: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        where(path)


def test_not_utf8_crosses_as_bytes() -> None:
    found = where(b"caf\xe9.txt")
    assert found.rel == b"caf\xe9.txt"


def test_interpreter_paths_are_absolute_and_never_the_root_or_cwd() -> None:
    paths = interpreter_paths()
    assert paths
    assert all(p.startswith("/") for p in paths)
    assert "/" not in paths
    assert os.getcwd() not in paths


# --------------------------------------------------------------------- a hostile client


STAT = filestat.pack(os.stat(__file__))


def files_answering(reply: Callable[..., Any]) -> EnclaveFiles:
    """An enclave file system whose every exit call ``reply`` answers."""
    return EnclaveFiles(
        reply,
        Mount(root=ROOT),
        INTERPRETER,
        read_stdin=lambda n: b"",
        write_output=lambda fd, data: None,
    )


def ok(value: Any) -> Callable[..., Any]:
    return lambda name, *args: ["ok", value]


@pytest.mark.parametrize(
    "reply",
    [
        None,
        "ok",
        ["ok"],
        ["ok", 1, 2],
        ["error", "ENOENT"],
        ["ok", b"\x00" * 99],  # a stat one byte short
        ["ok", [1] * 13],  # a stat as a list
    ],
)
def test_a_malformed_stat_answer_is_eio(reply: Any) -> None:
    files = files_answering(lambda name, *args: reply)
    with pytest.raises(OSError) as caught:  # noqa: PT011 (the errno says which)
        files.stat("data.txt")
    assert caught.value.errno == errno.EIO


def test_an_error_answer_is_the_named_oserror_naming_the_enclaves_path() -> None:
    files = files_answering(lambda name, *args: ["error", "ENOENT", "No such file or directory"])
    with pytest.raises(FileNotFoundError) as caught:
        files.stat("data.txt")
    assert str(caught.value) == "[Errno 2] No such file or directory: 'data.txt'"


@pytest.mark.parametrize("name", ["EWHATEVER", "errorcode", 2, None, "E" * 10_000])
def test_an_unknown_error_name_is_eio(name: Any) -> None:
    files = files_answering(lambda *args: ["error", name, "x" * 100_000])
    with pytest.raises(OSError) as caught:  # noqa: PT011 (the errno says which)
        files.stat("data.txt")
    assert caught.value.errno == errno.EIO
    assert len(caught.value.strerror) <= 1024


def test_a_read_longer_than_asked_is_refused() -> None:
    replies = {"farside.fs.open": ["ok", 5], "farside.fs.read": ["ok", b"x" * 11]}
    files = files_answering(lambda name, *args: replies[name])
    fd = files.open("data.txt", os.O_RDONLY)
    assert fd >= VIRTUAL_FD_BASE
    with pytest.raises(OSError, match="invalid read"):
        files.read(fd, 10)


@pytest.mark.parametrize("count", [-1, 11, "10", 2**70])
def test_an_impossible_write_count_is_refused(count: Any) -> None:
    replies = {"farside.fs.open": ["ok", 5], "farside.fs.write": ["ok", count]}
    files = files_answering(lambda name, *args: replies[name])
    fd = files.open("data.txt", os.O_WRONLY)
    with pytest.raises(OSError, match="invalid write count"):
        files.write(fd, b"0123456789")


@pytest.mark.parametrize("handle", [0, -1, "1", 2**64, None, True])
def test_a_bad_handle_is_refused(handle: Any) -> None:
    files = files_answering(ok(handle))
    with pytest.raises(OSError, match="invalid file handle"):
        files.open("data.txt", os.O_RDONLY)


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b", "a\x00b", "x" * 2000, 7, None, b"/etc", b"x" * 2000]
)
def test_a_bad_entry_name_is_refused(name: Any) -> None:
    files = files_answering(ok([[name], 0]))
    with pytest.raises(OSError, match="invalid directory entry name"):
        files.listdir(".")


@pytest.mark.parametrize(
    "entry",
    [
        ["a", STAT],  # too short
        ["a", STAT, STAT],  # a target for what is not a link
        ["a", b"short", None],
        "a",
    ],
)
def test_a_bad_entry_is_refused(entry: Any) -> None:
    files = files_answering(ok([[entry], 0]))
    with pytest.raises(OSError, match="invalid"):
        list(files.scandir("."))


@pytest.mark.parametrize(
    "listing", [[["a"], -1], [["a"], "1"], [["a"] * 5000, 0], "ab", [["a"]], [("a",), 0]]
)
def test_a_bad_listing_is_refused(listing: Any) -> None:
    files = files_answering(ok(listing))
    with pytest.raises(OSError, match="invalid directory listing"):
        files.listdir(".")


def test_the_mount_description_is_checked() -> None:
    good = {"root": ROOT, "aliases": [], "readonly": False, "stdin": False}
    assert Mount.from_client(good).root == ROOT
    for bad in (
        {**good, "root": "relative"},
        {**good, "root": "/a/../b"},
        {**good, "root": "/a\x00"},
        {**good, "aliases": ["/x"] * 5},
        {**good, "readonly": 1},
        {**good, "extra": 1},
        {"root": None, "aliases": ["/x"], "readonly": False, "stdin": False},
        None,
    ):
        with pytest.raises(OSError, match="invalid"):
            Mount.from_client(bad)


def test_entries_answer_from_what_the_client_said() -> None:
    directory = filestat.pack(os.stat(os.path.dirname(__file__)))
    entries = [
        DirEntry.from_client(["d", directory, None], "top"),
        DirEntry.from_client(["f", STAT, None], b"top"),
    ]
    assert entries[0].is_dir()
    assert not entries[0].is_file()
    assert entries[0].path == "top/d"
    assert entries[1].name == b"f"
    assert entries[1].path == b"top/f"
    assert entries[1].stat().st_size == os.stat(__file__).st_size
    assert answer(["ok", 3]) == 3
    assert stat_result(STAT).st_mtime_ns == os.stat(__file__).st_mtime_ns


def test_a_link_entry_answers_for_its_target_or_its_error(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(__file__)
    link = filestat.pack(os.lstat(tmp_path / "link"))
    followed = DirEntry.from_client(["link", link, STAT], ".")
    assert followed.is_symlink()
    assert followed.is_file()
    assert followed.stat().st_size == os.stat(__file__).st_size
    assert followed.stat(follow_symlinks=False).st_size == os.lstat(tmp_path / "link").st_size
    refused = DirEntry.from_client(["link", link, ["error", "EACCES", "outside"]], ".")
    assert refused.is_symlink()
    assert not refused.is_file()
    assert not refused.is_dir()
    with pytest.raises(PermissionError) as caught:
        refused.stat()
    assert caught.value.filename == "./link"
