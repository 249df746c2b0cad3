"""Files: open() and host.open() inside the enclave reach files under the client's root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import farside

VIAS = ["builtin", "host"]


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory outside the enclave's files root."""
    return tmp_path_factory.mktemp("outside")


@pytest.mark.parametrize("via", VIAS)
def test_text_write_then_read(worker: farside.EnclaveClient, files_dir: Path, via: str) -> None:
    text = f"written by the enclave via {via}\nsecond line ✓\n"
    assert worker.call("write_file", f"text-{via}.txt", text, via) == len(text)
    assert (files_dir / f"text-{via}.txt").read_text(encoding="utf-8") == text
    assert worker.call("read_file", f"text-{via}.txt", False, via) == text


@pytest.mark.parametrize("via", VIAS)
def test_binary_write_then_read(worker: farside.EnclaveClient, files_dir: Path, via: str) -> None:
    data = bytes(range(256)) * 3 + b"\x00end"
    assert worker.call("write_file", f"blob-{via}.bin", data, via) == len(data)
    assert (files_dir / f"blob-{via}.bin").read_bytes() == data
    assert worker.call("read_file", f"blob-{via}.bin", True, via) == data


@pytest.mark.parametrize("via", VIAS)
def test_reads_files_the_client_wrote(
    worker: farside.EnclaveClient, files_dir: Path, via: str
) -> None:
    (files_dir / "sub").mkdir(exist_ok=True)
    (files_dir / "sub" / f"from-client-{via}.txt").write_text("hi from the host", encoding="utf-8")
    assert worker.call("read_file", f"sub/from-client-{via}.txt", False, via) == "hi from the host"
    # An absolute path inside the root is fine too.
    absolute = str(files_dir / "sub" / f"from-client-{via}.txt")
    assert worker.call("read_file", absolute, False, via) == "hi from the host"


def test_append_mode(worker: farside.EnclaveClient, files_dir: Path) -> None:
    worker.call("write_file", "log.txt", "one\n")
    worker.call("append_file", "log.txt", "two\n")
    worker.call("append_file", "log.txt", "three\n", "host")
    assert (files_dir / "log.txt").read_text(encoding="utf-8") == "one\ntwo\nthree\n"


def test_large_binary_file(worker: farside.EnclaveClient, files_dir: Path) -> None:
    data = os.urandom(3 * 2**20 + 17)  # several buffered exit calls
    worker.call("write_file", "large.bin", data, "host")
    assert (files_dir / "large.bin").read_bytes() == data
    assert worker.call("read_file", "large.bin", True) == data


@pytest.mark.parametrize("via", VIAS)
def test_missing_file_is_file_not_found_inside(worker: farside.EnclaveClient, via: str) -> None:
    report = worker.call("try_open", "does/not/exist.txt", "r", via)
    assert report["error"] == "FileNotFoundError"


def test_uncaught_file_error_reaches_the_client_as_an_enclave_call_error(
    worker: farside.EnclaveClient,
) -> None:
    with pytest.raises(farside.EnclaveCallError) as info:
        worker.call("read_file", "never-written.txt")
    assert info.value.remote_type == "FileNotFoundError"


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("mode", ["r", "w", "wb", "a"])
def test_parent_escape_is_refused(
    worker: farside.EnclaveClient, files_dir: Path, via: str, mode: str
) -> None:
    target = files_dir.parent / f"escaped-{via}-{mode}.txt"
    if mode == "r":
        target.write_text("secret", encoding="utf-8")
    report = worker.call("try_open", f"../{target.name}", mode, via)
    assert report["error"] == "PermissionError", report
    if mode == "r":
        assert target.read_text(encoding="utf-8") == "secret"
    else:
        assert not target.exists(), "the enclave wrote outside its root"


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("mode", ["r", "w"])
def test_absolute_path_elsewhere_is_refused(
    worker: farside.EnclaveClient, outside: Path, via: str, mode: str
) -> None:
    target = outside / "absolute.txt"
    if mode == "r":
        target.write_text("secret", encoding="utf-8")
    report = worker.call("try_open", str(target), mode, via)
    assert report["error"] == "PermissionError", report
    if mode == "w":
        assert not target.exists()
    else:
        assert target.read_text(encoding="utf-8") == "secret"
    assert list(outside.iterdir()) == ([] if mode == "w" else [target])


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("mode", ["r", "w", "a"])
def test_symlinked_file_pointing_outside_is_refused(
    worker: farside.EnclaveClient, files_dir: Path, outside: Path, via: str, mode: str
) -> None:
    target = outside / "target.txt"
    target.write_text("original", encoding="utf-8")
    link = files_dir / f"link-{via}-{mode}.txt"
    link.symlink_to(target)
    report = worker.call("try_open", link.name, mode, via)
    assert report["error"] == "PermissionError", report
    assert target.read_text(encoding="utf-8") == "original"


@pytest.mark.parametrize("via", VIAS)
def test_symlinked_directory_pointing_outside_is_refused(
    worker: farside.EnclaveClient, files_dir: Path, outside: Path, via: str
) -> None:
    link = files_dir / f"dirlink-{via}"
    link.symlink_to(outside, target_is_directory=True)
    report = worker.call("try_open", f"{link.name}/new.txt", "w", via)
    assert report["error"] == "PermissionError", report
    assert list(outside.iterdir()) == []


def test_symlink_inside_the_root_is_allowed(worker: farside.EnclaveClient, files_dir: Path) -> None:
    (files_dir / "real.txt").write_text("inside", encoding="utf-8")
    link = files_dir / "inner-link.txt"
    if not link.exists():
        link.symlink_to(files_dir / "real.txt")
    assert worker.call("try_open", "inner-link.txt", "r") == {"error": None, "message": ""}
    assert worker.call("read_file", "inner-link.txt") == "inside"


def test_files_root_defaults_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ._support import WORKER

    monkeypatch.chdir(tmp_path)
    with farside.load(WORKER) as enclave:
        enclave.call("write_file", "in-cwd.txt", "cwd")
        assert enclave.call("try_open", "../x.txt", "w")["error"] == "PermissionError"
    assert (tmp_path / "in-cwd.txt").read_text(encoding="utf-8") == "cwd"
    assert not (tmp_path.parent / "x.txt").exists()


def test_files_root_that_is_not_a_directory_is_a_load_error(tmp_path: Path) -> None:
    from ._support import WORKER

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("", encoding="utf-8")
    with pytest.raises(farside.EnclaveLoadError, match="files_root"):
        farside.load(WORKER, files_root=not_a_dir)
