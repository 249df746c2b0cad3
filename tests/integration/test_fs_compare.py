"""One file-handling program, run natively and inside an enclave: the same results.

``tests/enclaves/wordcount/program.py`` walks a tree, counts words, writes a report
through a temporary file, archives a copy, renames, removes, and reads back facts
and errors. It knows nothing of farside. It runs once natively (working directory:
one copy of the tree) and once as an enclave (files root: another copy); what it
prints, what it returns and the trees it leaves must be equal, byte for byte. The
module runs on both transports (tests/integration/conftest.py).
"""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path
from typing import Any

import pytest

import farside

from ._support import ENCLAVES

WORDCOUNT = ENCLAVES / "wordcount"

TREE: dict[str, str | None] = {
    "corpus/a.txt": "the quick brown fox\njumps over the lazy dog\n",
    "corpus/b.txt": "",
    "corpus/notes.md": "not counted: only *.txt are\n",
    "corpus/deep/er/c.txt": "ünïcödé wörds cöunt tôo\n\n  spaced   out  \n",
    "corpus/deep/er/empty.txt": "",
    "corpus/deep/stale.tmp": "left over\n",
    "corpus/deep/d.txt": "one\ntwo\nthree\n" * 50,
    "corpus/only-junk/x.tmp": "junk\n",
    "corpus/nothing-here": None,  # an empty directory
    "corpus/spaces in name.txt": "a b c",
}


def make_tree(root: Path) -> None:
    for relative, contents in TREE.items():
        path = root / relative
        if contents is None:
            path.mkdir(parents=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(contents, encoding="utf-8")
    (root / "corpus" / "link-to-a.txt").symlink_to("a.txt")  # inside the root: followed


def snapshot(root: Path) -> dict[str, Any]:
    """Every entry under ``root``: kind, permissions, and contents or link target."""
    entries: dict[str, Any] = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top, name)
            relative = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                entries[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                entries[relative] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                entries[relative] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return entries


def run_natively(root: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    spec = importlib.util.spec_from_file_location("wordcount_native", WORDCOUNT / "program.py")
    assert spec is not None
    assert spec.loader is not None
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    with monkeypatch.context() as patch:
        patch.chdir(root)
        return program.main()


def test_the_program_does_the_same_natively_and_in_an_enclave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    native, enclave = tmp_path / "native", tmp_path / "enclave"
    make_tree(native)
    make_tree(enclave)
    assert snapshot(native) == snapshot(enclave)
    before = snapshot(native)

    expected = run_natively(native, monkeypatch)
    expected_output = capsys.readouterr()
    with farside.load(WORDCOUNT, files_root=enclave) as client:
        result = client.call("main")
    output = capsys.readouterr()

    assert output.out == expected_output.out
    assert output.err == expected_output.err == ""
    assert result == expected
    assert snapshot(enclave) == snapshot(native)
    assert snapshot(native) != before  # the program did change the tree
    assert "FileNotFoundError: [Errno 2] No such file or directory: 'corpus/missing.txt'" in (
        output.out
    )
