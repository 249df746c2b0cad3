"""The data-service example (examples/data_service), run as its README runs it.

* The one-process walkthrough (``LocalProvision``): the aggregates it prints are
  the ones computed here from sample.csv, no row value appears in its output, a
  group smaller than three rows is refused, and another signer's build is refused.
* Two processes on one trusted machine: the README's commands make the keys, the
  signed build and a provision server with ``--platform-dir``; the data owner seals
  in one process and the analyst, in another, opens and queries it. Sealed data
  does not open in a local proxy of another process, and the analyst refuses the
  same code signed by another key.

Both run once per transport: the drivers read ``$FARSIDE_TRANSPORT``, which each
test sets in the environment of the processes it starts. One provision server
serves both (its proxies speak what each client asks for).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from farside.examples.data_service import common

from ._support import environment

EXAMPLE = Path(common.__file__).resolve().parent
SAMPLE = EXAMPLE / "sample.csv"
READY = re.compile(r"farside provision-server listening on (\S+:\d+)")
# "mean(salary) = 1.5" or "mean(salary) where 30 <= age <= 39 = 1.5"
ANSWER = re.compile(r"\s*(count|sum|mean|min|max)\((\w+)\)(?: where (.+?))? = (\S+)")
# As README.md starts it, on a free port.
SERVER = (
    "provision-server --port 0 --tls-cert tls/server.pem --tls-key tls/server.key "
    "--client-ca tls/ca.pem --platform-dir platform"
)


def python(
    *args: str, cwd: Path | None = None, timeout: float = 30, transport: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python ARGS``; its sessions use ``transport`` (default: this process's choice)."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=environment(transport) if transport is not None else None,
        check=False,
    )


def farside(*args: str, cwd: Path | None = None) -> str:
    """``python -m farside ARGS``, which must succeed; return its stdout."""
    done = python("-m", "farside", *args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


def sample() -> tuple[list[str], list[list[str]]]:
    with SAMPLE.open(newline="") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


def column(name: str, **where: tuple[float, float]) -> list[int]:
    """sample.csv's ``name`` column, of the rows whose ``where`` columns are in range."""
    header, rows = sample()
    records = [dict(zip(header, row, strict=True)) for row in rows]
    return [
        int(record[name])
        for record in records
        if all(low <= int(record[key]) <= high for key, (low, high) in where.items())
    ]


def expected(op: str, values: list[int]) -> float:
    return {
        "count": len(values),
        "sum": sum(values),
        "mean": sum(values) / len(values),
        "min": min(values),
        "max": max(values),
    }[op]


def answers(output: str) -> dict[tuple[str, str, str | None], float]:
    """Every "op(column) [where ...] = value" line of ``output``."""
    found = {}
    for line in output.splitlines():
        match = ANSWER.fullmatch(line)
        if match:
            op, name, where, value = match.groups()
            found[op, name, where] = float(value)
    return found


def assert_no_row_values(output: str) -> None:
    """No cell of sample.csv appears as a word of ``output``."""
    _, rows = sample()
    cells = {cell for row in rows for cell in row}
    words = set(re.split(r"[\s,:;=()<>]+", output))
    assert not cells & words, f"row values in the output: {sorted(cells & words)}"


# ----------------------------------------------------------------- one process


def test_the_manifest_constants_are_enclave_toml() -> None:
    manifest = tomllib.loads((common.ENCLAVE_DIR / "enclave.toml").read_text())["enclave"]
    assert manifest == {
        "name": common.ENCLAVE_NAME,
        "product_id": common.PRODUCT_ID,
        "security_version": common.SECURITY_VERSION,
        "debug": False,
    }


def test_the_walkthrough(tmp_path: Path, transport: str) -> None:
    done = python(
        "-m", "farside.examples.data_service.walkthrough", cwd=tmp_path, transport=transport
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    out = done.stdout
    got = answers(out)
    header, rows = sample()
    assert got.pop(("count", "age", None)) == len(rows) == 16
    for name in header:
        values = column(name)
        assert got.pop(("sum", name, None)) == sum(values)
        assert math.isclose(got.pop(("mean", name, None)), expected("mean", values))
    thirties = column("salary", age=(30, 39))
    assert len(thirties) >= 3
    assert math.isclose(got.pop(("mean", "salary", "30 <= age <= 39")), expected("mean", thirties))
    assert got == {}, f"unexpected answers: {got}"
    # The too-small group and the unknown names are refused, with the reason.
    assert 0 < len(column("salary", age=(55, math.inf))) < 3
    refused = [line.strip() for line in out.splitlines() if ": refused: " in line]
    assert refused == [
        "mean(salary) where age >= 55: refused: the group has fewer than 3 rows: its "
        "aggregates would expose individual rows",
        "median(salary): refused: unknown op 'median': the ops are count, sum, mean, min, max",
        "mean(name): refused: unknown column 'name': the columns are age, hours, salary",
    ]
    assert "refused before anything was sent: attestation failed (signer)" in out
    assert_no_row_values(out)
    assert not list(tmp_path.iterdir()), "the walkthrough left files in its working directory"


def test_the_walkthrough_with_a_dataset_too_small_to_query(tmp_path: Path) -> None:
    (tmp_path / "tiny.csv").write_text("age,salary\n41,52000\n44,61000\n")
    done = python(
        "-m", "farside.examples.data_service.walkthrough", "--csv", "tiny.csv", cwd=tmp_path
    )
    assert done.returncode == 1
    assert "a dataset has 3 to 100000 rows" in done.stderr
    assert "52000" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


# ----------------------------------------------------------------- two processes


@dataclasses.dataclass(frozen=True)
class Machine:
    """A trusted machine (a provision server with --platform-dir) and a signed build,
    and the transport its clients' sessions use."""

    root: Path
    address: str
    signer: str
    transport: str | None = None

    def remote_flags(self) -> list[str]:
        """The clients' flags for this machine (paths relative to ``root``)."""
        return (
            f"--remote {self.address} --tls-ca tls/ca.pem --tls-cert tls/client.pem "
            "--tls-key tls/client.key --platform-key platform/platform.pub"
        ).split()

    def owner(self, args: str) -> subprocess.CompletedProcess[str]:
        """The data owner's driver, remote: ``args`` are split on spaces."""
        module = "farside.examples.data_service.owner"
        flags = self.remote_flags()
        return python("-m", module, *args.split(), *flags, cwd=self.root, transport=self.transport)

    def analyst(self, args: str, *, remote: bool = True) -> subprocess.CompletedProcess[str]:
        """The analyst's driver (remote unless told otherwise)."""
        flags = self.remote_flags() if remote else []
        module = "farside.examples.data_service.analyst"
        return python("-m", module, *args.split(), *flags, cwd=self.root, transport=self.transport)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def trusted_machine() -> Iterator[Machine]:
    """The README's commands: keygen, build, sign, certs, platform init, provision-server."""
    root = Path(tempfile.mkdtemp(prefix="farside-test-data-service-"))
    server = None
    try:
        (root / "examples").symlink_to(EXAMPLE.parent)
        signer = farside("keygen", "--out", "signer.key", cwd=root).splitlines()[-1]
        signer = signer.removeprefix("signer: ")
        farside("build", "examples/data_service/enclave", "--out", "ds.fsb", cwd=root)
        signed = farside("sign", "ds.fsb", "--key", "signer.key", cwd=root).splitlines()
        assert signed[-1] == f"signer: {signer}"
        measured = farside("measure", "ds.fsb", cwd=root).splitlines()
        assert measured[-2] == f"signer: {signer}"
        assert measured[-1].startswith("measurement: ")
        assert "product_id=1, security_version=1, debug=False" in measured[0]
        farside("certs", "--out", "tls", "--host", "127.0.0.1", cwd=root)
        farside("platform", "init", "--dir", "platform", cwd=root)
        log = root / "server.out"
        with log.open("wb") as stdout, (root / "server.err").open("wb") as stderr:
            server = subprocess.Popen(
                [sys.executable, "-m", "farside", *SERVER.split()],
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        deadline = time.monotonic() + 20
        while not (match := READY.search(log.read_text())):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("provision-server did not start:\n" + (root / "server.err").read_text())
            time.sleep(0.05)
        yield Machine(root, match.group(1), signer)
    finally:
        if server is not None:
            stop(server)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def machine(trusted_machine: Machine, transport: str) -> Machine:
    """The trusted machine, as clients on ``transport`` use it."""
    return dataclasses.replace(trusted_machine, transport=transport)


@pytest.fixture(scope="module")
def sealed(machine: Machine) -> Path:
    """sample.csv, sealed by the owner's process on the trusted machine."""
    name = f"dataset-{machine.transport}.sealed"
    done = machine.owner(
        f"--enclave ds.fsb --signer {machine.signer} --csv examples/data_service/sample.csv "
        f"--out {name}"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith(f"sealed 16 rows into {name}")
    assert f"signer {machine.signer}" in done.stdout
    blob = (machine.root / name).read_bytes()
    assert blob.startswith(b"FSEAL\x01\x02")  # version 1, policy "signer"
    assert b"salary" not in blob
    return machine.root / name


def test_the_analyst_opens_in_another_process_what_the_owner_sealed(
    machine: Machine, sealed: Path
) -> None:
    done = machine.analyst(
        f"--enclave ds.fsb --signer {machine.signer} --sealed {sealed.name} "
        "--query max:salary --query min:age --query mean:hours "
        "--query count:salary:age=30..39:hours=40.. --query sum:salary:age=55.."
    )
    assert done.returncode == 0, done.stderr
    got = answers(done.stdout)
    assert got == {
        ("max", "salary", None): expected("max", column("salary")),
        ("min", "age", None): expected("min", column("age")),
        ("mean", "hours", None): pytest.approx(expected("mean", column("hours"))),
        ("count", "salary", "30 <= age <= 39 and hours >= 40"): len(
            column("salary", age=(30, 39), hours=(40, math.inf))
        ),
    }
    assert "sum(salary) where age >= 55: refused: the group has fewer than 3 rows" in done.stdout


def test_the_default_queries_show_no_row(machine: Machine, sealed: Path) -> None:
    done = machine.analyst(f"--enclave ds.fsb --signer {machine.signer} --sealed {sealed.name}")
    assert done.returncode == 0, done.stderr
    assert answers(done.stdout)["mean", "salary", None] == pytest.approx(
        expected("mean", column("salary"))
    )
    assert_no_row_values(done.stdout)


def test_the_analyst_refuses_another_signers_build(machine: Machine, sealed: Path) -> None:
    root, other = machine.root, f"other-{machine.transport}"
    farside("keygen", "--out", f"{other}.key", cwd=root)
    farside("build", "examples/data_service/enclave", "--out", f"{other}.fsb", cwd=root)
    farside("sign", f"{other}.fsb", "--key", f"{other}.key", cwd=root)
    done = machine.analyst(
        f"--enclave {other}.fsb --signer {machine.signer} --sealed {sealed.name}"
    )
    assert done.returncode == 1
    assert "attestation failed (signer)" in done.stderr
    assert "dataset columns" not in done.stdout  # the sealed file was never sent
    assert "Traceback" not in done.stderr


def test_a_local_proxy_of_another_process_cannot_open_it(machine: Machine, sealed: Path) -> None:
    done = machine.analyst(
        f"--enclave ds.fsb --signer {machine.signer} --sealed {sealed.name}", remote=False
    )
    assert done.returncode == 1
    assert "the sealed blob cannot be opened by this enclave on this platform" in done.stderr
    assert "Traceback" not in done.stderr
