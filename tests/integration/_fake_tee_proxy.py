"""``farside proxy`` on a fake TEE: the test-only stand-in for a confidential VM's kernel.

A provision server under test is told that this script (through a small ``python``
wrapper, ``launcher``) is its Python. The proxy it starts then runs exactly the
production ``farside proxy --attester tsm|nsm ...``, except that configfs-tsm's file
operations (``tsm._OsFileSystem``) or the NSM device (``nsm.device_transport``) are
the fakes of tests/unit/_fake_tee.py, signing with the test PKI saved in the file
``$FARSIDE_TEST_FAKE_TEE`` names. Nothing in farside reads that variable.
"""

from __future__ import annotations

import os
import runpy
import stat
import sys
from pathlib import Path
from typing import Any

FAKE_TEE_VARIABLE = "FARSIDE_TEST_FAKE_TEE"
_TESTS = Path(__file__).resolve().parent.parent


def launcher(directory: Path) -> str:
    """An executable that runs ``python THIS_FILE ARGS`` (a provision server's ``python``)."""
    path = directory / "python-with-fake-tee"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _install(tee_file: Path) -> None:
    sys.path.insert(0, str(_TESTS))
    from unit._fake_tee import FakeTee

    from farside.attestation.hardware import nsm, tsm

    tee = FakeTee.load(tee_file)
    if tee.attester == "tsm":
        tsm._OsFileSystem = tee.kernel  # type: ignore[assignment,misc]
    else:

        def device_transport(device: Any = None) -> Any:
            return tee.nsm()

        nsm.device_transport = device_transport


def main() -> None:
    # Called as: launcher -m farside proxy ARGS (the provisioner's proxy command line).
    if sys.argv[1:3] != ["-m", "farside"]:
        raise SystemExit(f"usage: {sys.argv[0]} -m farside proxy ...")
    _install(Path(os.environ[FAKE_TEE_VARIABLE]))
    sys.argv = ["farside", *sys.argv[3:]]
    runpy.run_module("farside", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
