"""Every command and snippet in farside's documents runs as written (issue 15, item 2).

One test per document: its ``sh``, ``console`` and ``python`` blocks run in order in a
scratch directory of its own, with loopback standing in for the remote machines. The
rules (what is rewritten, what runs in the background, the markers a document may
carry) are in ``_blocks.py``'s docstring and docs/architecture.md ("The documents are
tests"); a block that cannot run here is marked in the document itself, with its reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import IO, Any

import pytest

from ._blocks import Block, Document, Step, parse_document, rewrite, steps

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "src/farside/examples").glob("*/README.md")),
]
STEP_TIMEOUT = 120.0  # one command or snippet; a shared, slow machine gets room
READY_TIMEOUT = 60.0

# Python blocks of one document run in one interpreter, like consecutive cells: this
# runner execs each in a shared namespace and reports on its own descriptor.
_RUNNER = textwrap.dedent(
    """
    import json, os, sys, traceback
    report = os.fdopen(int(sys.argv[1]), "w")
    namespace = {"__name__": "__main__"}
    for request in sys.stdin:
        request = json.loads(request)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        try:
            exec(compile(request["code"], request["where"], "exec"), namespace)
            result = {"ok": True}
        except BaseException:
            result = {"ok": False, "error": traceback.format_exc()}
        sys.stdout.flush()
        sys.stderr.flush()
        report.write(json.dumps(result) + "\\n")
        report.flush()
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _shims(directory: Path) -> Path:
    """``farside``, ``python`` and ``python3`` as this interpreter, first on the PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, command in (
        ("farside", f'exec "{sys.executable}" -m farside "$@"'),
        ("python", f'exec "{sys.executable}" "$@"'),
        ("python3", f'exec "{sys.executable}" "$@"'),
    ):
        shim = directory / name
        shim.write_text(f"#!/bin/sh\n{command}\n")
        shim.chmod(0o755)
    return directory


class DocumentRun:
    """One document's blocks, run in order; servers and the interpreter stopped at the end."""

    def __init__(self, document: Document, tmp_path: Path) -> None:
        self.document = document
        self.port = _free_port()
        self.scratch = (tmp_path / "scratch").resolve()
        self.scratch.mkdir()
        self.cwd = self.scratch  # where the last shell step ended, as in one shell
        self.state = tmp_path / "state"
        self.state.mkdir()
        bin_dir = _shims(tmp_path / "bin")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
        self.env["PATH"] = f"{bin_dir}{os.pathsep}{self.env.get('PATH', '')}"
        self.servers: list[tuple[subprocess.Popen[str], Path]] = []
        self.runner: subprocess.Popen[str] | None = None
        self.report: IO[str] | None = None
        self.runner_log = tmp_path / "python.log"
        self.runner_seen = 0  # characters of its log printed already
        self.ran: list[str] = []
        for link in document.links:
            target = self.scratch / link
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(ROOT / link)

    # ------------------------------------------------------------------ blocks

    def run(self) -> None:
        for block in self.document.blocks:
            if block.skip is not None or not block.runs:
                continue
            text = rewrite(block.text, self.port, self.scratch)
            if block.file is not None:
                target = self.scratch / rewrite(block.file, self.port, self.scratch)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
            elif block.language == "python":
                self._python(block, text)
            else:
                for step in steps(block, text):
                    self._step(block, step)
            self.ran.append(block.where)

    def _step(self, block: Block, step: Step) -> None:
        if step.kind == "server":
            self._server(block, step.command)
            return
        state, cwd = self.state / "vars", self.state / "cwd"
        dump = f'\npwd > "{cwd}"'
        if step.assigned:
            names = " ".join(step.assigned)
            dump += (
                f'\nfor __name in {names}; do printf \'%s\\0%s\\0\' "$__name" "${{!__name}}"; '
                f'done > "{state}"'
            )
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", step.command + dump],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
        print(f"$ {step.command}\n{done.stdout}{done.stderr}")
        if done.returncode != 0:
            pytest.fail(
                f"{block.where}: exit status {done.returncode} from\n  {step.command}\n"
                f"stdout:\n{_tail(done.stdout)}\nstderr:\n{_tail(done.stderr)}",
                pytrace=False,
            )
        self.cwd = Path(cwd.read_text().strip())
        if step.assigned:
            fields = state.read_bytes().split(b"\0")
            for name, value in zip(fields[0::2], fields[1::2], strict=False):
                self.env[name.decode()] = value.decode()

    def _server(self, block: Block, command: str) -> None:
        # A second server in a document is the same server started another way.
        self._stop_servers()
        log = self.state / f"server{len(self.servers)}.log"
        with log.open("w") as stderr:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.servers.append((process, log))
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT)
        line = process.stdout.readline() if ready else ""
        print(f"$ {command} &\n{line}")
        if "listening on" not in line:
            self._stop_servers()
            pytest.fail(
                f"{block.where}: the server did not start:\n  {command}\n"
                f"{line}{_tail(log.read_text(errors='replace'))}",
                pytrace=False,
            )

    def _python(self, block: Block, code: str) -> None:
        if self.runner is None:
            read, write = os.pipe()
            with self.runner_log.open("w") as log:
                self.runner = subprocess.Popen(
                    [sys.executable, "-c", _RUNNER, str(write)],
                    cwd=self.scratch,
                    env=self.env,
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                    pass_fds=(write,),
                )
            os.close(write)
            self.report = os.fdopen(read)
        assert self.runner.stdin is not None
        assert self.report is not None
        where = f"{block.document.name} line {block.line}"
        request: dict[str, Any] = {
            "code": code,
            "where": where,
            "env": self.env,
            "cwd": str(self.cwd),
        }
        self.runner.stdin.write(json.dumps(request) + "\n")
        self.runner.stdin.flush()
        ready, _, _ = select.select([self.report], [], [], STEP_TIMEOUT)
        answer = json.loads(self.report.readline() or "null") if ready else None
        output = self.runner_log.read_text(errors="replace")[self.runner_seen :]
        self.runner_seen += len(output)
        print(f">>> {block.where}\n{output}")
        if answer is None:
            pytest.fail(f"{block.where}: the snippet did not finish:\n{_tail(output)}")
        if not answer["ok"]:
            pytest.fail(
                f"{block.where}: the snippet raised:\n{answer['error']}\noutput:\n{_tail(output)}",
                pytrace=False,
            )

    # ------------------------------------------------------------------ the end

    def _stop_servers(self) -> None:
        for process, log in self.servers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stdout is not None:
                process.stdout.close()
            print(f"server log:\n{_tail(log.read_text(errors='replace'))}")
        self.servers = []

    def close(self) -> None:
        if self.runner is not None:
            assert self.runner.stdin is not None
            with contextlib.suppress(OSError):
                self.runner.stdin.close()
            try:
                self.runner.wait(30)
            except subprocess.TimeoutExpired:
                self.runner.kill()
                self.runner.wait()
            if self.report is not None:
                self.report.close()
        self._stop_servers()


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_document_runs_as_written(path: Path, tmp_path: Path) -> None:
    document = parse_document(path)
    run = DocumentRun(document, tmp_path)
    try:
        run.run()
    finally:
        run.close()
        shutil.rmtree(run.scratch, ignore_errors=True)
    runnable = [b.where for b in document.blocks if b.runs]
    assert run.ran == runnable


def test_every_document_is_covered() -> None:
    """A new document under docs/ or an example's README is run without anyone listing it."""
    assert ROOT / "docs/deploy.md" in DOCUMENTS
    assert ROOT / "src/farside/examples/data_service/README.md" in DOCUMENTS
    assert all(path.is_file() for path in DOCUMENTS)


def test_skipped_blocks_are_few_and_say_why() -> None:
    skipped = [b for path in DOCUMENTS for b in parse_document(path).blocks if b.skip]
    for block in skipped:
        assert len(block.skip or "") >= 20, f"{block.where}: say why it cannot run here"
    runnable = [b for path in DOCUMENTS for b in parse_document(path).blocks if b.runs]
    assert len(skipped) < len(runnable) // 2, [b.where for b in skipped]
