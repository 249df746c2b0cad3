"""What an enclave is and how that is proven: bundles, manifests and measurements.

Sim-mode evidence, signing and policies join this package with the attestation work;
the measurement here is the one the client and the proxy both compute.
"""

from .bundle import Bundle, BundleError, Manifest, load_bundle, measure_bundle, validate_path

__all__ = ["Bundle", "BundleError", "Manifest", "load_bundle", "measure_bundle", "validate_path"]
