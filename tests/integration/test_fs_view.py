"""What an enclave sees of files: the client's, under its files root, and nothing else.

Each operation runs in the enclave (``tests/enclaves/fs_probe.py``) and, where it
means something, natively on a copy of the same tree, and the answers must agree
(absolute paths compared relative to their root). Then the rule's other cases: the
interpreter's own files read-only, every other path refused, every way out refused
for every operation, a read-only root, no root, threads the enclave starts, standard
input, the environment, and the number of exit calls the operations cost.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import farside

from ._support import ENCLAVES

FS_PROBE = ENCLAVES / "fs_probe.py"


def make_tree(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.txt").write_text("hello\n")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("a" * 10)
    (root / "sub" / "deeper" / "b.txt").write_text("bee\n")
    (root / "sub" / "notes.md").write_text("# notes\n")
    (root / "link.txt").symlink_to("data.txt")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Path:
    root = tmp_path_factory.mktemp("fs-root")
    make_tree(root)
    return root


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Path:
    directory = tmp_path_factory.mktemp("fs-outside")
    (directory / "secret.txt").write_text("secret")
    return directory


@pytest.fixture(scope="module")
def probe(root: Path, outside: Path) -> Iterator[farside.EnclaveClient]:
    (root / "out-link.txt").symlink_to(outside / "secret.txt")
    (root / "out-dir").symlink_to(outside, target_is_directory=True)
    with farside.load(FS_PROBE, files_root=root) as client:
        yield client


def do(client: farside.EnclaveClient, op: str, *args: Any) -> dict[str, Any]:
    result: dict[str, Any] = client.call("do", op, *args)
    return result


@contextlib.contextmanager
def exit_calls(client: farside.EnclaveClient) -> Iterator[collections.Counter[str]]:
    """Count the exit calls the enclave makes, by name, while the block runs."""
    counts: collections.Counter[str] = collections.Counter()
    exits = client._exits
    served = exits.handle_call

    def counted(event: Any) -> Any:
        counts[event.name] += 1
        return served(event)

    exits.handle_call = counted  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        del exits.handle_call


def native(op: str, *args: Any) -> dict[str, Any]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("fs_probe_native", FS_PROBE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result: dict[str, Any] = module.report(op, *args)
    return result


def relative(value: Any, root: Path) -> Any:
    """``value`` with the root's absolute path replaced by ``<root>``."""
    if isinstance(value, str):
        return value.replace(str(root), "<root>")
    if isinstance(value, list | tuple):
        return [relative(v, root) for v in value]
    if isinstance(value, dict):
        return {k: relative(v, root) for k, v in value.items()}
    return value


# --------------------------------------------------------------------- the table


def test_the_enclave_sees_the_clients_files(probe: farside.EnclaveClient, root: Path) -> None:
    assert do(probe, "open.read", "data.txt") == {"ok": "hello\n"}
    assert do(probe, "exists", "data.txt") == {"ok": True}
    assert do(probe, "stat", "data.txt") == {"ok": {"size": 6, "mode": "-rw-r--r--"}}
    assert do(probe, "path.read_text", "data.txt") == {"ok": "hello\n"}
    assert "data.txt" in do(probe, "listdir", ".")["ok"]
    assert do(probe, "mkdir", "newdir") == {"ok": None}
    assert (root / "newdir").is_dir()
    assert do(probe, "rmdir", "newdir") == {"ok": None}
    do(probe, "open.write", "gone.txt", "x")
    assert do(probe, "remove", "gone.txt") == {"ok": None}
    assert not (root / "gone.txt").exists()
    assert do(probe, "getcwd") == {"ok": str(root)}


OPERATIONS = [
    ("open.read", "sub/a.txt"),
    ("io.open", "sub/deeper/b.txt"),
    ("os.read", "data.txt"),
    ("exists", "sub"),
    ("exists", "nothing"),
    ("isfile", "sub/a.txt"),
    ("isfile", "sub"),
    ("isdir", "sub"),
    ("islink", "link.txt"),
    ("getsize", "sub/a.txt"),
    ("stat", "link.txt"),
    ("lstat", "link.txt"),
    ("fstat", "sub/a.txt"),
    ("stat", "nothing"),
    ("stat", "data.txt/"),
    ("access", "data.txt", os.R_OK),
    ("access", "nothing", os.F_OK),
    ("listdir", "sub"),
    ("listdir", "nothing"),
    ("scandir", "sub"),
    ("walk", "sub"),
    ("glob", "sub/**/*.txt"),
    ("path.glob", "sub", "**/*.txt"),
    ("path.iterdir", "sub"),
    ("path.exists", "sub/deeper/b.txt"),
    ("path.read_bytes", "sub/deeper/b.txt"),
    ("readlink", "link.txt"),
    ("abspath", "sub/../data.txt"),
    ("realpath", "link.txt"),
    ("path.resolve", "link.txt"),
    ("path.cwd",),
    ("getcwd",),
    ("open.read", "missing/file.txt"),
    ("rmdir", "sub"),
    ("remove", "sub"),
    ("mkdir", "sub"),
]


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda o: " ".join(map(str, o)))
def test_operations_answer_as_they_do_natively(
    probe: farside.EnclaveClient,
    root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    operation: tuple[Any, ...],
) -> None:
    copy = tmp_path / "native"
    make_tree(copy)
    monkeypatch.chdir(copy)
    expected = relative(native(*operation), copy)
    assert relative(do(probe, *operation), root) == expected


def test_changes_made_in_the_enclave_are_the_clients(
    probe: farside.EnclaveClient, root: Path
) -> None:
    work = root / "changes"
    work.mkdir()
    assert do(probe, "path.write_text", "changes/t.txt", "text ✓") == {"ok": 6}
    assert (work / "t.txt").read_text() == "text ✓"
    assert do(probe, "path.write_bytes", "changes/b.bin", b"\x00\x01") == {"ok": 2}
    assert do(probe, "os.write", "changes/o.bin", b"os level") == {"ok": 8}
    assert (work / "o.bin").read_bytes() == b"os level"
    assert do(probe, "rename", "changes/t.txt", "changes/u.txt") == {"ok": None}
    assert do(probe, "replace", "changes/b.bin", "changes/u.txt") == {"ok": None}
    assert (work / "u.txt").read_bytes() == b"\x00\x01"
    assert do(probe, "copyfile", "changes/o.bin", "changes/copy.bin") == {"ok": "changes/copy.bin"}
    assert (work / "copy.bin").read_bytes() == b"os level"
    assert do(probe, "truncate", "changes/copy.bin", 2) == {"ok": None}
    assert (work / "copy.bin").read_bytes() == b"os"
    assert do(probe, "utime", "changes/copy.bin") == {"ok": None}
    assert (work / "copy.bin").stat().st_mtime_ns == 2 * 10**9
    assert do(probe, "path.touch", "changes/touched") == {"ok": None}
    assert do(probe, "makedirs", "changes/x/y/z") == {"ok": None}
    assert do(probe, "path.mkdir", "changes/p/q") == {"ok": None}
    assert (work / "x" / "y" / "z").is_dir()
    assert (work / "p" / "q").is_dir()
    assert do(probe, "path.unlink", "changes/touched") == {"ok": None}
    assert do(probe, "rmtree", "changes") == {"ok": None}
    assert not work.exists()


def test_standard_library_file_handling_works_as_natively(
    probe: farside.EnclaveClient,
    root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (root / "libraries").mkdir()
    (tmp_path / "libraries").mkdir()
    monkeypatch.chdir(tmp_path)
    expected = native("libraries", "libraries")
    assert "error" not in expected, expected
    assert do(probe, "libraries", "libraries") == expected


def test_names_that_are_not_utf8_work_as_natively(
    probe: farside.EnclaveClient, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for base in (root, tmp_path):
        (base / "latin").mkdir()
        (base / "latin" / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    listing = native("listdir.bytes", "latin")
    assert listing == {"ok": [b"caf\xe9.txt"]}
    assert do(probe, "listdir.bytes", "latin") == listing
    assert do(probe, "listdir.bytes", b"latin") == listing
    assert do(probe, "scandir.bytes", "latin") == native("scandir.bytes", "latin")
    assert do(probe, "open.read", b"latin/caf\xe9.txt") == {"ok": "x"}


def test_tempfile_works_in_the_files_root(probe: farside.EnclaveClient, root: Path) -> None:
    before = sorted(os.listdir(root))
    result = do(probe, "tempfiles")["ok"]
    assert result["named"] == "named"
    assert result["mkstemp"] == "mkstemp"
    assert result["anonymous"] == "anonymous"
    assert result["inside"] == ["inside.txt"]
    assert result["directory gone"]
    assert result["gettempdir"] == str(root)
    assert sorted(os.listdir(root)) == before


def test_chdir_moves_within_the_root_only(probe: farside.EnclaveClient, root: Path) -> None:
    assert do(probe, "chdir", "sub") == {"ok": str(root / "sub")}
    assert do(probe, "open.read", "a.txt") == {"ok": "a" * 10}
    assert do(probe, "chdir", "..") == {"ok": str(root)}
    assert do(probe, "chdir", "data.txt")["error"] == "NotADirectoryError"
    assert do(probe, "chdir", "..")["error"] == "PermissionError"
    assert do(probe, "chdir", sys.prefix)["error"] == "PermissionError"
    assert do(probe, "getcwd") == {"ok": str(root)}


def test_write_to_descriptor_1_reaches_the_clients_stdout(
    probe: farside.EnclaveClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert do(probe, "write_fd", 1, "straight to fd 1\n") == {"ok": 17}
    assert do(probe, "write_fd", 2, "and fd 2\n") == {"ok": 9}
    captured = capsys.readouterr()
    assert captured.out == "straight to fd 1\n"
    assert captured.err == "and fd 2\n"


# --------------------------------------------------------------------- the rule's edges


def test_the_interpreters_own_files_are_readable_and_read_only(
    probe: farside.EnclaveClient,
) -> None:
    assert do(probe, "exists", os.__file__) == {"ok": True}
    assert do(probe, "open.read", os.__file__)["ok"] == Path(os.__file__).read_text()
    assert "os.py" in do(probe, "listdir", os.path.dirname(os.__file__))["ok"]
    for attempt in (
        ("open.write", os.__file__, "x"),
        ("mkdir", os.path.join(sys.prefix, "new")),
        ("remove", os.__file__),
        ("rename", os.__file__, os.__file__ + ".moved"),
    ):
        outcome = do(probe, *attempt)
        assert outcome["errno"] == "EROFS", (attempt, outcome)
        assert "read-only inside an enclave" in outcome["message"]


@pytest.mark.parametrize("path", ["/etc/passwd", "/", "/proc/self/environ", "/tmp"])
def test_other_absolute_paths_are_refused(probe: farside.EnclaveClient, path: str) -> None:
    for op in ("open.read", "stat", "listdir"):
        outcome = do(probe, op, path)
        assert outcome["error"] == "PermissionError", (op, outcome)
        assert "outside the enclave's files" in outcome["message"]
    assert do(probe, "exists", path) == {"ok": False}


ESCAPES = ["../fs-outside-x/secret.txt", "out-link.txt", "out-dir/secret.txt", "sub/../../x"]
ESCAPING_OPERATIONS = [
    ("open.read", ()),
    ("open.write", ("escaped",)),
    ("os.read", ()),
    ("os.write", (b"escaped",)),
    ("stat", ()),
    ("lstat", ()),
    ("listdir", ()),
    ("scandir", ()),
    ("mkdir", ()),
    ("rmdir", ()),
    ("remove", ()),
    ("truncate", (0,)),
    ("utime", ()),
    ("rename", ("data-moved.txt",)),
    ("path.read_text", ()),
    ("path.write_text", ("escaped",)),
    ("path.touch", ()),
    ("copyfile", ("copied.txt",)),
]
# What acts on a link itself (inside the root) rather than on what it leads to.
ON_THE_LINK = {"lstat", "remove", "rename", "mkdir"}


@pytest.mark.parametrize(
    ("path", "op", "extra"),
    [
        (path, op, extra)
        for path in ESCAPES
        for op, extra in ESCAPING_OPERATIONS
        if not (path == "out-link.txt" and op in ON_THE_LINK)
    ],
)
def test_every_operation_stays_in_the_root(
    probe: farside.EnclaveClient,
    root: Path,
    outside: Path,
    path: str,
    op: str,
    extra: tuple[Any, ...],
) -> None:
    path = path.replace("fs-outside-x", outside.name)
    outcome = do(probe, op, path, *extra)
    assert outcome.get("error") in (
        "PermissionError",
        "FileNotFoundError",
        "NotADirectoryError",
    ), outcome
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"
    assert not (root / "copied.txt").exists()
    assert not (root / "data-moved.txt").exists()


def test_a_link_out_of_the_root_is_a_name_inside_it(
    probe: farside.EnclaveClient, root: Path, outside: Path
) -> None:
    assert do(probe, "lstat", "out-link.txt")["ok"]["mode"].startswith("l")
    assert do(probe, "islink", "out-link.txt") == {"ok": True}
    assert do(probe, "exists", "out-link.txt") == {"ok": False}  # what it leads to is not there
    assert do(probe, "readlink", "out-link.txt") == {"ok": str(outside / "secret.txt")}
    assert do(probe, "rename", "out-link.txt", "moved-link.txt") == {"ok": None}
    assert do(probe, "remove", "moved-link.txt") == {"ok": None}
    assert (outside / "secret.txt").read_text() == "secret"
    (root / "out-link.txt").symlink_to(outside / "secret.txt")


def test_fifos_and_devices_are_never_opened(probe: farside.EnclaveClient, root: Path) -> None:
    special = root / "special"
    special.mkdir()
    os.mkfifo(special / "fifo")
    (special / "null").symlink_to("/dev/null")  # a link to a device: out of the root anyway
    outcome = do(probe, "open.read", "special/fifo")  # must not block the client
    assert outcome["error"] == "PermissionError"
    assert "FIFO" in outcome["message"]
    assert do(probe, "open.write", "special/fifo", "x")["error"] == "PermissionError"
    assert do(probe, "stat", "special/fifo")["ok"]["mode"].startswith("p")  # stat is harmless
    assert do(probe, "open.read", "special/null")["error"] == "PermissionError"


def test_calls_the_enclave_does_not_have_say_so(probe: farside.EnclaveClient) -> None:
    for attempt, what in (
        (("chmod", "data.txt"), "os.chmod"),
        (("symlink", "data.txt", "new-link"), "os.symlink"),
        (("flock", "data.txt"), "fcntl.flock on a file of the client's"),
        (("pread", "data.txt"), "os.pread on a file of the client's"),
    ):
        outcome = do(probe, *attempt)
        assert outcome["errno"] == "ENOSYS", outcome
        assert f"{what} is not available inside an enclave" in outcome["message"]


def test_threads_the_enclave_starts_cannot_reach_the_clients_files(
    probe: farside.EnclaveClient,
) -> None:
    outcome = do(probe, "in_thread", "stat", "data.txt")["ok"]
    assert outcome["error"] == "PermissionError"
    assert "only from the thread running an entry call" in outcome["message"]
    assert do(probe, "in_thread", "exists", os.__file__)["ok"] == {"ok": True}  # still readable
    assert do(probe, "in_thread", "stat", "/etc/passwd")["ok"]["error"] == "PermissionError"


def test_host_open_opens_only_the_clients_files(probe: farside.EnclaveClient) -> None:
    assert do(probe, "host.open", "data.txt") == {"ok": "hello\n"}
    assert do(probe, "host.open", os.__file__)["error"] == "PermissionError"


def test_a_read_only_root(root: Path) -> None:
    with farside.load(FS_PROBE, files_root=root, files_root_readonly=True) as client:
        assert do(client, "open.read", "data.txt") == {"ok": "hello\n"}
        assert do(client, "walk", "sub")["ok"]
        for attempt in (
            ("open.write", "data.txt", "x"),
            ("mkdir", "d"),
            ("remove", "data.txt"),
            ("rename", "data.txt", "e.txt"),
            ("path.touch", "data.txt"),
            ("tempfiles",),
        ):
            outcome = do(client, *attempt)
            assert outcome["errno"] == "EROFS", (attempt, outcome)
        assert do(client, "access", "data.txt", os.W_OK) == {"ok": False}
    assert (root / "data.txt").read_text() == "hello\n"


def test_no_root_refuses_every_file_call(root: Path) -> None:
    with farside.load(FS_PROBE, files_root=None) as client:
        for attempt in (("open.read", "data.txt"), ("listdir", "."), ("stat", str(root / "x"))):
            outcome = do(client, *attempt)
            assert outcome["error"] == "PermissionError", outcome
            assert "files_root=None" in outcome["message"]
        assert do(client, "exists", "data.txt") == {"ok": False}
        assert do(client, "exists", os.__file__) == {"ok": True}  # the interpreter's own


# --------------------------------------------------------------------- stdin and environment


def test_input_reads_the_clients_stdin_when_given(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"alice\nbob\ncarol")))
    with farside.load(FS_PROBE, files_root=root, stdin=True) as client:
        assert do(client, "input", "name? ", 2) == {"ok": ["alice", "bob\n"]}
        assert do(client, "stdin.read") == {"ok": "carol"}
        assert do(client, "stdin.read") == {"ok": ""}
    assert capsys.readouterr().out == "name? "


def test_stdin_is_refused_unless_given(root: Path, probe: farside.EnclaveClient) -> None:
    outcome = do(probe, "input", "? ", 1)
    assert outcome["error"] == "PermissionError"
    assert "stdin=True" in outcome["message"]
    assert "--stdin" in outcome["message"]


def test_the_environment_is_the_configurations(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARSIDE_TEST_HOST_ONLY", "the trusted host's")
    config = farside.EnclaveConfig(environment={"GREETING": "hi", "HOME": "/home/enclave"})
    with farside.load(FS_PROBE, files_root=root, config=config) as client:
        assert do(client, "environ") == {"ok": {"GREETING": "hi", "HOME": "/home/enclave"}}
        assert client.call("environment_at_initialize") == {
            "GREETING": "hi",
            "HOME": "/home/enclave",
        }


# --------------------------------------------------------------------- cost


def test_a_stat_or_an_exists_is_one_exit_call(probe: farside.EnclaveClient) -> None:
    for op in ("stat", "exists", "isfile", "isdir", "getsize", "path.exists"):
        with exit_calls(probe) as counts:
            do(probe, op, "data.txt")
        assert sum(counts.values()) == 1, (op, counts)
    with exit_calls(probe) as counts:
        do(probe, "listdir", "sub")
    assert counts == {"farside.fs.scandir": 1}


def test_walking_a_tree_costs_at_most_two_exit_calls_per_directory(
    probe: farside.EnclaveClient, root: Path
) -> None:
    tree = root / "walked"
    for d in range(10):
        directory = tree / f"d{d}"
        directory.mkdir(parents=True)
        for f in range(100):
            (directory / f"f{f}.txt").touch()
    with exit_calls(probe) as counts:
        walked = do(probe, "walk", "walked")["ok"]
    assert sum(len(files) for _, _, files in walked) == 1000
    directories = 11
    assert counts["farside.fs.scandir"] == directories
    assert sum(counts.values()) <= 2 * directories, counts  # scandir, and lstat per subdirectory
