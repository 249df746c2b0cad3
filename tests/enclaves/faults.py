"""An enclave for the fault tests: slow calls, cancellation, floods of output, threads."""

import threading
import time
from typing import Any

from farside.trusted import TrustedApplication, cancelled, ecall, host


class Faults(TrustedApplication):
    def initialize(self, config: Any) -> None:
        self.events: list[str] = []
        self.lock = threading.Lock()

    def run(self, input: Any) -> Any:
        if isinstance(input, dict) and "sleep" in input:
            time.sleep(input["sleep"])
        return input

    @ecall
    def spin_until_cancelled(self, limit: float) -> str:
        """Busy for up to ``limit`` s; report whether cancellation was seen, then try to exit."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and not cancelled():
            time.sleep(0.01)
        seen = cancelled()
        try:
            host.call("echo", "after cancel")
            outcome = "exit call went through"
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {getattr(exc, 'code', '')!s}"
        with self.lock:
            self.events.append(f"cancelled={seen}; {outcome}")
        return "finished"

    @ecall
    def events_so_far(self) -> list[str]:
        with self.lock:
            return list(self.events)

    @ecall
    def hold(self, seconds: float) -> int:
        time.sleep(seconds)
        return threading.get_ident()

    @ecall
    def worker_count(self) -> int:
        return sum(1 for t in threading.enumerate() if t.name.startswith("farside-enclave-worker"))

    @ecall
    def flood(self, megabytes: int) -> int:
        line = "x" * 1023
        for _ in range(megabytes * 1024):
            print(line)
        return megabytes

    @ecall
    def echo(self, value: Any) -> Any:
        return value


def build_trusted_application() -> TrustedApplication:
    return Faults()
