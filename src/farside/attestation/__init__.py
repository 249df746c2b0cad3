"""What an enclave is and how that is proven: bundles, manifests, measurements, signers.

Sim-mode evidence and policies join this package with the attestation work; the
measurement here is the one the client and the proxy both compute, and the signer
identity (``verify_bundle_signature``) is Asylo's MRSIGNER.
"""

from .bundle import (
    Bundle,
    BundleError,
    BundleSignature,
    Manifest,
    build_bundle,
    load_bundle,
    measure_bundle,
    validate_path,
)
from .signing import (
    generate_signer_key,
    load_signer_key,
    sign_bundle,
    verify_bundle_signature,
)

__all__ = [
    "Bundle",
    "BundleError",
    "Manifest",
    "load_bundle",
    "measure_bundle",
    "validate_path",
    "BundleSignature",
    "build_bundle",
    "generate_signer_key",
    "load_signer_key",
    "sign_bundle",
    "verify_bundle_signature",
]
