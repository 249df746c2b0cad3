"""An enclave that keeps opening files on the client's machine and never closes them."""

from __future__ import annotations

from typing import IO, Any

from farside.trusted import TrustedApplication, ecall


class Hoarder(TrustedApplication):
    def __init__(self) -> None:
        self.held: list[IO[str]] = []

    @ecall
    def hoard(self, most: int) -> dict[str, Any]:
        """Open up to ``most`` more files; report how many opened and what stopped it."""
        start = len(self.held)
        for n in range(start, start + most):
            try:
                self.held.append(open(f"hoard-{n}.txt", "w"))  # noqa: SIM115 (kept open)
            except OSError as exc:
                return {"opened": len(self.held), "type": type(exc).__name__, "message": str(exc)}
        return {"opened": len(self.held), "type": None, "message": ""}

    @ecall
    def release(self) -> int:
        for f in self.held:
            f.close()
        released, self.held = len(self.held), []
        return released


def build_trusted_application() -> TrustedApplication:
    return Hoarder()
