"""Count the words of every ``*.txt`` under ``corpus/``, write a report, archive it,
rename and remove: an ordinary file-handling program, with nothing of farside in it.

tests/integration/test_fs_compare.py runs this file twice, once natively and once
inside an enclave (this directory is the enclave bundle), on two copies of one tree,
and compares what it prints, what it returns and the trees it leaves, byte for byte.
Everything it prints or returns is relative to its working directory.
"""

from __future__ import annotations

import errno
import glob
import os
import pathlib
import shutil
import stat
import tempfile
from typing import Any


def count_words(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(len(line.split()) for line in f)


def find_texts() -> dict[str, int]:
    counts = {}
    for top, dirs, files in os.walk("corpus"):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".txt"):
                path = os.path.join(top, name)
                counts[path] = count_words(path)
    by_glob = sorted(glob.glob("corpus/**/*.txt", recursive=True))
    by_pathlib = sorted(str(p) for p in pathlib.Path("corpus").rglob("*.txt"))
    if not by_glob == by_pathlib == sorted(counts):
        raise AssertionError(f"os.walk, glob and pathlib disagree: {by_glob} {by_pathlib}")
    return counts


def write_report(counts: dict[str, int]) -> str:
    """Write report.tsv atomically: a temporary file in the working directory, renamed.
    Returns the directory the temporary file was in, relative to the working directory."""
    lines = [f"{path}\t{n}" for path, n in sorted(counts.items())]
    lines.append(f"total\t{sum(counts.values())}")
    fd, temporary = tempfile.mkstemp(dir=".", prefix=".report-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(temporary, "report.tsv")
    return os.path.dirname(os.path.relpath(temporary)) or "."


def largest(directory: str) -> list[Any]:
    with os.scandir(directory) as entries:
        files = [(e.stat().st_size, e.name) for e in entries if e.is_file()]
    return list(max(files)) if files else []


def errors() -> list[str]:
    seen = []
    for attempt in (
        lambda: open("corpus/missing.txt"),  # noqa: SIM115 (it fails)
        lambda: os.mkdir("archive"),
        lambda: os.rmdir("archive"),
        lambda: os.remove("corpus"),
        lambda: os.listdir("report.tsv"),
        lambda: pathlib.Path("nowhere/deeper.txt").write_text("x"),
    ):
        try:
            attempt()
        except OSError as exc:
            seen.append(f"{type(exc).__name__}: {exc} ({errno.errorcode[exc.errno]})")
    return seen


def main() -> dict[str, Any]:
    counts = find_texts()
    where = write_report(counts)
    total = sum(counts.values())
    print(f"counted {len(counts)} files, {total} words (temporary report in {where})")

    os.makedirs("archive/reports", exist_ok=True)
    shutil.copyfile("report.tsv", "archive/reports/report-1.tsv")
    pathlib.Path("archive/reports/README").write_text("reports, newest last\n", encoding="utf-8")

    renamed = []
    for path, n in sorted(counts.items()):
        if n == 0:
            os.rename(path, path[: -len(".txt")] + ".empty")
            renamed.append(path)
    removed = []
    for junk in sorted(pathlib.Path("corpus").rglob("*.tmp")):
        junk.unlink()
        removed.append(str(junk))
    for top, _dirs, _files in os.walk("corpus", topdown=False):
        if not os.listdir(top):
            os.rmdir(top)
            removed.append(top + "/")
    print("renamed:", ", ".join(renamed) or "nothing")
    print("removed:", ", ".join(removed) or "nothing")

    os.chdir("archive")
    here = sorted(os.listdir("."))
    cwd_name = os.path.basename(os.getcwd())
    os.chdir("..")
    report = pathlib.Path("report.tsv")
    archived = "archive/reports/report-1.tsv"
    facts = {
        "exists": [os.path.exists(p) for p in ("report.tsv", "corpus", "nowhere")],
        "isfile": [os.path.isfile(p) for p in ("report.tsv", "corpus")],
        "isdir": [os.path.isdir(p) for p in ("report.tsv", "corpus")],
        "report size": os.path.getsize("report.tsv") == report.stat().st_size,
        "report mode": stat.filemode(os.stat("report.tsv").st_mode),
        "report lines": len(report.read_text(encoding="utf-8").splitlines()),
        "copy equal": report.read_bytes() == pathlib.Path(archived).read_bytes(),
        "archive": here,
        "cwd in archive": cwd_name,
        "largest in corpus": largest("corpus"),
        "tree": sorted([top, sorted(dirs), sorted(files)] for top, dirs, files in os.walk(".")),
    }
    for line in errors():
        print(line)
    return {"counts": counts, "total": total, "facts": facts}
