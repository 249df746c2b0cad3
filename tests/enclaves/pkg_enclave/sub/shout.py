"""A module of the package enclave's subpackage, importing a sibling package."""

from .. import helpers


def shout(text: str) -> str:
    return helpers.double(text.upper() + "!")[: len(text) + 1]
