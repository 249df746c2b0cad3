"""The test suite's general-purpose enclave: identity, exits, output, files, sleeping.

Every entry point is small and reports what it observed inside the enclave so
the tests can assert on it from the client side.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from farside.trusted import EnclaveConfig, HostCallError, TrustedApplication, ecall, host


class Worker(TrustedApplication):
    def initialize(self, config: EnclaveConfig) -> None:
        self.config_user = config.user
        self.runs = 0
        self.finalize_fails = False
        user = config.user if isinstance(config.user, dict) else {}
        if user.get("fail_initialize"):
            raise RuntimeError(f"initialize refused: {user['fail_initialize']}")

    def run(self, input: Any) -> Any:
        self.runs += 1
        return {"ran": input, "runs": self.runs}

    def finalize(self, final_input: Any) -> None:
        if final_input == "raise" or self.finalize_fails:
            raise RuntimeError("finalize was asked to raise")
        if final_input == "notify":
            host.notify("finalized", final_input)

    # ------------------------------------------------------------ identity

    @ecall
    def echo(self, *args: Any, **kwargs: Any) -> Any:
        return {"args": list(args), "kwargs": kwargs}

    @ecall
    def ident(self) -> int:
        return threading.get_ident()

    @ecall
    def workers(self) -> list[str]:
        """The enclave worker threads alive now (one per client thread it serves)."""
        import threading

        return sorted(
            t.name for t in threading.enumerate() if t.name.startswith("farside-enclave-worker-")
        )

    @ecall
    def pid(self) -> int:
        return os.getpid()

    @ecall
    def config(self) -> Any:
        return self.config_user

    @ecall
    def arm_finalize_failure(self) -> None:
        self.finalize_fails = True

    @ecall
    def bad_result(self) -> Any:
        return {"fine": 1, "not fine": object()}

    @ecall
    def sleep(self, seconds: float) -> str:
        time.sleep(seconds)
        return "slept"

    @ecall
    def fail(self, message: str) -> None:
        raise ValueError(message)

    # ------------------------------------------------------------ exit calls

    @ecall
    def call_host(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return host.call(name, *args, **kwargs)

    @ecall
    def call_host_catch(self, name: str, *args: Any) -> Any:
        try:
            return {"ok": host.call(name, *args)}
        except HostCallError as exc:
            return {
                "caught": type(exc).__name__,
                "remote_type": exc.remote_type,
                "message": exc.message,
            }

    @ecall
    def notify_host(self, name: str, *args: Any) -> str:
        host.notify(name, *args)
        return "notified"

    @ecall
    def nest(self, depth: int, tag: Any) -> list[Any]:
        """Enclave -> host handler ``nest`` -> client.call("nest") -> ... ``depth`` times.

        Returns one ``("enclave", ident)`` entry per level plus whatever the host
        handlers add, innermost last.
        """
        here = ["enclave", tag, depth, threading.get_ident()]
        if depth == 0:
            return [here]
        return [here, *host.call("nest", depth - 1, tag)]

    # ------------------------------------------------------------ output

    @ecall
    def say(self, out: str, err: str = "") -> str:
        print(out)
        if err:
            print(err, file=sys.stderr)
        return "said"

    @ecall
    def print_lines(self, count: int, prefix: str = "line") -> int:
        for i in range(count):
            print(f"{prefix} {i}")
        return count

    # ------------------------------------------------------------ files

    def _opener(self, via: str) -> Any:
        return host.open if via == "host" else open

    @ecall
    def write_file(self, path: str, data: Any, via: str = "builtin") -> int:
        mode = "wb" if isinstance(data, bytes) else "w"
        with self._opener(via)(path, mode) as f:
            return f.write(data)

    @ecall
    def append_file(self, path: str, data: str, via: str = "builtin") -> int:
        with self._opener(via)(path, "a") as f:
            return f.write(data)

    @ecall
    def read_file(self, path: str, binary: bool = False, via: str = "builtin") -> Any:
        with self._opener(via)(path, "rb" if binary else "r") as f:
            return f.read()

    @ecall
    def try_open(self, path: str, mode: str = "r", via: str = "builtin") -> dict[str, Any]:
        """Open ``path`` and report the exception instead of raising it."""
        try:
            with self._opener(via)(path, mode) as f:
                if "r" in mode:
                    f.read()
                else:
                    f.write(b"escaped" if "b" in mode else "escaped")
        except OSError as exc:
            return {"error": type(exc).__name__, "message": str(exc)}
        return {"error": None, "message": ""}


def build_trusted_application() -> TrustedApplication:
    return Worker()
