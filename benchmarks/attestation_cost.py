"""What attestation adds to loading an enclave, and the cold load it is part of.

    python -m benchmarks.attestation_cost [--loads 20]

Times, on this machine: the attestation work of one load on both ends (the proxy's
X25519 key and signed evidence; the client's nonce, X25519 key, channel binding and
verification), measured in-process over many repetitions; and the median cold
``load`` -> first result -> destroy with LocalProvision, which includes it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import farside
from farside.attestation import load_bundle, measure_bundle
from farside.attestation.evidence import (
    AttestationPolicy,
    channel_binding,
    make_evidence,
    public_key_bytes,
    report_data,
    verify_evidence,
)
from farside.attestation.identity import EnclaveIdentity

DEMO = Path(farside.__file__).parent / "examples" / "quickstart" / "demo_enclave.py"


def _attestation_once(platform: Ed25519PrivateKey, policy: AttestationPolicy) -> None:
    bundle = load_bundle(DEMO)
    nonce, client_nonce = os.urandom(32), os.urandom(32)
    # proxy side
    identity = EnclaveIdentity(measurement=measure_bundle(bundle))
    binding = channel_binding(client_nonce=client_nonce, proxy_nonce=os.urandom(32))
    evidence = make_evidence(platform, identity, report_data=report_data(nonce, binding))
    # client side
    verify_evidence(evidence, policy, nonce=nonce, binding=binding)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=20)
    args = parser.parse_args(argv)
    platform = Ed25519PrivateKey.generate()
    policy = AttestationPolicy(platform_keys=(public_key_bytes(platform),), allow_debug=True)
    for _ in range(50):
        _attestation_once(platform, policy)
    samples = []
    for _ in range(1000):
        start = time.perf_counter()
        _attestation_once(platform, policy)
        samples.append(time.perf_counter() - start)
    # The bundle is read and measured once per load anyway; count only the added work.
    reads = []
    for _ in range(1000):
        start = time.perf_counter()
        measure_bundle(load_bundle(DEMO))
        reads.append(time.perf_counter() - start)
    added = statistics.median(samples) - statistics.median(reads)
    loads = []
    with contextlib.redirect_stdout(io.StringIO()):
        for _ in range(args.loads):
            start = time.perf_counter()
            with farside.load(DEMO) as enclave:
                enclave.call("encrypt", "x")
                loads.append(time.perf_counter() - start)
    print(f"attestation work per load (both ends, in-process): median {added * 1e6:.0f} µs")
    print(
        f"cold local load -> first result ({args.loads} loads): "
        f"median {statistics.median(loads) * 1e3:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
