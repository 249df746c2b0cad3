"""The hardware package's surface: a curated, lazy ``__all__`` that costs nothing to import."""

from __future__ import annotations

import subprocess
import sys

import farside.attestation.hardware as hardware


def test_all_is_exactly_what_the_package_exports() -> None:
    for name in hardware.__all__:
        assert getattr(hardware, name) is not None
    assert set(hardware._HOMES) == set(hardware.__all__)


def test_importing_attestation_loads_no_cbor_roots_or_verifiers() -> None:
    code = (
        "import sys, farside.attestation, farside.attestation.hardware\n"
        "heavy = [m for m in ('cbor2', 'farside.attestation.hardware._roots',"
        " 'farside.attestation.hardware.nitro') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
