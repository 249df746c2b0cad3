"""Starting a platform agent, and handing each proxy a channel to it (the broker's side).

Every provisioner that starts proxies runs one agent (``farside.attestation.agent``):
``LocalProvision`` per client process (with an ephemeral key, or a platform directory),
the single-host provision server for its machine, each fleet slot on its host. The
agent reads or makes the key itself, in its own process; the broker learns only its
public half. ``channel()`` makes a socket pair, sends one end to the agent over the
control socket, and returns the other end for the proxy to inherit (``pass_fds``).
The agent exits when the broker closes the control socket or dies.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from .._errors import EnclaveLoadError
from ..attestation.agent import READY_PREFIX
from ._spawn import quoted, read_line

__all__ = ["PlatformAgent"]

START_TIMEOUT = 20.0

Launcher = Callable[[Callable[[], "subprocess.Popen[bytes]"]], "subprocess.Popen[bytes]"]


class PlatformAgent:
    """A running platform agent: its public key, and channels to it for new proxies."""

    def __init__(
        self, process: subprocess.Popen[bytes], control: socket.socket, public_key: bytes
    ) -> None:
        self.process = process
        self.public_key = public_key
        self._control = control
        self._lock = threading.Lock()

    @classmethod
    def start(
        cls,
        *,
        platform_dir: Path | None,
        python: str | None = None,
        launch: Launcher | None = None,
        environ: Mapping[str, str] | None = None,
        timeout: float = START_TIMEOUT,
    ) -> PlatformAgent:
        """Start an agent signing with ``platform_dir``'s key (None: an ephemeral one).

        ``EnclaveLoadError`` with the agent's own words if it cannot (a missing key, a key
        readable by others, ...). ``launch`` runs the fork (``LocalProvision`` forks from
        one long-lived thread, so that the parent-death signal follows the process).
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [python or sys.executable, "-m", "farside", "platform", "agent"]
        command += ["--control-fd", str(theirs.fileno()), "--parent-pid", str(os.getpid())]
        command += ["--platform-dir", str(platform_dir)] if platform_dir else ["--ephemeral"]

        def popen() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                env=dict(os.environ if environ is None else environ),
            )

        try:
            process = launch(popen) if launch is not None else popen()
        except OSError as exc:
            ours.close()
            raise EnclaveLoadError(f"cannot start the platform agent: {exc}") from exc
        finally:
            theirs.close()
        assert process.stdout is not None
        assert process.stderr is not None
        line = read_line(process.stdout, timeout)
        if line is None or not line.startswith(READY_PREFIX):
            with contextlib.suppress(OSError):
                process.kill()
            process.wait()
            why = quoted(process.stderr.read(4000).decode("utf-8", "replace").strip())
            process.stdout.close()
            process.stderr.close()
            ours.close()
            raise EnclaveLoadError(
                f"the platform agent did not start: {why or line or 'it said nothing'}"
            )
        try:
            public_key = bytes.fromhex(line[len(READY_PREFIX) :])
        except ValueError:
            public_key = b""
        for stream in (process.stdout, process.stderr):
            stream.close()  # it says nothing more; a pipe nobody reads must not hold it up
        if len(public_key) != 32:
            process.kill()
            process.wait()
            ours.close()
            raise EnclaveLoadError(
                f"the platform agent announced no valid key: {quoted(line, 200)}"
            )
        return cls(process, ours, public_key)

    @property
    def alive(self) -> bool:
        """True while the agent process runs."""
        return self.process.poll() is None

    def channel(self) -> socket.socket:
        """A new channel for one proxy: the proxy's end, inheritable, for ``pass_fds``.

        ``EnclaveLoadError`` if the agent is gone.
        """
        agents_end, proxy_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self._lock:
                self._control.sendmsg(
                    [b"c"],
                    [
                        (
                            socket.SOL_SOCKET,
                            socket.SCM_RIGHTS,
                            array.array("i", [agents_end.fileno()]),
                        )
                    ],
                )
        except OSError as exc:
            proxy_end.close()
            raise EnclaveLoadError(f"the platform agent is gone: {exc}") from exc
        finally:
            agents_end.close()
        proxy_end.set_inheritable(True)
        return proxy_end

    def close(self) -> None:
        """Stop the agent (it exits when its control socket closes) and reap it."""
        with self._lock:
            self._control.close()
        try:
            self.process.wait(5.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
