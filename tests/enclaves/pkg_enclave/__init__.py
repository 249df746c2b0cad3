"""A package-directory enclave: its modules import each other relatively."""

from typing import Any

from farside.trusted import TrustedApplication, ecall

from . import helpers
from .sub.shout import shout


class PackageEnclave(TrustedApplication):
    def run(self, input: Any) -> Any:
        return helpers.double(input)

    @ecall
    def double(self, value: Any) -> Any:
        return helpers.double(value)

    @ecall
    def shout(self, text: str) -> str:
        return shout(text)

    @ecall
    def module_names(self) -> list[str]:
        return [__name__, helpers.__name__]


def build_trusted_application() -> TrustedApplication:
    return PackageEnclave()
