"""Enclave to benchmark: an empty call, a call with one nested exit call, a print loop."""

from typing import Any

from farside.trusted import TrustedApplication, ecall, host


class BenchEnclave(TrustedApplication):
    @ecall
    def empty(self) -> None:
        return None

    @ecall
    def echo(self, value: Any) -> Any:
        return value

    @ecall
    def nested(self, value: Any) -> Any:
        return host.call("echo", value)

    @ecall
    def print_lines(self, count: int) -> int:
        for i in range(count):
            print(f"line {i}")
        return count


def build_trusted_application() -> TrustedApplication:
    return BenchEnclave()
