"""The data-service example in one process, with nothing but farside installed.

    python -m farside.examples.data_service.walkthrough [--csv FILE]

It does what README.md does with commands and two machines: the enclave's author
signs a build; the data owner seals sample.csv for that signer; the analyst
queries aggregates through the enclave and some queries are refused; and the
analyst refuses the same code signed by another key.

Why one process: under ``LocalProvision`` every client process has its own
ephemeral platform key, and sealed data opens only on the platform that sealed
it. Here the owner's and the analyst's enclaves are two proxies of this one
process, so they share a platform. Across processes and machines, use a
provision server started with ``--platform-dir`` (README.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import farside
from farside.attestation import (
    build_bundle,
    generate_signer_key,
    load_bundle,
    sign_bundle,
    verify_bundle_signature,
)

from . import analyst, common, owner

__all__ = ["DEMO_QUERIES", "main", "signed_build"]

DEMO_QUERIES = (
    "mean:salary:age=30..39",  # five rows: answered
    "mean:salary:age=55..",  # two rows: refused, it would say too much about each
    "median:salary",  # not an op the enclave offers
    "mean:name",  # not a column of the dataset
)


def signed_build(directory: Path, key: Path) -> tuple[Path, str]:
    """``farside build`` the enclave package and ``farside sign`` it; return (archive, signer).

    The manifest fields are passed explicitly (the values enclave/enclave.toml
    holds), so that the build is the same where the .toml was not installed.
    """
    archive = directory / f"data_service-{key.stem}.fsb"
    build_bundle(
        common.ENCLAVE_DIR,
        archive,
        name=common.ENCLAVE_NAME,
        product_id=common.PRODUCT_ID,
        security_version=common.SECURITY_VERSION,
        debug=False,
    )
    signer = verify_bundle_signature(sign_bundle(archive, key))
    return archive, signer.hex()


def _say(text: str) -> None:
    print(f"   {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m farside.examples.data_service.walkthrough",
        description="Seal a dataset and query its aggregates through a signed enclave, "
        "owner and analyst in this one process (local provisioning).",
    )
    parser.add_argument(
        "--csv", default=str(common.SAMPLE_CSV), help="the dataset (default: sample.csv)"
    )
    args = parser.parse_args(argv)
    csv_path = Path(args.csv)
    if not csv_path.is_file():
        print(f"walkthrough: error: no dataset at {csv_path}", file=sys.stderr)
        return 1
    try:
        with tempfile.TemporaryDirectory(prefix="farside-data-service-") as scratch:
            run(Path(scratch), csv_path)
    except (farside.EnclaveError, ValueError, OSError) as exc:
        print(f"walkthrough: error: {exc}", file=sys.stderr)
        return 1
    return 0


def run(work: Path, csv_path: Path) -> None:
    """The four steps, with their files in ``work``."""
    print("1. The enclave's author signs a build (farside keygen, build, sign):")
    generate_signer_key(work / "signer.key")
    archive, signer = signed_build(work, work / "signer.key")
    _say(f"signer      {signer}")
    _say(f"measurement {load_bundle(archive).measurement().hex()}")

    provision = farside.LocalProvision()  # this process's platform, for both sides
    rows = common.read_csv(csv_path)
    print(f"2. The data owner seals {csv_path.name} ({len(rows)} rows) for that signer:")
    sealed = owner.seal_dataset(archive, rows, signer=signer, provision=provision, verbose=False)
    (work / "dataset.sealed").write_bytes(sealed)
    _say(f"dataset.sealed: {len(sealed)} bytes, opened only by that signer's enclaves here")

    print("3. The analyst sends the sealed file and asks for aggregates, never rows:")
    queries = [analyst.Query.parse(text) for text in DEMO_QUERIES]
    with common.load_enclave(archive, signer=signer, provision=provision) as client:
        _say(owner.describe(client.identity))
        analyst.run_queries(client, sealed, out=_say)
        analyst.ask(client, queries, out=_say)

    print("4. The analyst refuses other code: the same enclave signed by another key:")
    generate_signer_key(work / "other.key")
    other_archive, _ = signed_build(work, work / "other.key")
    try:
        with common.load_enclave(other_archive, signer=signer, provision=provision):
            raise RuntimeError("the analyst's policy accepted another signer's enclave")
    except farside.AttestationError as exc:
        _say(f"refused before anything was sent: {exc}")


if __name__ == "__main__":
    sys.exit(main())
