"""The enclave of the asyncio client's tests (tests/integration/test_aio.py).

Small entry points that report what they saw inside the enclave: which worker ran
them, whether ``cancelled()`` turned true, what the host answered.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from farside.trusted import HostCallError, TrustedApplication, cancelled, ecall, host


class AioProbe(TrustedApplication):
    def initialize(self, config: Any) -> None:
        self.seen_cancelled: list[Any] = []

    def run(self, input: Any) -> Any:
        return {"ran": input}

    @ecall
    def echo(self, *args: Any, **kwargs: Any) -> Any:
        return {"args": list(args), "kwargs": kwargs}

    @ecall
    def add(self, a: int, b: int) -> int:
        return a + b

    @ecall
    def ident(self) -> int:
        return threading.get_ident()

    @ecall
    def worker(self) -> str:
        """The name of the enclave worker running this call (one per client task)."""
        return threading.current_thread().name

    @ecall
    def sleep(self, seconds: float) -> str:
        time.sleep(seconds)
        return "slept"

    @ecall
    def spin(self, seconds: float, key: Any) -> str:
        """Busy until ``seconds`` pass or the client gives the call up (then note ``key``)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if cancelled():
                self.seen_cancelled.append(key)
                return "cancelled"
            time.sleep(0.005)
        return "finished"

    @ecall
    def cancelled_keys(self) -> list[Any]:
        return list(self.seen_cancelled)

    @ecall
    def call_host(self, name: str, *args: Any) -> Any:
        return host.call(name, *args)

    @ecall
    def call_host_then_check(self, name: str, key: Any) -> Any:
        """An exit call that the client abandons: note whether cancelled() turned true."""
        try:
            host.call(name)
        except HostCallError as exc:
            if cancelled():
                self.seen_cancelled.append(key)
            return exc.code.name
        return "answered"

    @ecall
    def nest(self, depth: int) -> list[int]:
        """Enclave -> host ``nest`` -> client.call("nest") ... ``depth`` times: the worker
        of each level, outermost first."""
        here = [threading.get_ident()]
        if depth == 0:
            return here
        return here + list(host.call("nest", depth - 1))

    @ecall
    def print_then(self, count: int, value: Any) -> Any:
        for i in range(count):
            print(f"line {i}")
        host.notify("after_output", count)
        return value

    @ecall
    def notify_many(self, count: int) -> int:
        for index in range(count):
            host.notify("numbered", index)
            if index % 10 == 0:
                print(f"at {index}")
        return count

    @ecall
    def blob(self, size: int) -> bytes:
        return bytes(range(256)) * (size // 256) + bytes(size % 256)

    @ecall
    def measure(self, data: bytes) -> list[int]:
        return [len(data), sum(data[::4096])]

    @ecall
    def read_file(self, path: str) -> str:
        with open(path) as file:
            return file.read()

    @ecall
    def pid(self) -> int:
        return os.getpid()

    @ecall
    def workers(self) -> list[str]:
        """The enclave worker threads alive now."""
        return sorted(
            t.name for t in threading.enumerate() if t.name.startswith("farside-enclave-worker-")
        )

    @ecall
    def fail(self, message: str) -> None:
        raise ValueError(message)


def build_trusted_application() -> TrustedApplication:
    return AioProbe()
