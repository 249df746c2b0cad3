"""Fixed test vector: a two-file enclave package. Do not edit; see tests/vectors/README.md."""

from .helper import shout


def build_trusted_application() -> object:
    return shout("vector")
