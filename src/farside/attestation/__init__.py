"""What an enclave is and how that is proven: bundles, measurements, signers, evidence.

* ``bundle``: the bundle model and its measurement (no I/O; the session protocol
  carries it); ``bundle_files``: reading bundles from disk, building archives.
* ``signing``: signer keys and bundle signatures (Asylo's MRSIGNER).
* ``identity``: an enclave's identity, and the sealing keys derived for it.
* ``evidence``: the attestation policy, sim-mode evidence, the hardware binding, and
  the recipes both ends use (``Attester`` makes evidence, ``verify_session_evidence``
  checks sim and TEE evidence alike).
* ``hardware``: real TEE evidence (TDX, SEV-SNP, Nitro, SGX): attesters, verifiers
  against pinned vendor roots, and the policy's per-platform expectations.
* ``platform``: a trusted machine's platform key pair.

Names are loaded on first use: importing ``farside.attestation.bundle`` does not load
the cryptography this package's other modules need.
"""

import typing as _typing

from .._lazy import exports as _exports

if _typing.TYPE_CHECKING:
    from .bundle import (
        Bundle as Bundle,
        BundleError as BundleError,
        BundleSignature as BundleSignature,
        Manifest as Manifest,
        measure_bundle as measure_bundle,
        validate_path as validate_path,
    )
    from .bundle_files import (
        build_bundle as build_bundle,
        load_bundle as load_bundle,
    )
    from .signing import (
        generate_signer_key as generate_signer_key,
        load_signer_key as load_signer_key,
        sign_bundle as sign_bundle,
        verify_bundle_signature as verify_bundle_signature,
    )

_EXPORTS = {
    "Bundle": ".bundle",
    "BundleError": ".bundle",
    "BundleSignature": ".bundle",
    "Manifest": ".bundle",
    "measure_bundle": ".bundle",
    "validate_path": ".bundle",
    "build_bundle": ".bundle_files",
    "load_bundle": ".bundle_files",
    "generate_signer_key": ".signing",
    "load_signer_key": ".signing",
    "sign_bundle": ".signing",
    "verify_bundle_signature": ".signing",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = _exports(__name__, _EXPORTS)
