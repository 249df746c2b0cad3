"""The data owner: seal a CSV dataset for the signed data-service enclave.

    python -m farside.examples.data_service.owner --enclave data_service.fsb \\
        --signer SIGNER_HEX --csv examples/data_service/sample.csv --out dataset.sealed \\
        --remote trusted.example.com:4321 --tls-ca tls/ca.pem --tls-cert tls/client.pem \\
        --tls-key tls/client.key --platform-key platform.pub

The owner loads the enclave, which must prove it is the signer's code on the
trusted machine before it gets a single row; sends it the rows; and gets back a
blob sealed for that signer's enclaves on that machine, which it may store
anywhere (the analyst needs a copy). Without ``--remote`` the enclave runs in a
local proxy whose platform key dies with this process, and so does the blob's
usefulness: see ``walkthrough`` for local mode.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import farside

from . import common

__all__ = ["describe", "main", "seal_dataset"]


def describe(identity: farside.EnclaveIdentity) -> str:
    """One line: what the enclave proved about itself."""
    return (
        f"attested: measurement {identity.measurement.hex()} signer {identity.signer.hex()} "
        f"product {identity.product_id} security version {identity.security_version} "
        f"debug {identity.debug}"
    )


def seal_dataset(
    enclave: str | os.PathLike[str],
    rows: list[dict[str, int | float]],
    *,
    signer: str,
    provision: farside.Provisioner | None = None,
    platform_keys: Sequence[str | os.PathLike[str]] = (),
    verbose: bool = True,
) -> bytes:
    """Load the signed enclave, have it check and seal ``rows``; return the sealed blob."""
    with common.load_enclave(
        enclave, signer=signer, provision=provision, platform_keys=platform_keys
    ) as client:
        if verbose:
            print(describe(client.identity))
        sealed: bytes = client.call("ingest", rows)
    return sealed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m farside.examples.data_service.owner",
        description="Seal a CSV dataset (a header line, numbers in every cell) for the signed "
        "data-service enclave, and write the sealed blob to --out.",
    )
    common.add_common_flags(parser)
    parser.add_argument("--csv", required=True, metavar="FILE", help="the dataset to seal")
    parser.add_argument("--out", required=True, metavar="FILE", help="where the blob goes")
    common.add_remote_flags(parser)
    args = parser.parse_args(argv)
    if not args.remote:
        print(
            "owner: note: no --remote, so the enclave runs under LocalProvision, whose platform "
            "key lives only as long as this process: no later process can open the sealed "
            "file. Use --remote (a provision server started with --platform-dir), or run "
            "python -m farside.examples.data_service.walkthrough.",
            file=sys.stderr,
        )
    try:
        rows = common.read_csv(args.csv)
        provision = common.provisioner(args)
        try:
            sealed = seal_dataset(
                args.enclave,
                rows,
                signer=args.signer,
                provision=provision,
                platform_keys=args.platform_key,
            )
        finally:
            if isinstance(provision, farside.RemoteProvision):
                provision.close()
        Path(args.out).write_bytes(sealed)
    except (farside.EnclaveError, ValueError, OSError) as exc:
        print(f"owner: error: {exc}", file=sys.stderr)
        return 1
    print(f"sealed {len(rows)} rows into {args.out} ({len(sealed)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
