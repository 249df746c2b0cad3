"""An enclave whose ``initialize`` always fails."""

from farside.trusted import EnclaveConfig, TrustedApplication


class Broken(TrustedApplication):
    def initialize(self, config: EnclaveConfig) -> None:
        raise RuntimeError("the sealing key is unavailable (initialize-raises fixture)")


def build_trusted_application() -> TrustedApplication:
    return Broken()
