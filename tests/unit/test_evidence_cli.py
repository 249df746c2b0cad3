"""``farside evidence verify``: exit 0 and the claims, or exit 1 and exactly one line.

The contract is checked on the real command (``python -m farside``) for each
vector and each kind of rejection; hypothesis then throws malformed input of
every kind at the same entry point in-process, to show it never prints a
traceback or anything but the one line.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from farside.cli import main

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "hardware"
REJECTION = re.compile(r"evidence rejected: [a-z ]+: \S.*")


def farside(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farside", "evidence", "verify", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_rejected(result: subprocess.CompletedProcess[str], check: str) -> str:
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert REJECTION.fullmatch(lines[0])
    assert lines[0].startswith(f"evidence rejected: {check}: ")
    return lines[0]


@pytest.mark.parametrize(
    ("file", "extra", "fmt", "measurement", "report_data", "debug"),
    [
        (
            "nitro/valid-attestation-doc-bytes",
            ["--at", "2022-10-13T09:00:00Z"],
            "nitro",
            "f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b",
            "",
            False,
        ),
        (
            "nitro/debug-mode-attestation-doc-bytes",
            ["--at", "2022-10-12T14:00:00+00:00", "--format", "nitro"],
            "nitro",
            "00" * 48,
            b"hello, world!".hex(),
            True,
        ),
        (
            "sev-snp/attestation.bin",
            ["--collateral", str(VECTORS / "sev-snp" / "vcek.testcer")],
            "sev-snp",
            "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01",
            "0102030405" + "00" * 59,
            True,
        ),
        ("tdx/tdx_quote", ["--at", "2026-06-01"], "tdx", None, None, False),
        ("sgx/sgx_quote", ["--format", "sgx"], "sgx", None, None, False),
    ],
)
def test_a_vector_verifies_with_json_fields(
    file: str,
    extra: list[str],
    fmt: str,
    measurement: str | None,
    report_data: str | None,
    debug: bool,
) -> None:
    result = farside(VECTORS / file, *extra, "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    summary = json.loads(result.stdout)
    assert summary["format"] == fmt
    assert summary["debug"] is debug
    assert re.fullmatch(r"[0-9a-f]{64}|[0-9a-f]{96}", summary["measurement"])
    if measurement is not None:
        assert summary["measurement"] == measurement
    if report_data is not None:
        assert summary["report_data"] == report_data
    assert len(result.stdout.splitlines()) == 1


def test_plain_output_names_the_claims() -> None:
    result = farside(VECTORS / "sgx" / "sgx_quote")
    assert result.returncode == 0
    assert "format: sgx" in result.stdout.splitlines()
    assert result.stdout.rstrip().endswith("chains to the pinned vendor root")


def test_base64_nitro_document_is_read() -> None:
    result = farside(
        VECTORS / "nitro" / "valid-attestation-doc-base64", "--at", "2023-09-18T15:10:00Z", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["format"] == "nitro"


def test_without_at_an_old_nitro_document_is_rejected_for_expiry() -> None:
    line = assert_rejected(farside(VECTORS / "nitro" / "valid-attestation-doc-bytes"), "expired")
    assert "2022-10-13" in line
    assert_rejected(farside(VECTORS / "nitro" / "valid-attestation-doc-bytes", "--json"), "expired")


def test_a_flipped_byte_is_one_line_naming_the_check(tmp_path: Path) -> None:
    quote = bytearray((VECTORS / "sgx" / "sgx_quote").read_bytes())
    quote[100] ^= 1  # inside the enclave report the attestation key signed
    tampered = tmp_path / "quote"
    tampered.write_bytes(bytes(quote))
    assert_rejected(farside(tampered), "signature")
    assert_rejected(farside(tampered, "--json"), "signature")


def test_a_chain_to_another_root_is_rejected_however_its_names_read(tmp_path: Path) -> None:
    from farside.attestation.hardware import _roots

    from ._hardware_fakes import NitroPki

    document = tmp_path / "document"
    document.write_bytes(NitroPki.make(root_name=_roots.NITRO_ROOT.subject).document())
    assert_rejected(farside(document, "--at", "2025-06-01T00:00:00Z"), "root")


def test_input_problems_are_one_line_too(tmp_path: Path) -> None:
    assert_rejected(farside(tmp_path / "missing"), "input")
    assert_rejected(farside(VECTORS / "sgx" / "sgx_quote", "--at", "yesterday"), "input")
    assert_rejected(farside(VECTORS / "sgx" / "sgx_quote", "--format", "sev"), "input")
    assert_rejected(
        farside(VECTORS / "sgx" / "sgx_quote", "--collateral", tmp_path / "none"), "input"
    )
    assert_rejected(farside(VECTORS / "sev-snp" / "attestation.bin"), "collateral")
    assert_rejected(farside(VECTORS / "sgx" / "sgx_quote", "--format", "tdx"), "format")
    text = tmp_path / "text"
    text.write_text("this is not evidence\n")
    assert_rejected(farside(text, "--json"), "format")


# ---------------------------------------------------------------- no traceback, ever

SEEDS = [
    (VECTORS / "sgx" / "sgx_quote").read_bytes(),
    (VECTORS / "tdx" / "quote_v5_sample.dat").read_bytes(),
    (VECTORS / "sev-snp" / "attestation.bin").read_bytes(),
    (VECTORS / "nitro" / "valid-attestation-doc-bytes").read_bytes(),
]


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """Real evidence cut, overwritten and extended at random; or plain random bytes/text."""
    kind = draw(st.sampled_from(["mutate", "random", "text"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    if kind == "text":
        seed = draw(st.sampled_from(SEEDS))
        encoded = base64.b64encode(seed) if draw(st.booleans()) else seed.hex().encode()
        cut = draw(st.integers(0, len(encoded)))
        return encoded[:cut] + draw(st.binary(max_size=8))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data) - 1))
        data[position : position + 4] = draw(st.binary(min_size=0, max_size=4))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mangled(), fmt=st.sampled_from(["auto", "nitro", "sev-snp", "tdx", "sgx"]))
def test_malformed_input_never_escapes_as_a_traceback(
    data: bytes, fmt: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("fuzz", numbered=True)
    evidence = directory / "evidence"
    evidence.write_bytes(data)
    collateral = directory / "collateral"
    collateral.write_bytes(data[:1400])
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(
            [
                *("evidence", "verify", str(evidence), "--format", fmt),
                *("--collateral", str(collateral), "--json"),
            ]
        )
    out, err = stdout.getvalue(), stderr.getvalue()
    if code == 0:  # a mutation that only touched unsigned padding still verifies
        assert json.loads(out)["format"] in ("nitro", "sev-snp", "tdx", "sgx")
        return
    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert REJECTION.fullmatch(err.strip())
    assert "Traceback" not in err
    assert "evidence rejected: error:" not in err  # every failure is a named check, not a bug
