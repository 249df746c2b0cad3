"""An enclave bundle that forgot ``build_trusted_application``."""

from farside.trusted import TrustedApplication


class Forgotten(TrustedApplication):
    def run(self, input: object) -> object:
        return input
